#!/usr/bin/env python3
"""memdedup benchmarks: side by side with stock QEMU + KSM, in one run,
with the same ksmd settings (make bench).  After the workloads below,
the scanner micro-benchmark, hostile content, the copy-on-write
churn workload (bench/cow.py; --no-cow skips it) and guest memory that
fills over time (bench/fill.py; --no-fill skips it, --fill-only runs
only it).

For every workload (mixed, volatile, guests; see workloads.py), THP mode
(on: the host's 'madvise' mode with QEMU's MADV_HUGEPAGE; off: 'never')
and ksmd rate (pages_to_scan/sleep_millisecs), each configuration runs
in turn: stock (memory-backend-ram,merge=on), targeted (memdedup), and
for the qtest workloads the hand-placed ideal and a one-process proxy of
the cross-VM board.  Between configurations ksmd forgets everything
(run=2, then run=0).  A run starts when the VMs hold their content:
ksmd starts (run=1) and memdedup's engine starts its first pass at the
same instant, t=0.

Measured per configuration, from the kernel:
  saving      pages_sharing (host, minus its value at t=0) plus the
              QEMUs' RSS drop (on 6.18, splitting a THP maps its zero
              subpages to the shared zero page: freed without KSM)
  t90         first sample at which saving >= 90 % of stock's final
  ksmd CPU    /proc/<ksmd>/stat utime+stime, until the run's own saving
              reached 90 % of its final ('to converge') and per minute
              over the last quarter of the run ('steady')
  ksmd page   steady ksmd CPU per page ksmd scanned then
              (/sys/kernel/mm/ksm/pages_scanned): ksmd scans about
              pages_to_scan pages per sleep_millisecs whatever it was
              given, so the steady ratio is the ratio of these costs
  memdedup    CPU of the QEMU threads named memdedup* (all the engine's
              work) and query-memdedup's scanner-cpu-time (hashing only)
  rmap_items  ksm_rmap_items of the QEMUs' /proc/PID/ksm_stat
  metadata    query-memdedup metadata-bytes
  THP         AnonHugePages of /proc/PID/smaps_rollup

Host state is borrowed and given back: the KSM knobs (host.KsmKnobs) and
the THP mode (host.ThpMode) are restored on every exit path, every QEMU
is quit and reaped by PID.  Each configuration holds the CPU lock
/tmp/memdedup-cpu.lock (shared with builds) while it runs.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import probe  # noqa: E402
import host  # noqa: E402  (scripts/memdedup/, on probe's path)
import qtestvm  # noqa: E402  (scripts/memdedup/, on probe's path)
import workloads as wl  # noqa: E402

MiB = 1 << 20
PAGE = probe.PAGE
RATES = {"100/20": (100, 20), "1000/20": (1000, 20)}
# ksmd under the kernel's scan-time advisor (Linux 6.7), from a reset
# advisor state each run (switching it off and on again), instead of a
# fixed rate: it sets pages_to_scan itself.
ADVISOR = "advisor"
THP_MODES = {"on": None, "off": "never"}   # None: the host's own mode
WORKLOADS = ("mixed", "volatile", "guests")
CONFIG_ORDER = ("stock", "targeted", "board", "proxy", "ideal", "nomanage")

# Measurement seconds per (rate, THP).  Stock QEMU with THP merges
# (almost) nothing for the first ~3 minutes at 1000/20 on this host, so
# THP-on runs are longer.
SECONDS = {("1000/20", "off"): 75, ("1000/20", "on"): 240,
           ("100/20", "off"): 360, ("100/20", "on"): 480,
           (ADVISOR, "off"): 300, (ADVISOR, "on"): 300}
QUICK_SECONDS = 40
WORKLOAD_CONFIGS = {"mixed": "stock,targeted,board,proxy,ideal",
                    "volatile": "stock,targeted,board,ideal",
                    "guests": "stock,targeted,board"}
# (THP, rate, workload, configurations): make bench (~65 min) and --quick.
# Every workload runs with THP off and on (what users have).
DEFAULT_STEPS = [
    ("off", "1000/20", "mixed", "stock,targeted,board,proxy,ideal"),
    ("off", "1000/20", "volatile", "stock,targeted,board"),
    ("off", "1000/20", "guests", "stock,targeted,board"),
    ("off", "100/20", "mixed", "stock,targeted,board"),
    ("on", "1000/20", "mixed", "stock,targeted,board"),
    ("on", "1000/20", "volatile", "stock,board"),
    ("on", "1000/20", "guests", "stock,board"),
]
QUICK_STEPS = [
    ("off", "1000/20", "mixed", "stock,targeted"),
    ("on", "1000/20", "mixed", "stock,targeted"),
]
SIZES = {"default": {"vm_mib": 1024, "guest_mib": 1024},
         "quick": {"vm_mib": 512, "guest_mib": 768}}


def log(msg):
    print("bench: " + msg, flush=True)


# ---------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------

class Proc:
    """One QEMU of a run, with its qtest socket (None for guests) and the
    VMs it holds [(vm_index, base_gpa)]."""

    def __init__(self, vm, qt, placed, memdedup):
        self.vm, self.qt, self.placed, self.memdedup = vm, qt, placed, memdedup

    def stop(self):
        self.vm.stop()
        if self.qt:
            self.qt.close()


def start_qtest_procs(config, layout, images, workdir, out):
    for name, args, placed in wl.qtest_processes(
            config, layout, board=os.path.join(workdir, "board")):
        loaders = []
        for vm_index, base in placed:
            loaders += wl.loader_args(images[vm_index], base)
        vm, qt = qtestvm.start_qtest_vm(wl.QEMU, workdir, name,
                                        args + loaders)
        out.append(Proc(vm, qt, placed, config in wl.MEMDEDUP_CONFIGS))


def sample(procs, ksmd, base):
    """One sample of everything, as deltas from base (None: take base)."""
    s = {"t": time.monotonic(),
         "pages_sharing": host.ksm_read("pages_sharing") or 0,
         "pages_shared": host.ksm_read("pages_shared") or 0,
         "full_scans": host.ksm_read("full_scans") or 0,
         "pages_scanned": host.ksm_read("pages_scanned") or 0,
         "pages_to_scan": host.ksm_read("pages_to_scan") or 0,
         "ksmd_cpu": host.cpu_seconds(ksmd) or 0.0,
         "rss": [], "merging": 0, "rmap_items": 0, "ksm_zero": 0,
         "anon_huge": 0, "md_cpu": 0.0, "registered": 0,
         "scanner_cpu": 0.0, "passes": 0}
    for p in procs:
        pid = p.vm.pid
        k = host.ksm_stat(pid)
        s["merging"] += k.get("ksm_merging_pages", 0)
        s["rmap_items"] += k.get("ksm_rmap_items", 0)
        s["ksm_zero"] += k.get("ksm_zero_pages", 0)
        s["rss"].append((host.rss_bytes(pid) or 0) // probe.PAGE)
        s["anon_huge"] += host.smaps_rollup(pid).get("AnonHugePages", 0)
        if p.memdedup:
            s["md_cpu"] += host.thread_cpu_ns(pid, "memdedup") / 1e9
            info = p.vm.qmp.cmd("query-memdedup")
            s["scanner_cpu"] += info["scanner-cpu-time"] / 1e9
            s["passes"] += info["passes-completed"]
            s["registered"] += sum(b["registered-bytes"]
                                   for b in info["backends"])
    if base is None:
        return s
    rss_drop = sum(max(0, b - r) for b, r in zip(base["rss"], s["rss"]))
    return {
        "t": round(s["t"] - base["t"], 2),
        "saving_pages": s["pages_sharing"] - base["pages_sharing"] + rss_drop,
        "pages_sharing": s["pages_sharing"] - base["pages_sharing"],
        "rss_drop_pages": rss_drop,
        "pages_shared": s["pages_shared"],
        "pages_to_scan": s["pages_to_scan"],
        "merging_pages": s["merging"],
        "rmap_items": s["rmap_items"],
        "ksm_zero_pages": s["ksm_zero"],
        "anon_huge_bytes": s["anon_huge"],
        "full_scans": s["full_scans"] - base["full_scans"],
        "pages_scanned": s["pages_scanned"] - base["pages_scanned"],
        "ksmd_cpu": round(s["ksmd_cpu"] - base["ksmd_cpu"], 3),
        "memdedup_cpu": round(s["md_cpu"] - base["md_cpu"], 3),
        "scanner_cpu": round(s["scanner_cpu"] - base["scanner_cpu"], 3),
        "passes": s["passes"] - base["passes"],
        "registered_bytes": s["registered"],
    }


def set_rate(rate, res):
    """ksmd's rate for a run: fixed, or the advisor's from its start."""
    if host.advisor_mode() is not None:
        host.set_advisor_mode("none")       # resets it; pages_to_scan free
    if rate != ADVISOR:
        pts, sleep_ms = RATES[rate]
        host.ksm_set(pages_to_scan=pts, sleep_millisecs=sleep_ms)
        return
    host.ksm_set(sleep_millisecs=20)        # the kernel's default
    host.set_advisor_mode("scan-time")
    res["advisor"] = {k: host.ksm_read(k) for k in (
        "advisor_target_scan_time", "advisor_min_pages_to_scan",
        "advisor_max_pages_to_scan", "advisor_max_cpu")}


def run_config(ctx, workload, config, thp, rate, seconds):
    a = ctx.args
    label = "%s/%s THP %s ksmd %s" % (workload, config, thp, rate)
    res = {"workload": workload, "config": config, "thp": thp, "rate": rate,
           "thp_mode": host.thp_read(), "seconds": seconds}
    procs, vms = [], []
    writer = None
    with probe.cpu_lock(label):
        t_start = time.monotonic()
        log("%s: ksmd reset (run=2) ..." % label)
        res["reset_seconds"] = round(host.ksm_reset(), 2)
        set_rate(rate, res)
        workdir = tempfile.mkdtemp(prefix="run-", dir=ctx.workdir)
        try:
            if workload == "guests":
                append = ("memdedup.shared=%d memdedup.copies=%d "
                          "memdedup.zero=%d memdedup.unique=%d"
                          % ctx.guest_fill)
                wl.start_guests(config, workdir, 2, ctx.guest_mib, append,
                                a.boot_timeout, vms)
                procs = [Proc(vm, None, [(i, 0)],
                              config in wl.MEMDEDUP_CONFIGS)
                         for i, vm in enumerate(vms)]
            else:
                start_qtest_procs(config, ctx.layout, ctx.images, workdir,
                                  procs)
            res["setup_seconds"] = round(time.monotonic() - t_start, 1)
            wl.wait_engine_idle([p.vm for p in procs if p.memdedup])
            base = sample(procs, ctx.ksmd, None)
            res["rss_at_start_bytes"] = sum(base["rss"]) * PAGE

            # t = 0: ksmd and the engine start together.
            host.ksm_set(run=1)
            for p in procs:
                if p.memdedup:
                    wl.start_engine(p.vm, a.rescan_interval)
            if workload == "volatile":
                writer = wl.VolatileWriter(
                    [(p.qt, base_gpa) for p in procs
                     for _, base_gpa in p.placed], ctx.layout,
                    a.volatile_period)
                writer.start()
            samples = []
            interval = a.interval if rate == "1000/20" else a.interval * 2
            next_t = base["t"]
            while True:
                s = sample(procs, ctx.ksmd, base)
                samples.append(s)
                if s["t"] >= seconds:
                    break
                next_t += interval
                time.sleep(max(0.0, next_t - time.monotonic()))
            res["samples"] = samples

            # The kernel's own per-process views at the end.
            res["smaps_ksm_bytes"] = sum(host.smaps_merged_pages(p.vm.pid) * probe.PAGE
                                         for p in procs)
            res["ksm_stat"] = [host.ksm_stat(p.vm.pid) for p in procs]
            res["smaps_rollup"] = [
                {k: v for k, v in host.smaps_rollup(p.vm.pid).items()
                 if k in ("Rss", "Anonymous", "AnonHugePages")}
                for p in procs]
            if any(p.memdedup for p in procs):
                res["memdedup"] = [p.vm.qmp.cmd("query-memdedup")
                                   for p in procs]
            if workload != "guests":
                # Which 2 MiB regions still are huge pages, by content.
                regions = []
                for p in procs:
                    regions += probe.guest_ram_regions(p.vm.pid)
                res["census"] = ctx.layout.census(regions)
            if writer:
                writer.stop()
                if writer.error:
                    raise RuntimeError("volatile writer: %s" % writer.error)
                res["volatile"] = {"sweeps": writer.sweeps,
                                   "pages_written": writer.pages_written,
                                   "period": a.volatile_period}
        finally:
            with host.shielded():
                if writer:
                    writer.stop()
                for p in procs:
                    p.stop()
                for vm in vms:
                    vm.stop()
                # ksmd back to idle before the lock goes to a build.
                host.ksm_set(run=0)
                if not a.keep_logs:
                    shutil.rmtree(workdir, ignore_errors=True)
        res["wall_seconds"] = round(time.monotonic() - t_start, 1)
    last = res["samples"][-1]
    if rate == ADVISOR:
        log("%s: the advisor's pages_to_scan went %s" % (label, " ".join(
            str(s["pages_to_scan"]) for s in res["samples"][::15])))
    log("%s: saving %.0f MiB (sharing %d + rss drop %d pages), ksmd %.2f s,"
        " memdedup %.2f s, rmap_items %d, AnonHuge %d MiB, %.0f s wall" % (
            label, last["saving_pages"] * PAGE / MiB, last["pages_sharing"],
            last["rss_drop_pages"], last["ksmd_cpu"], last["memdedup_cpu"],
            last["rmap_items"], last["anon_huge_bytes"] // MiB,
            res["wall_seconds"]))
    return res


# ---------------------------------------------------------------------
# Summaries and ratios
# ---------------------------------------------------------------------

def first_time(samples, threshold):
    for s in samples:
        if s["saving_pages"] >= threshold:
            return s
    return None


def at_time(samples, t):
    """The first sample at or after t (the last one if none)."""
    for s in samples:
        if s["t"] >= t:
            return s
    return samples[-1]


def summarize(run, stock_final, ctx):
    ss = run["samples"]
    final = sum(s["saving_pages"] for s in ss[-3:]) / len(ss[-3:])
    end = ss[-1]
    window = max(10.0, run["seconds"] / 4.0)
    w0 = at_time(ss, end["t"] - window)
    span = max(1e-6, end["t"] - w0["t"])
    own90 = first_time(ss, 0.9 * final) if final > 0 else None
    st90 = first_time(ss, 0.9 * stock_final) if stock_final else None
    conv = own90 or end
    nvm_pages = (ctx.layout.vm_mib * MiB // PAGE * 2
                 if run["workload"] != "guests"
                 else ctx.guest_mib * MiB // PAGE * 2)
    md = run.get("memdedup") or []
    # Results of runs before pages_scanned was sampled have none.
    scanned = end.get("pages_scanned", 0) - w0.get("pages_scanned", 0)
    summary = {
        "final_saving_bytes": int(final * PAGE),
        "t90_stock_s": st90["t"] if st90 else None,
        "t90_own_s": own90["t"] if own90 else None,
        "ksmd_cpu_converge_s": conv["ksmd_cpu"],
        "memdedup_cpu_converge_s": conv["memdedup_cpu"],
        "total_cpu_converge_s": round(conv["ksmd_cpu"] +
                                      conv["memdedup_cpu"], 3),
        "ksmd_cpu_total_s": end["ksmd_cpu"],
        "ksmd_cpu_steady_per_min": round(
            (end["ksmd_cpu"] - w0["ksmd_cpu"]) * 60.0 / span, 3),
        "memdedup_cpu_steady_per_min": round(
            (end["memdedup_cpu"] - w0["memdedup_cpu"]) * 60.0 / span, 3),
        "ksmd_pages_scanned_steady_per_s": round(scanned / span),
        "ksmd_ns_per_page_steady": round(
            (end["ksmd_cpu"] - w0["ksmd_cpu"]) * 1e9 / scanned)
        if scanned > 0 else None,
        "memdedup_cpu_total_s": end["memdedup_cpu"],
        "scanner_cpu_total_s": end["scanner_cpu"],
        "converged": (end["saving_pages"] - w0["saving_pages"]) <=
                     0.02 * max(final, 1),
        "rmap_items": end["rmap_items"],
        "merging_pages": end["merging_pages"],
        "smaps_ksm_bytes": run.get("smaps_ksm_bytes"),
        "pages_sharing": end["pages_sharing"],
        "rss_drop_pages": end["rss_drop_pages"],
        "anon_huge_bytes": end["anon_huge_bytes"],
        "registered_bytes": end["registered_bytes"],
        "passes": end["passes"],
        "guest_pages": nvm_pages,
    }
    if md:
        meta = sum(i["metadata-bytes"] for i in md)
        summary["metadata_bytes"] = meta
        summary["metadata_bytes_per_page"] = round(meta / nvm_pages, 3)
        summary["huge_regions"] = sum(b["huge-regions"] for i in md
                                      for b in i["backends"])
    census = run.get("census")
    if census:
        for kind in ("unique", "volatile", "cross", "dup", "zero"):
            c = census.get(kind)
            if c and c["regions"]:
                summary["thp_kept_%s_frac" % kind] = round(
                    c["huge"] / c["regions"], 3)
        # The target: unique regions keep huge pages (the volatile
        # quarter is unique too, but changes: it counts in 'volatile').
        summary["thp_kept_unique_frac"] = summary.get(
            "thp_kept_unique_frac", 0.0)
    return summary


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


RATIO_KEYS = (
    ("saving", "final_saving_bytes"),
    ("t90", "t90_stock_s"),
    ("ksmd_cpu_conv", "ksmd_cpu_converge_s"),
    ("ksmd_cpu_steady", "ksmd_cpu_steady_per_min"),
    ("rmap_items", "rmap_items"),
)


def ratios(runs):
    """memdedup/stock (and /ideal) per group (workload, thp, rate)."""
    out = []
    groups = {}
    for r in runs:
        groups.setdefault((r["workload"], r["thp"], r["rate"]), {})[
            r["config"]] = r
    for (workload, thp, rate), g in groups.items():
        stock = g.get("stock")
        ideal = g.get("ideal")
        for config, r in g.items():
            if config == "stock" or not stock:
                continue
            s, st = r["summary"], stock["summary"]
            row = {"workload": workload, "thp": thp, "rate": rate,
                   "config": config}
            for name, key in RATIO_KEYS:
                row[name] = ratio(s[key], st[key])
            row["total_cpu_conv"] = ratio(s["total_cpu_converge_s"],
                                          st["ksmd_cpu_converge_s"])
            row["total_cpu_steady"] = ratio(
                s["ksmd_cpu_steady_per_min"] +
                s["memdedup_cpu_steady_per_min"],
                st["ksmd_cpu_steady_per_min"])
            # The steady ratio is this times the ratio of scan rates.
            row["ksmd_page_cost"] = ratio(s.get("ksmd_ns_per_page_steady"),
                                          st.get("ksmd_ns_per_page_steady"))
            row["t90_own_vs_stock_own"] = ratio(s["t90_own_s"],
                                                st["t90_own_s"])
            # With THP off there are no huge pages to keep.
            thp_on = thp == "on"
            row["thp_kept"] = (s.get("thp_kept_unique_frac") if thp_on
                               else None)
            row["stock_thp_kept"] = (st.get("thp_kept_unique_frac")
                                     if thp_on else None)
            row["metadata_per_page"] = s.get("metadata_bytes_per_page")
            if ideal and config != "ideal":
                si = ideal["summary"]
                row["vs_ideal"] = {
                    "saving": ratio(s["final_saving_bytes"],
                                    si["final_saving_bytes"]),
                    "ksmd_cpu_conv": ratio(s["ksmd_cpu_converge_s"],
                                           si["ksmd_cpu_converge_s"]),
                    "ksmd_cpu_steady": ratio(s["ksmd_cpu_steady_per_min"],
                                             si["ksmd_cpu_steady_per_min"]),
                    "rmap_items": ratio(s["rmap_items"], si["rmap_items"]),
                    "total_cpu_conv": ratio(s["total_cpu_converge_s"],
                                            si["ksmd_cpu_converge_s"]),
                }
            out.append(row)
    return out


TARGETS = (
    # (name, row key, limit, 'min' or 'max', workloads it applies to)
    ("final saving >= 0.97x stock", "saving", 0.97, "min", None),
    ("time to 90% <= 0.55x stock", "t90", 0.55, "max", ("mixed",)),
    ("ksmd CPU to converge <= 0.55x", "ksmd_cpu_conv", 0.55, "max",
     ("mixed",)),
    ("steady-state ksmd CPU <= 0.15x", "ksmd_cpu_steady", 0.15, "max",
     ("mixed",)),
    ("ksm_rmap_items <= 0.45x", "rmap_items", 0.45, "max", ("mixed",)),
    ("total CPU to converge <= 0.65x stock ksmd", "total_cpu_conv", 0.65,
     "max", ("mixed",)),
    ("unique regions keep THP >= 0.90", "thp_kept", 0.90, "min",
     ("mixed",)),
    ("metadata <= 8 B/page", "metadata_per_page", 8.0, "max", None),
)


def check_targets(rows):
    out = []
    for r in rows:
        if r["config"] not in ("targeted", "board", "proxy"):
            continue
        for name, key, limit, kind, wls in TARGETS:
            if wls and r["workload"] not in wls:
                continue
            if key == "thp_kept" and r["thp"] != "on":
                continue
            v = r.get(key)
            if v is None:
                ok = False
            else:
                ok = v >= limit if kind == "min" else v <= limit
            t = {"workload": r["workload"], "config": r["config"],
                 "thp": r["thp"], "rate": r["rate"], "target": name,
                 "value": v, "met": ok}
            if key == "ksmd_cpu_steady" and r.get("ksmd_page_cost"):
                t["note"] = ("ksmd CPU per scanned page %.2fx stock's"
                             % r["ksmd_page_cost"])
            out.append(t)
    return out


def all_targets(result):
    """Every target row of a result: the workloads', the scanner's,
    hostile content's, bench/cow.py's and bench/fill.py's."""
    out = check_targets(result["ratios"]) + micro_targets(result) + \
        hostile_targets(result)
    for name in ("cow", "fill"):
        if result.get(name):
            out += __import__(name).targets(result[name])
    return out


def micro_targets(result):
    out = []
    m = result.get("micro")
    for row in (m or {}).get("rows", []):
        if row["privilege"] != "root":
            continue
        checks = [("hash_ratio", "hashing per CPU"),
                  ("pass_ratio", "whole pass")]
        if row["threads"] > 1 and "hash_ratio_same_threads" in row:
            # Per CPU, against what a CPU reads while as many threads
            # read: two threads share the memory bandwidth.  Their
            # throughput (the whole pass) is held to the single core's.
            checks[0] = ("hash_ratio_same_threads",
                         "hashing per CPU (vs read, 2 at once)")
        for key, what in checks:
            out.append({
                "workload": "micro", "config": "%d thread%s" % (
                    row["threads"], "s" if row["threads"] > 1 else ""),
                "thp": "-", "rate": "-",
                "target": "scanner %s >= 0.7x read bandwidth" % what,
                "value": round(row[key], 3), "met": row[key] >= 0.7})
    return out


def run_hostile(ctx, log):
    """Hostile guest content (scripts/memdedup/hostile.py): engine CPU
    per pass of each hostile kind against normal passes, interleaved,
    five rounds of two passes each."""
    import hostile
    log("  hostile content: 4 GiB, %s against normal passes"
        % ", ".join(hostile.KINDS))
    r = hostile.measure(wl.QEMU, ctx.workdir, qtestvm.run_pass, rounds=5)
    med = {k: hostile.median(v) for k, v in r["cpu"].items()}
    wall = {k: hostile.median(v) for k, v in r["wall"].items()}
    return {"size_mib": hostile.SIZE >> 20, "cpu_ns": med, "wall_ns": wall,
            "ratios": hostile.ratios(r),
            "metadata_per_page": {k: v / r["pages"]
                                  for k, v in r["metadata"].items()},
            "passes": {k: len(v) for k, v in r["cpu"].items()}}


def hostile_targets(result):
    h = result.get("hostile")
    return [{"workload": "hostile", "config": kind, "thp": "-", "rate": "-",
             "target": "engine CPU per pass <= 2x a normal pass",
             "value": round(ratio, 3), "met": ratio <= 2.0}
            for kind, ratio in sorted((h or {}).get("ratios", {}).items())]


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return "%.*f" % (digits, v)


def table(result):
    """The text tables: absolute numbers and ratios."""
    lines = []
    lines.append("Absolute numbers (two VMs; saving from the kernel)")
    hdr = ("%-9s %-4s %-7s %-9s %9s %7s %7s %8s %8s %8s %8s %9s %8s %6s "
           "%7s" % ("workload", "THP", "ksmd", "config", "saving", "t90",
                    "t90own", "ksmdconv", "ksmd/min", "md conv", "md/min",
                    "rmap", "AnonHuge", "conv", "ksmd"))
    lines.append(hdr)
    lines.append("%-9s %-4s %-7s %-9s %9s %7s %7s %8s %8s %8s %8s %9s %8s %6s "
                 "%7s" % ("", "", "", "", "MiB", "s", "s", "CPU s", "CPU s",
                          "CPU s", "CPU s", "items", "MiB", "",
                          "ns/page"))
    for r in result["runs"]:
        s = r["summary"]
        lines.append(
            "%-9s %-4s %-7s %-9s %9.1f %7s %7s %8.2f %8.3f %8.2f %8.3f "
            "%9d %8d %6s %7s" % (
                r["workload"], r["thp"], r["rate"], r["config"],
                s["final_saving_bytes"] / MiB, fmt(s["t90_stock_s"], 0),
                fmt(s["t90_own_s"], 0), s["ksmd_cpu_converge_s"],
                s["ksmd_cpu_steady_per_min"], s["memdedup_cpu_converge_s"],
                s["memdedup_cpu_steady_per_min"], s["rmap_items"],
                s["anon_huge_bytes"] // MiB, fmt(s["converged"]),
                fmt(s.get("ksmd_ns_per_page_steady"), 0)))
    lines.append("")
    lines.append("Ratios to stock (same workload, THP mode and ksmd rate)")
    lines.append("%-9s %-4s %-7s %-9s %6s %6s %8s %8s %6s %8s %8s %8s %6s "
                 "%6s" % ("workload", "THP", "ksmd", "config", "saving",
                          "t90", "ksmdconv", "steady", "rmap", "totalCPU",
                          "totSteady", "THPkept", "B/page", "ns/pg"))
    for r in result["ratios"]:
        lines.append("%-9s %-4s %-7s %-9s %6s %6s %8s %8s %6s %8s %8s %8s %6s "
                     "%6s" % (r["workload"], r["thp"], r["rate"], r["config"],
                              fmt(r["saving"]), fmt(r["t90"]),
                              fmt(r["ksmd_cpu_conv"]),
                              fmt(r["ksmd_cpu_steady"]),
                              fmt(r["rmap_items"]), fmt(r["total_cpu_conv"]),
                              fmt(r.get("total_cpu_steady")),
                              fmt(r["thp_kept"]),
                              fmt(r["metadata_per_page"]),
                              fmt(r.get("ksmd_page_cost"))))
    if not result["runs"]:
        lines = []          # no workload ran (--micro-only, --fill-only)
    vs = [r for r in result["ratios"] if r.get("vs_ideal")]
    if vs:
        lines.append("")
        lines.append("Ratios to the hand-placed ideal")
        lines.append("%-9s %-4s %-7s %-9s %6s %8s %8s %6s %8s" % (
            "workload", "THP", "ksmd", "config", "saving", "ksmdconv",
            "steady", "rmap", "totalCPU"))
        for r in vs:
            v = r["vs_ideal"]
            lines.append("%-9s %-4s %-7s %-9s %6s %8s %8s %6s %8s" % (
                r["workload"], r["thp"], r["rate"], r["config"],
                fmt(v["saving"]), fmt(v["ksmd_cpu_conv"]),
                fmt(v["ksmd_cpu_steady"]), fmt(v["rmap_items"]),
                fmt(v["total_cpu_conv"])))
    h = result.get("hostile")
    if h:
        lines.append("")
        lines.append("Hostile content (%d MiB resident; engine CPU per "
                     "pass, median of %d; normal %.3f s CPU, %.3f s wall)"
                     % (h["size_mib"], h["passes"]["distinct"],
                        h["cpu_ns"]["normal"] / 1e9,
                        h["wall_ns"]["normal"] / 1e9))
        lines.append("%-10s %10s %8s %10s" % ("content", "CPU s", "ratio",
                                             "B/page"))
        for kind in sorted(h["ratios"]):
            lines.append("%-10s %10.3f %8.2f %10.2f" % (
                kind, h["cpu_ns"][kind] / 1e9, h["ratios"][kind],
                h["metadata_per_page"][kind]))
    for name in ("cow", "fill"):
        if result.get(name):
            lines.append("")
            lines.append(__import__(name).table(result[name]))
    m = result.get("micro")
    if m:
        lines.append("")
        lines.append("Scanner micro-benchmark (%d MiB resident, read "
                     "bandwidth %.2f GB/s single core, %.2f GB/s scalar)"
                     % (m["size_mib"], m["read_gbps"],
                        m.get("read_scalar_gbps", 0)))
        per = m.get("read_gbps_per_thread") or {}
        xxh3 = m.get("xxh3_gbps") or {}
        for k in sorted(per, key=int):
            lines.append("%s thread(s) at once, per thread: read %.2f GB/s, "
                         "XXH3 loop %.2f GB/s" % (k, per[k], xxh3[k]))
        lines.append("%-8s %-14s %9s %10s %8s %12s %8s %8s %8s" % (
            "threads", "QEMU", "read GB/s", "pass GB/s", "ratio",
            "hash GB/s/CPU", "ratio", "/read@n", "/XXH3@n"))
        for row in m["rows"]:
            # The single-core bandwidth the row's ratios are to.
            read = row.get("read_gbps", m["read_gbps"])
            lines.append(
                "%-8d %-14s %9.2f %10.2f %8.2f %12.2f %8.2f %8s %8s" % (
                    row["threads"], row["privilege"], read,
                    row["pass_gbps"], row["pass_ratio"],
                    row["hash_gbps_per_cpu"], row["hash_ratio"],
                    fmt(row.get("hash_ratio_same_threads")),
                    fmt(row.get("hash_xxh3_ratio"))))
    if result.get("targets"):
        lines.append("")
        lines.append("Targets")
        for t in result["targets"]:
            lines.append(("  %-4s %-9s %-8s THP %-3s %-7s %-42s %s" % (
                "met" if t["met"] else "NOT", t["workload"], t["config"],
                t["thp"], t["rate"], t["target"], fmt(t["value"])) +
                ("   (%s)" % t["note"] if t.get("note") else "")))
    return "\n".join(lines).lstrip("\n")


def rst_tables(result):
    """The ratio and absolute tables as reStructuredText simple tables
    (for docs/system/memdedup.rst)."""
    def simple(header, rows):
        widths = [max(len(str(x)) for x in col)
                  for col in zip(header, *rows)]
        rule = " ".join("=" * w for w in widths)
        out = [rule, " ".join(str(h).ljust(w) for h, w in
                              zip(header, widths)).rstrip(), rule]
        for r in rows:
            out.append(" ".join(str(x).ljust(w) for x, w in
                                zip(r, widths)).rstrip())
        out.append(rule)
        return "\n".join(out)

    rows = []
    for r in result["runs"]:
        s = r["summary"]
        rows.append((r["workload"], r["thp"], r["rate"], r["config"],
                     "%.0f" % (s["final_saving_bytes"] / MiB),
                     fmt(s["t90_stock_s"], 0), fmt(s["t90_own_s"], 0),
                     "%.2f" % s["ksmd_cpu_converge_s"],
                     "%.2f" % s["ksmd_cpu_steady_per_min"],
                     "%.2f" % s["memdedup_cpu_converge_s"],
                     "%.2f" % s["memdedup_cpu_steady_per_min"],
                     "%d" % s["rmap_items"],
                     "%d" % (s["anon_huge_bytes"] // MiB),
                     fmt(s.get("ksmd_ns_per_page_steady"), 0)))
    absolute = simple(("workload", "THP", "ksmd", "config", "saved MiB",
                       "t90 s", "own t90 s", "ksmd CPU conv s",
                       "ksmd CPU s/min", "memdedup CPU conv s",
                       "memdedup CPU s/min", "rmap_items",
                       "AnonHuge MiB", "ksmd ns/page"), rows)
    rows = []
    for r in result["ratios"]:
        rows.append((r["workload"], r["thp"], r["rate"], r["config"],
                     fmt(r["saving"]), fmt(r["t90"]),
                     fmt(r["ksmd_cpu_conv"]), fmt(r["ksmd_cpu_steady"]),
                     fmt(r["rmap_items"]), fmt(r["total_cpu_conv"]),
                     fmt(r.get("total_cpu_steady")), fmt(r["thp_kept"]),
                     fmt(r["metadata_per_page"]),
                     fmt(r.get("ksmd_page_cost"))))
    ratio_t = simple(("workload", "THP", "ksmd", "config", "saving",
                      "t90", "ksmd CPU conv", "ksmd CPU steady",
                      "rmap_items", "total CPU conv", "total CPU steady",
                      "THP kept", "meta B/page", "ksmd CPU/page"), rows)
    return ratio_t, absolute


# ---------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------

class Ctx:
    pass


def csv(s):
    return [x for x in s.split(",") if x]


def plan(a):
    """[(thp, rate, workload, [configs], seconds)] in run order."""
    if a.workloads or a.thp or a.rates or a.full:
        wls = csv(a.workloads or ",".join(WORKLOADS))
        thps = csv(a.thp or "off,on")
        rates = csv(a.rates or ("1000/20,100/20" if a.full else "1000/20"))
        steps = [(t, r, w, WORKLOAD_CONFIGS.get(w, "stock"))
                 for t in thps for r in rates for w in wls]
    else:
        steps = QUICK_STEPS if a.quick else DEFAULT_STEPS
    out = []
    for thp, rate, w, configs in steps:
        if w not in WORKLOADS:
            sys.exit("bench: unknown workload %s (%s)"
                     % (w, ", ".join(WORKLOADS)))
        if thp not in THP_MODES:
            sys.exit("bench: THP mode is on or off, not %s" % thp)
        if rate not in RATES and rate != ADVISOR:
            sys.exit("bench: ksmd rate is one of %s, %s, not %s"
                     % (", ".join(RATES), ADVISOR, rate))
        if rate == ADVISOR and host.advisor_mode() is None:
            sys.exit("bench: this kernel has no KSM advisor "
                     "(/sys/kernel/mm/ksm/advisor_mode, Linux 6.7)")
        configs = csv(a.configs or configs)
        for c in configs:
            if c not in wl.CONFIGS:
                sys.exit("bench: unknown configuration %s" % c)
        if w == "guests":
            configs = [c for c in configs if c not in ("proxy", "ideal")]
        configs = sorted(set(configs) | {"stock"}, key=CONFIG_ORDER.index)
        if a.seconds:
            # Scaled like the defaults: N at 1000/20 with THP off.
            secs = max(10, int(round(a.seconds * SECONDS[(rate, thp)] /
                                     SECONDS[("1000/20", "off")])))
        elif a.quick:
            secs = QUICK_SECONDS
        else:
            secs = SECONDS[(rate, thp)]
        out.append((thp, rate, w, configs, secs))
    return out


def estimate_minutes(steps, with_micro, cow_seconds=0, fill_runs=()):
    """fill_runs: the seconds of each run of bench/fill.py."""
    # The copy-on-write churn: two configurations, smart_scan off and on.
    total = 4.0 * (cow_seconds + 20) if cow_seconds else 0.0
    # The filling guests: their content first, then a reset, two QEMUs
    # and ksmd's settling per run.
    total += sum(secs + 25 for secs in fill_runs) + (15 if fill_runs
                                                      else 0)
    for _, _, w, configs, secs in steps:
        setup = 50 if w == "guests" else 14
        total += len(configs) * (secs + setup + 6)
    # The micro-benchmark about a minute, the hostile content three.
    return (total + (240 if with_micro else 0) + 20) / 60.0


def fill_options(a):
    """bench/fill.py's run() arguments from the --fill-* options."""
    import fill
    out, err = fill.options(a.quick, a.fill_seconds, a.fill_period,
                            a.fill_vm_mib, a.fill_rate, a.fill_thp)
    if err:
        sys.exit("bench: --fill-*: " + err)
    return out


def binary_info(path):
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": path, "mtime": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
        "sha256": h.hexdigest()[:16]}


def main():
    ap = argparse.ArgumentParser(
        description="memdedup vs stock QEMU + KSM benchmarks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="make bench runs, THP off: mixed (stock, targeted, board, "
               "proxy, ideal), volatile and guests (stock, targeted, board) "
               "at ksmd 1000/20, mixed (stock, targeted, board) at 100/20; "
               "THP on, at 1000/20: mixed (stock, targeted, board), "
               "volatile and guests (stock, board); then the scanner "
               "micro-benchmark, the copy-on-write churn workload and "
               "guest memory filling over time (about 105 minutes).  Any "
               "of --workloads, "
               "--thp, --rates selects the product of the lists given "
               "instead (unspecified: all workloads, THP off,on, 1000/20), "
               "each workload with its applicable configurations unless "
               "--configs says otherwise.")
    ap.add_argument("--quick", action="store_true",
                    help="mixed only, 512 MiB VMs, 1000/20, THP off and "
                         "on, stock and targeted, 40 s per run; short "
                         "runs of bench/cow.py and bench/fill.py "
                         "(~16 min)")
    ap.add_argument("--full", action="store_true",
                    help="every workload, THP mode, rate and applicable "
                         "configuration (about 2 hours)")
    ap.add_argument("--workloads", help="comma list of " +
                    ", ".join(WORKLOADS))
    ap.add_argument("--configs", help="comma list of " +
                    ", ".join(CONFIG_ORDER) + " (stock always runs)")
    ap.add_argument("--thp", help="comma list of on, off")
    ap.add_argument("--rates", help="comma list of " + ", ".join(RATES) +
                    ", " + ADVISOR + " (the kernel's scan-time advisor "
                    "from a reset state, 300 s runs)")
    ap.add_argument("--seconds", type=int,
                    default=int(os.environ.get("MEMDEDUP_BENCH_SECONDS", 0)),
                    help="measurement seconds per run at 1000/20 with THP "
                         "off (default 75; the other runs scale with it: "
                         "240 s with THP on, 360 s at 100/20); env "
                         "MEMDEDUP_BENCH_SECONDS")
    ap.add_argument("--vm-mib", type=int, help="MiB per qtest VM")
    ap.add_argument("--guest-mib", type=int, help="MiB per real guest")
    ap.add_argument("--no-micro", action="store_true",
                    help="skip the scanner micro-benchmark")
    ap.add_argument("--no-cow", action="store_true",
                    help="skip the copy-on-write churn workload "
                         "(bench/cow.py)")
    ap.add_argument("--cow-seconds", type=int,
                    help="seconds per configuration of the copy-on-write "
                         "churn workload (default 300, --quick 60)")
    ap.add_argument("--micro-only", action="store_true",
                    help="only the scanner micro-benchmark")
    ap.add_argument("--no-fill", action="store_true",
                    help="skip guest memory filling over time "
                         "(bench/fill.py)")
    ap.add_argument("--fill-only", action="store_true",
                    help="only guest memory filling over time")
    ap.add_argument("--fill-seconds", type=int,
                    help="seconds per run of bench/fill.py (default 5 "
                         "periods + 60, --quick 45)")
    ap.add_argument("--fill-period", type=float,
                    help="seconds between bench/fill.py's steps (8, "
                         "--quick 4)")
    ap.add_argument("--fill-vm-mib", type=int,
                    help="MiB per VM of bench/fill.py (1024, --quick 256)")
    ap.add_argument("--fill-rate", choices=sorted(RATES),
                    help="ksmd rate of bench/fill.py (1000/20)")
    ap.add_argument("--fill-thp",
                    help="THP modes of bench/fill.py (madvise,never; "
                         "--quick madvise)")
    ap.add_argument("--interval", type=float, default=1.0,
                    help="seconds between samples at 1000/20 (1)")
    ap.add_argument("--rescan-interval", type=int, default=10000,
                    help="memdedup rescan-interval during runs, ms (10000, "
                         "the engine's default)")
    ap.add_argument("--volatile-period", type=float, default=5.0,
                    help="seconds per rewrite of every volatile page (5)")
    ap.add_argument("--boot-timeout", type=int, default=300)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "runs"),
                    help="results directory (bench/results/runs)")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep QEMU logs and serial output")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan and its estimated length")
    ap.add_argument("--report", metavar="RESULTS_JSON",
                    help="print the tables of an earlier run (text and "
                         "reStructuredText) and exit")
    a = ap.parse_args()
    if a.report:
        with open(a.report) as f:
            old = json.load(f)
        old["ratios"] = ratios(old["runs"])
        old["targets"] = all_targets(old)
        print(table(old))
        for t in rst_tables(old) if old["runs"] else ():
            print()
            print(t)
        return 0

    preset = "quick" if a.quick else ("full" if a.full else "default")
    sizes = SIZES["quick" if a.quick else "default"]
    steps = [] if a.micro_only or a.fill_only else plan(a)
    with_micro = not a.no_micro and not a.fill_only
    with_cow = not a.no_cow and not a.micro_only and not a.fill_only
    cow_seconds = a.cow_seconds or (60 if a.quick else 300)
    with_fill = not a.no_fill and not a.micro_only
    fill_args = fill_options(a)
    fill_runs = ([fill_args["seconds"]] * 2 * len(fill_args["thp"])
                 if with_fill else [])
    est = estimate_minutes(steps, with_micro,
                           cow_seconds if with_cow else 0, fill_runs)
    log("plan (%s), about %.0f minutes:" % (preset, est))
    for thp, rate, w, configs, secs in steps:
        log("  THP %-3s ksmd %-7s %-8s %s (%d s each)"
            % (thp, rate, w, ", ".join(configs), secs))
    if with_micro:
        log("  scanner micro-benchmark")
    if with_cow:
        log("  copy-on-write churn: stock, memdedup (%d s each)"
            % cow_seconds)
    if with_fill:
        log("  guest memory filling over time: 2 x %d MiB, a step every "
            "%.0f s, ksmd %s, THP %s: stock, memdedup (%d s each)"
            % (fill_args["vm_mib"], fill_args["period"], fill_args["rate"],
               ", ".join(fill_args["thp"]), fill_args["seconds"]))
    if a.dry_run:
        return 0

    if not os.path.exists(wl.QEMU):
        sys.exit("bench: %s is missing (make build)" % wl.QEMU)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (KSM knobs, THP mode, ksmd CPU)")
    if not os.path.exists(os.path.join(host.KSM_DIR, "run")):
        sys.exit("bench: the host has no KSM")
    if any(s[2] == "guests" for s in steps) and \
            not wl.have_guest_image():
        sys.exit("bench: no guest image: make guest")

    ctx = Ctx()
    ctx.args = a
    ctx.layout = wl.Layout(a.vm_mib or sizes["vm_mib"])
    ctx.guest_mib = a.guest_mib or sizes["guest_mib"]
    # shared MiB (<= /data/shared.bin), copies, zero MiB, unique MiB
    ctx.guest_fill = ((40, 4, 128, 320) if ctx.guest_mib >= 1024
                      else (40, 2, 64, 160))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(a.out, stamp)
    os.makedirs(outdir, exist_ok=True)
    ctx.workdir = tempfile.mkdtemp(prefix="memdedup-bench-",
                                   dir="/dev/shm" if os.path.isdir(
                                       "/dev/shm") else None)
    result = {
        "meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                          time.gmtime()),
                 "command": " ".join([os.path.basename(sys.argv[0])] +
                                     sys.argv[1:]),
                 "preset": preset,
                 "host": probe.host_info(),
                 "qemu": binary_info(wl.QEMU),
                 "layout": ctx.layout.describe(),
                 "expected": ctx.layout.expected(2),
                 "guest": {"mib": ctx.guest_mib,
                           "fill": dict(zip(("shared_mib", "copies",
                                             "zero_mib", "unique_mib"),
                                            ctx.guest_fill))},
                 "configs": {c: wl.CONFIGS[c] for c in CONFIG_ORDER},
                 "rescan_interval_ms": a.rescan_interval,
                 "volatile_period_s": a.volatile_period},
        "runs": [], "ratios": [], "targets": [], "micro": None,
        "errors": [],
    }
    t_all = time.monotonic()
    rc = 0
    try:
        with host.KsmKnobs(settle=10.0) as knobs, host.ThpMode() as thpmode, \
                host.borrowed_advisor():
            if not knobs.active:
                sys.exit("bench: " + knobs.reason)
            if not thpmode.active and any(s[0] == "off" for s in steps):
                sys.exit("bench: " + thpmode.reason)
            ctx.ksmd = host.ksmd_pid()
            host_thp = host.thp_read()
            if any(s[2] != "guests" for s in steps) or with_micro:
                log("writing the VM images (%s)" % ctx.layout.describe())
                t = time.monotonic()
                ctx.images = {}
                for i in range(2):
                    ctx.images[i] = os.path.join(ctx.workdir, "vm%d.img" % i)
                    wl.write_image(ctx.layout, i, ctx.images[i])
                log("images written in %.1f s" % (time.monotonic() - t))
            for thp, rate, w, configs, secs in steps:
                thpmode.set(THP_MODES[thp] or host_thp)
                group = []
                for c in configs:
                    try:
                        group.append(run_config(ctx, w, c, thp, rate, secs))
                    except Exception as e:  # noqa: B902  go on with the rest
                        log("%s/%s THP %s ksmd %s FAILED: %s"
                            % (w, c, thp, rate, e))
                        traceback.print_exc()
                        result["errors"].append({
                            "workload": w, "config": c, "thp": thp,
                            "rate": rate, "error": str(e)})
                        rc = 1
                stock_final = None
                for r in group:
                    if r["config"] == "stock":
                        stock_final = summarize(r, None, ctx)[
                            "final_saving_bytes"] / PAGE
                for r in group:
                    r["summary"] = summarize(r, stock_final, ctx)
                    result["runs"].append(r)
                save(result, outdir, partial=True)
            if with_micro:
                thpmode.set(host_thp)
                import micro
                result["micro"] = micro.run(ctx, log)
                result["hostile"] = run_hostile(ctx, log)
            if with_cow:
                import cow
                thpmode.set(host_thp)
                if not run_part(result, "cow", "copy-on-write churn",
                                lambda: cow.run(ctx.workdir, cow_seconds)):
                    rc = 1
            if with_fill:
                import fill
                if not run_part(result, "fill",
                                "guest memory filling over time",
                                lambda: fill.run(
                                    ctx.workdir, thpmode,
                                    rescan_interval=a.rescan_interval,
                                    **fill_args)):
                    rc = 1
            host.ksm_reset()
    except KeyboardInterrupt:
        log("interrupted: QEMUs stopped, KSM knobs and THP mode restored")
        rc = 130
    finally:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    result["ratios"] = ratios(result["runs"])
    result["targets"] = all_targets(result)
    result["meta"]["minutes"] = round((time.monotonic() - t_all) / 60.0, 1)
    text = table(result)
    print()
    print(text)
    save(result, outdir, partial=rc != 0)
    with open(os.path.join(outdir, "table.txt"), "w") as f:
        f.write(text + "\n")
    if result["runs"] and not a.no_plot:
        try:
            import plot
            for p in plot.plot(result, outdir):
                log("plot: %s" % p)
        except ImportError as e:
            log("no plot (%s): install python3-matplotlib" % e)
    log("results in %s (%.1f minutes)" % (outdir, result["meta"]["minutes"]))
    return rc


def run_part(result, name, what, fn):
    """result[name] = fn(); on an exception, log it, keep it in
    result["errors"] and return False."""
    try:
        result[name] = fn()
    except Exception as e:  # noqa: B902  reported, rc 1
        log("%s FAILED: %s" % (what, e))
        traceback.print_exc()
        result["errors"].append({"workload": name, "error": str(e)})
        return False
    return True


def save(result, outdir, partial):
    result["meta"]["partial"] = partial
    path = os.path.join(outdir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    # SIGTERM/SIGHUP outside the knob blocks end through the cleanup too.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, f: sys.exit(128 + n))
    sys.exit(main())
