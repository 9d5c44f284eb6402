#!/usr/bin/env python3
"""Guest memory that fills over time, side by side with stock QEMU (make
bench; alone: bench/fill.py [--seconds N] [--period S] [--vm-mib M]
[--rate P/M] [--thp madvise,never] [--quick] [--out DIR]).

Two QEMUs under -accel qtest, 1 GiB each (--vm-mib), their RAM untouched
at first, as a guest's is when it boots.  From t=0 (ksmd starts and the
engines pass), every --period seconds (default 8), one of 5 steps writes
a new fifth of each VM's RAM above the first 2 MiB (204 MiB of 1 GiB),
the two VMs at once, through qtest.  A step's 2 MiB regions, in a seeded
order: 10 % zero (memset to 0: a write, so the pages are allocated),
20 % duplicated inside the VM (half of them blocks written twice, in
different regions; half regions whose two halves are the same), 10 %
duplicated across the two VMs (the same content at the same spot in
both), 60 % unique; every non-zero page random (seeded: both
configurations get the same bytes).  Writes are b64write commands of
64 KiB, all of a VM's step sent at once: qtest reads its socket 1 KiB at
a time and looks for the end of the line from its start each time, so
long lines cost quadratic time (4 MiB lines: 7 MB/s; 64 KiB: about
105 MB/s per QEMU here, its CPU the limit: a step takes about 2 s).

Measured from the kernel every 0.25 s for --seconds (default 5 periods
and 60 s): of each step's duplicate pages (both copies inside the VM and
the cross-VM ones, in both VMs), the fraction mapped to a KSM page
(KPF_KSM, pagemap + /proc/kpageflags); the step's zero pages apart
(merged: a KSM page or the kernel's zero page).  Per step: seconds from
the end of its write until 90 % of its duplicate pages are merged; per
configuration their median, ksmd CPU (/proc/<ksmd>/stat) over the run
and until the last step reached 90 %, each QEMU's CPU and its engine's
(threads memdedup*), and the saving at the end (pages_sharing +
ksm_zero_pages).  Goal: median time to 90 %, memdedup / stock, at most
0.5x.

Configurations: stock (memory-backend-ram, merge=on) and memdedup
(memory-backend-ksm, dedup-policy=targeted, both QEMUs on one cross-VM
board: workloads.py's 'board'), each from a ksmd reset, at the bench's
ksmd rate (default 1000/20), with each THP mode of --thp (default: the
'madvise' Debian ships, then 'never').  The other KSM knobs stay as the
caller has them (recorded).
"""

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import probe  # noqa: E402
import host  # noqa: E402  (scripts/memdedup/, on probe's path)
import qtestvm  # noqa: E402
import workloads as wl  # noqa: E402

MiB = 1 << 20
PAGE = probe.PAGE
REGION = 2 * MiB
STEPS = 5
NVMS = 2
WRITE_CHUNK = 64 * 1024             # bytes per b64write (see above)
SAMPLE = 0.25                       # seconds between samples
GOAL = 0.9                          # fraction of a step's duplicates
SEED = 21
RATES = {"100/20": (100, 20), "1000/20": (1000, 20)}
CONFIGS = {"stock": "stock", "memdedup": "board"}   # workloads.py's names
VM_MIB, PERIOD, THP = 1024, 8.0, ("madvise", "never")
QUICK = {"vm_mib": 256, "period": 4.0, "seconds": 45, "thp": ("madvise",)}


def log(msg):
    print("bench: fill: " + msg, flush=True)


def default_seconds(period):
    return int(STEPS * period + 60)


def options(quick=False, seconds=None, period=None, vm_mib=None,
            rate=None, thp=None):
    """run()'s keyword arguments from options given or not (None: the
    default, or --quick's), and what is wrong with them (or None).
    thp: a comma list."""
    base = QUICK if quick else {}
    period = period or base.get("period", PERIOD)
    out = {"seconds": seconds or base.get("seconds",
                                          default_seconds(period)),
           "period": period,
           "vm_mib": vm_mib or base.get("vm_mib", VM_MIB),
           "rate": rate or "1000/20",
           "thp": tuple(x for x in thp.split(",") if x) if thp
           else base.get("thp", THP)}
    err = None
    if not 2 + 2 * STEPS <= out["vm_mib"] <= 3072:
        err = "MiB per VM from %d to 3072, not %d" % (2 + 2 * STEPS,
                                                      out["vm_mib"])
    bad = [m for m in out["thp"] if m not in ("always", "madvise", "never")]
    if bad:
        err = "THP modes are always, madvise, never, not %s" % ", ".join(bad)
    if out["rate"] not in RATES:
        err = "ksmd rate is one of %s, not %s" % (", ".join(RATES),
                                                  out["rate"])
    return out, err


class Fill:
    """Where each step writes what, and its qtest commands per VM.

    Offsets are from the start of guest RAM (its guest physical
    address: the PC machine keeps up to 3 GiB below 4 GiB)."""

    def __init__(self, vm_mib):
        self.vm_mib = vm_mib
        nreg = (vm_mib * MiB - wl.SKIP) // STEPS // REGION
        self.step_bytes = nreg * REGION
        nzero = ncross = max(1, round(nreg * 0.1))
        ndup = max(2, round(nreg * 0.2))
        nblock = max(1, ndup // 4)      # blocks written twice
        kinds = (["zero"] * nzero + ["cross"] * ncross +
                 ["block"] * nblock + ["copy"] * nblock +
                 ["halves"] * (ndup - 2 * nblock))
        kinds += ["unique"] * (nreg - len(kinds))
        import random
        rnd = random.Random(SEED)
        self.steps = []     # [[(kind, offset, offset of the original)]]
        for k in range(STEPS):
            order = kinds[:]
            rnd.shuffle(order)
            base = wl.SKIP + k * self.step_bytes
            regions = [[kind, base + i * REGION, None]
                       for i, kind in enumerate(order)]
            blocks = [r for r in regions if r[0] == "block"]
            copies = [r for r in regions if r[0] == "copy"]
            for b, c in zip(blocks, copies):
                c[2] = b[1]
            self.steps.append([tuple(r) for r in regions])
        self.counts = {kind: kinds.count(kind) for kind in set(kinds)}
        # Per step: its duplicate pages (both copies inside the VM, the
        # cross-VM ones) and its zero pages, from the step's start.
        self.dup_idx = [self.pages(k, ("block", "copy", "halves", "cross"))
                        for k in range(STEPS)]
        self.zero_idx = [self.pages(k, ("zero",)) for k in range(STEPS)]

    def pages(self, k, kinds):
        """numpy page indices (from the start of step @k) of @kinds."""
        import numpy as np
        base = wl.SKIP + k * self.step_bytes
        per = REGION // PAGE
        return np.concatenate([
            np.arange((off - base) // PAGE, (off - base) // PAGE + per)
            for kind, off, _ in self.steps[k] if kind in kinds])

    def commands(self, k, vm):
        """The qtest commands that write step @k of VM @vm: (the lines
        joined, as bytes; their number)."""
        import base64
        import numpy as np
        own = np.random.default_rng([SEED, k, vm + 1])
        shared = np.random.default_rng([SEED, k, 0])
        content = {}
        for kind, off, _ in self.steps[k]:
            if kind in ("block", "unique"):
                content[off] = own.bytes(REGION)
            elif kind == "halves":
                content[off] = own.bytes(REGION // 2) * 2
            elif kind == "cross":
                content[off] = shared.bytes(REGION)
        out = []
        for kind, off, orig in self.steps[k]:
            if kind == "zero":
                out.append(b"memset 0x%x 0x%x 0" % (off, REGION))
                continue
            data = content[orig if kind == "copy" else off]
            for c in range(0, REGION, WRITE_CHUNK):
                out.append(b"b64write 0x%x 0x%x %s" % (
                    off + c, WRITE_CHUNK,
                    base64.b64encode(data[c:c + WRITE_CHUNK])))
        return b"".join(line + b"\n" for line in out), len(out)

    def describe(self):
        n = sum(self.counts.values())

        def pct(*kinds):
            return 100.0 * sum(self.counts.get(k, 0) for k in kinds) / n
        return ("%d VMs x %d MiB, %d steps of %d MiB each: zero %.1f %%, "
                "duplicated inside the VM %.1f %% (blocks twice %.1f %%, "
                "same halves %.1f %%), across the VMs %.1f %%, unique "
                "%.1f %%" % (NVMS, self.vm_mib, STEPS,
                             self.step_bytes // MiB, pct("zero"),
                             pct("block", "copy", "halves"),
                             pct("block", "copy"), pct("halves"),
                             pct("cross"), pct("unique")))


class StepWriter(wl.PeriodicWriter):
    """Step n (from 1) every @period seconds, all VMs at once; then
    stops.  .ends and .writes: each step's end (monotonic) and seconds
    of writing."""

    def __init__(self, qts, commands, period):
        super().__init__(period)
        self.qts = qts
        self.todo = commands            # [[commands of a VM] per step]
        self.ends, self.writes = [], []
        self.pool = concurrent.futures.ThreadPoolExecutor(len(qts))

    def sweep(self, n):
        if n > len(self.todo):
            self.halt.set()
            return []
        t = time.monotonic()
        list(self.pool.map(lambda a: a[0].send_joined(*a[1]),
                           zip(self.qts, self.todo[n - 1])))
        end = time.monotonic()
        self.writes.append(round(end - t, 3))
        self.ends.append(end)
        return []

    def stop(self):
        """Stop after the step being written (a write cut short ends
        when its QEMU stops)."""
        super().stop()
        self.pool.shutdown(wait=False, cancel_futures=True)


class Watch:
    """The merged pages of each step, from the kernel: a step's
    duplicate pages mapping a KSM page (KPF_KSM), its zero pages a KSM
    page or the kernel's zero page.  A page seen so at a PFN is not
    looked up again while pagemap shows it at that PFN: a mapped KSM
    page stays one, the zero page too; the flags of the others are read
    at every sample (a page can become the KSM page in place)."""

    def __init__(self, fill, procs):
        import numpy as np
        self.fill, self.procs = fill, procs     # [(pid, RAM's address)]
        step_pages = fill.step_bytes // PAGE
        # Watched pages, step by step: their index from the first step's
        # start, label 2 * step + (0 duplicate, 1 zero), the flags that
        # count as merged.
        idx, label, want = [], [], []
        dup_bits = 1 << host.KPF_KSM
        zero_bits = dup_bits | 1 << host.KPF_ZERO_PAGE
        self.upto = [0]
        for k in range(STEPS):
            for kind, pages, bits in ((0, fill.dup_idx[k], dup_bits),
                                      (1, fill.zero_idx[k], zero_bits)):
                idx.append(pages + k * step_pages)
                label.append(np.full(len(pages), 2 * k + kind))
                want.append(np.full(len(pages), bits, dtype=np.uint64))
            self.upto.append(self.upto[-1] + len(idx[-1]) + len(idx[-2]))
        self.idx, self.label = np.concatenate(idx), np.concatenate(label)
        self.want = np.concatenate(want)
        self.seen = [np.zeros(len(self.idx), dtype=np.uint64)
                     for _ in procs]

    def merged(self, steps):
        """[(duplicate pages merged, zero pages merged)] of the first
        @steps steps, summed over the VMs."""
        import numpy as np
        n = self.upto[steps]
        counts = np.zeros(2 * STEPS, dtype=np.int64)
        if not steps:
            return []
        for (pid, base), seen in zip(self.procs, self.seen):
            pfns = probe.pagemap_pfns(pid, base + wl.SKIP,
                                      steps * self.fill.step_bytes)
            if pfns is None:
                raise RuntimeError("pagemap unreadable (root?)")
            p = pfns[self.idx[:n]]
            known = (p == seen[:n]) & (p != 0)
            ask = np.nonzero(~known & (p != 0))[0]
            flags = probe.kpageflags(p[ask])
            if flags is None:
                raise RuntimeError("page flags unreadable (root?)")
            hit = ask[(flags & self.want[ask]) != 0]
            seen[hit] = p[hit]
            known[hit] = True
            counts += np.bincount(self.label[:n][known],
                                  minlength=2 * STEPS)
        return [(int(counts[2 * k]), int(counts[2 * k + 1]))
                for k in range(steps)]


def ram_base(pid, size):
    """Host address of the guest RAM of QEMU @pid (dump=off)."""
    base, end = host.dontdump_range(pid)
    if end - base != size:
        raise RuntimeError("guest RAM mapped at %x-%x" % (base, end))
    return base


def run_config(config, fill, commands, workdir, seconds, period, rate,
               rescan_interval):
    pts, sleep_ms = RATES[rate]
    ksmd = host.ksmd_pid()
    res = {"config": config, "thp_mode": host.thp_read(),
           "kernel": os.uname().release, "rate": rate,
           "ksm": {k: host.ksm_read(k) for k in (
               "smart_scan", "use_zero_pages", "max_page_sharing",
               "merge_across_nodes")}}
    with open("/proc/version") as f:
        res["proc_version"] = f.read().strip()
    vms, writer = [], None
    with probe.cpu_lock("fill/" + config):
        log("%s, THP %s: ksmd reset (run=2) ..." % (config,
                                                    res["thp_mode"]))
        host.ksm_reset()
        host.ksm_set(pages_to_scan=pts, sleep_millisecs=sleep_ms)
        try:
            for name, args, _ in wl.qtest_processes(
                    CONFIGS[config], wl.Layout(fill.vm_mib),
                    board=os.path.join(workdir, "board"), dump=False):
                # -qtest-log none: else QEMU copies every command to
                # its stderr (a file in workdir: 2 GiB a run).
                vms.append(qtestvm.start_qtest_vm(
                    wl.QEMU, workdir, "fill-" + name,
                    args + ["-qtest-log", "none"]))
            procs = [(vm.pid, ram_base(vm.pid, fill.vm_mib * MiB))
                     for vm, _ in vms]
            if config != "stock":
                wl.wait_engine_idle([vm for vm, _ in vms])
            cpu0 = [host.cpu_seconds(vm.pid) for vm, _ in vms]
            md0 = [host.thread_cpu_ns(vm.pid, "memdedup") for vm, _ in vms]
            ksm0 = {k: host.ksm_read(k) or 0
                    for k in ("pages_sharing", "ksm_zero_pages")}
            ksmd0 = host.cpu_seconds(ksmd)
            own0 = time.process_time()
            busy0 = host.cpu_busy_seconds()

            # t = 0: ksmd, the engines and the first step start together.
            t0 = time.monotonic()
            host.ksm_set(run=1)
            if config != "stock":
                for vm, _ in vms:
                    wl.start_engine(vm, rescan_interval)
            writer = StepWriter([qt for _, qt in vms], commands, period)
            writer.start()
            watch = Watch(fill, procs)
            samples = []
            tick = t0
            while tick - t0 < seconds:
                tick += SAMPLE
                time.sleep(max(0.0, tick - time.monotonic()))
                if writer.error:
                    raise RuntimeError("step writer: %s" % writer.error)
                m = watch.merged(len(writer.ends))
                samples.append({
                    "t": round(time.monotonic() - t0, 2),
                    "ksmd_cpu": round(host.cpu_seconds(ksmd) - ksmd0, 3),
                    "dup": [d for d, _ in m], "zero": [z for _, z in m]})
            if len(writer.ends) < STEPS:
                raise RuntimeError("only %d steps written in %d s"
                                   % (len(writer.ends), seconds))
            # This process's CPU (mostly the sampling, some writing).
            res["bench_cpu"] = round(time.process_time() - own0, 3)
            res["qemu_cpu"] = [round(host.cpu_seconds(vm.pid) - c, 3)
                               for (vm, _), c in zip(vms, cpu0)]
            # The host's other CPU users meanwhile (the bench runs
            # alone only if nothing else does: tests hold no lock).
            res["other_cpu"] = round(
                host.cpu_busy_seconds() - busy0 - res["bench_cpu"] -
                sum(res["qemu_cpu"]) -
                (host.cpu_seconds(ksmd) - ksmd0), 2)
            res["engine_cpu"] = [
                round((host.thread_cpu_ns(vm.pid, "memdedup") - c) / 1e9, 3)
                for (vm, _), c in zip(vms, md0)]
            res["saving_pages"] = sum((host.ksm_read(k) or 0) - v
                                      for k, v in ksm0.items())
            res["ksm_at_end"] = {k: (host.ksm_read(k) or 0) - v
                                 for k, v in ksm0.items()}
            if config != "stock":
                res["registered_bytes"] = sum(
                    b["registered-bytes"] for vm, _ in vms
                    for b in vm.qmp.cmd("query-memdedup")["backends"])
        finally:
            with host.shielded():
                if writer:
                    writer.stop()
                for vm, qt in vms:
                    vm.stop()
                    qt.close()
                host.ksm_set(run=0)
    res["samples"] = samples
    res["ksmd_cpu"] = samples[-1]["ksmd_cpu"]
    summarize(res, fill, [e - t0 for e in writer.ends], writer.writes)
    log("%s, THP %s: steps to 90 %% %s s (median %s), ksmd CPU %.2f s, "
        "saving %.0f MiB" % (config, res["thp_mode"],
                             [fmt(s["t90"]) for s in res["steps"]],
                             fmt(res["median_t90"]), res["ksmd_cpu"],
                             res["saving_pages"] * PAGE / MiB))
    return res


def first_at(samples, k, key, total, frac, since):
    """The first sample from @since on with @frac of step @k's @total
    pages of @key merged, or None."""
    for s in samples:
        if s["t"] >= since and len(s[key]) > k and \
                s[key][k] >= frac * total:
            return s
    return None


def summarize(res, fill, ends, writes):
    samples, last = res["samples"], res["samples"][-1]
    steps = []
    for k in range(STEPS):
        ndup = len(fill.dup_idx[k]) * NVMS
        nzero = len(fill.zero_idx[k]) * NVMS
        hit = first_at(samples, k, "dup", ndup, GOAL, ends[k])
        zhit = first_at(samples, k, "zero", nzero, GOAL, ends[k])
        steps.append({
            "write_s": writes[k], "write_end_t": round(ends[k], 2),
            "t90": round(hit["t"] - ends[k], 2) if hit else None,
            "t90_ksmd_cpu": hit["ksmd_cpu"] if hit else None,
            "zero_t90": round(zhit["t"] - ends[k], 2) if zhit else None,
            "dup_pages": ndup, "zero_pages": nzero,
            "final_dup_frac": round(last["dup"][k] / ndup, 4),
            "final_zero_frac": round(last["zero"][k] / nzero, 4),
            # What the step's t90 is known to exceed when it is None.
            "t90_at_least": round(last["t"] - ends[k], 2)})
    res["steps"] = steps
    res["median_t90"] = median([s["t90"] for s in steps])
    # ksmd CPU until every step had 90 % merged (None: one never did).
    res["ksmd_cpu_to_last90"] = None if any(
        s["t90"] is None for s in steps) else max(
        s["t90_ksmd_cpu"] for s in steps)


def median(values):
    """Median, None counting as longer than any number (and the median
    None when it falls there)."""
    v = sorted(values, key=lambda x: (x is None, x or 0))
    n = len(v)
    if n % 2:
        return v[n // 2]
    if v[n // 2] is None:
        return None
    return (v[n // 2 - 1] + v[n // 2]) / 2.0


def ratio(runs):
    """memdedup / stock of the median time to 90 %: (value, bound);
    bound is True where stock's median did not come within the run and
    value is the ratio to the least it can be (an upper bound)."""
    s, m = runs["stock"], runs["memdedup"]
    if m["median_t90"] is None:
        return None, False
    if s["median_t90"] is not None:
        return round(m["median_t90"] / max(s["median_t90"], 1e-3), 3), False
    least = median([st["t90"] if st["t90"] is not None
                    else st["t90_at_least"] for st in s["steps"]])
    return round(m["median_t90"] / least, 3), True


def run(workdir, thpmode, seconds=None, period=PERIOD, vm_mib=VM_MIB,
        rate="1000/20", thp=THP, rescan_interval=10000):
    """Both configurations, stock first, with each THP mode of @thp (set
    through @thpmode, a host.ThpMode block of the caller's), inside a
    host.KsmKnobs block of the caller's: the knobs set here are given
    back there."""
    seconds = seconds or default_seconds(period)
    fill = Fill(vm_mib)
    log("content: %s" % fill.describe())
    t = time.monotonic()
    commands = [[fill.commands(k, vm) for vm in range(NVMS)]
                for k in range(STEPS)]
    log("commands ready in %.1f s" % (time.monotonic() - t))
    variants = []
    for mode in thp:
        thpmode.set(mode)
        runs = {config: run_config(config, fill, commands, workdir,
                                   seconds, period, rate, rescan_interval)
                for config in CONFIGS}
        value, bound = ratio(runs)
        variants.append({"thp": mode, "runs": runs,
                         "ratio_median_t90": value, "ratio_is_bound": bound})
    return {"kernel": os.uname().release, "rate": rate, "seconds": seconds,
            "period": period, "vm_mib": vm_mib, "steps": STEPS,
            "step_mib": fill.step_bytes // MiB, "content": fill.describe(),
            "rescan_interval_ms": rescan_interval, "variants": variants}


def targets(result):
    """Rows for run.py's target table, one per THP mode."""
    out = []
    for var in (result or {}).get("variants", []):
        v = var["ratio_median_t90"]
        t = {"workload": "fill", "config": "memdedup", "thp": var["thp"],
             "rate": result["rate"],
             "target": "median step-to-90% time <= 0.5x stock",
             "value": v, "met": v is not None and v <= 0.5}
        if var["ratio_is_bound"]:
            t["note"] = "at most: stock's median never came within the run"
        out.append(t)
    return out


def fmt(v, digits=1):
    return "-" if v is None else "%.*f" % (digits, v)


def table(result):
    lines = []
    for var in result["variants"]:
        s, m = var["runs"]["stock"], var["runs"]["memdedup"]
        lines += ["guest memory filling over time: %d steps of %d MiB per "
                  "VM every %.0f s, %d s, ksmd %s, THP %s, smart_scan %s, "
                  "use_zero_pages %s" % (
                      result["steps"], result["step_mib"], result["period"],
                      result["seconds"], result["rate"], s["thp_mode"],
                      s["ksm"]["smart_scan"], s["ksm"]["use_zero_pages"]),
                  "kernel %s (%s)" % (s["kernel"], s["proc_version"]),
                  result["content"],
                  "%-6s %15s %19s %19s %15s" % (
                      "step", "write s", "to 90 % dup s", "dup merged %",
                      "to 90 % zero s"),
                  "%-6s %7s %7s %9s %9s %9s %9s %7s %7s" % (
                      "", "stock", "memd", "stock", "memdedup", "stock",
                      "memdedup", "stock", "memd")]
        for k, (a, b) in enumerate(zip(s["steps"], m["steps"])):
            lines.append("%-6d %7.2f %7.2f %9s %9s %9.1f %9.1f %7s %7s" % (
                k + 1, a["write_s"], b["write_s"], fmt(a["t90"]),
                fmt(b["t90"]), 100 * a["final_dup_frac"],
                100 * b["final_dup_frac"], fmt(a["zero_t90"]),
                fmt(b["zero_t90"])))
        v = var["ratio_median_t90"]
        lines.append("%-6s %15s %9s %9s   ratio %s%s" % (
            "median", "", fmt(s["median_t90"]), fmt(m["median_t90"]),
            "<= " if var["ratio_is_bound"] else "", fmt(v, 3)))
        for what, a, b in (
                ("ksmd CPU, run (s)", s["ksmd_cpu"], m["ksmd_cpu"]),
                ("ksmd CPU to last step's 90 % (s)",
                 s["ksmd_cpu_to_last90"], m["ksmd_cpu_to_last90"]),
                ("QEMU CPU, per process (s)",
                 " + ".join("%.2f" % c for c in s["qemu_cpu"]),
                 " + ".join("%.2f" % c for c in m["qemu_cpu"])),
                ("engine CPU, per process (s)", "-",
                 " + ".join("%.2f" % c for c in m["engine_cpu"])),
                ("saving at the end (MiB)",
                 s["saving_pages"] * PAGE / MiB,
                 m["saving_pages"] * PAGE / MiB),
                ("bench's CPU: sampling, writing (s)", s["bench_cpu"],
                 m["bench_cpu"]),
                ("other processes' CPU (s, +-5)", s.get("other_cpu"),
                 m.get("other_cpu"))):
            lines.append("%-34s %14s %14s" % (
                what, a if isinstance(a, str) else fmt(a, 2),
                b if isinstance(b, str) else fmt(b, 2)))
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int,
                    help="seconds per run (default 5 periods + 60)")
    ap.add_argument("--period", type=float,
                    help="seconds between steps (%.0f)" % PERIOD)
    ap.add_argument("--vm-mib", type=int, help="MiB per VM (%d)" % VM_MIB)
    ap.add_argument("--rate", choices=sorted(RATES),
                    help="ksmd's pages_to_scan/sleep_millisecs (1000/20)")
    ap.add_argument("--thp", help="THP modes to run with (%s)"
                    % ",".join(THP))
    ap.add_argument("--rescan-interval", type=int, default=10000,
                    help="the engines' rescan-interval, ms (10000)")
    ap.add_argument("--quick", action="store_true",
                    help="%(vm_mib)d MiB VMs, a step every %(period).0f s, "
                         "%(seconds)d s, THP madvise" % QUICK)
    ap.add_argument("--out", help="write results.json and table.txt "
                    "into this directory")
    a = ap.parse_args()
    opts, err = options(a.quick, a.seconds, a.period, a.vm_mib, a.rate,
                        a.thp)
    if err:
        sys.exit("bench/fill.py: " + err)
    if os.geteuid() != 0:
        sys.exit("bench/fill.py: needs root (KSM knobs, page flags)")
    with tempfile.TemporaryDirectory(prefix="memdedup-fill-") as workdir, \
            host.KsmKnobs(run=0) as ksm, host.ThpMode() as thpmode:
        if not ksm.active:
            sys.exit("bench/fill.py: " + ksm.reason)
        if not thpmode.active:
            sys.exit("bench/fill.py: " + thpmode.reason)
        result = run(workdir, thpmode,
                     rescan_interval=a.rescan_interval, **opts)
    text = table(result)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump({"fill": result, "targets": targets(result)}, f,
                      indent=1)
        with open(os.path.join(a.out, "table.txt"), "w") as f:
            f.write(text + "\n")
    return 0 if all(t["met"] for t in targets(result)) else 1


if __name__ == "__main__":
    sys.exit(main())
