#!/usr/bin/env python3
"""Copy-on-write churn, side by side with stock QEMU (make bench; alone:
bench/cow.py [--seconds N] [--period S] [--rate P/M] [--smart-scan 0,1]).

One QEMU under -accel qtest, 512 MiB: a quiet part (a 128 MiB block of
random pages written twice: 32768 pairs of duplicates that nothing
writes again) and a hot part (a 16 MiB block written twice, 4096 pairs,
8 MiB-aligned), loaded from an image.  At t=0 ksmd starts (and the
engine passes); from then on, every --period seconds (default 13), a
writer rewrites 8 bytes of every hot page, both copies alike, through
qtest: the pairs stay duplicates, so ksmd merges them again, and the
next sweep breaks them again.  --seconds (default 300) in all.  The
period must exceed the time ksmd takes to merge a changed page again
(two or three of its full scans: up to about 8 s for stock's 512 MiB
at 1000/20), else stock merges the hot part once and never again; and
it is not a multiple of the engine's 10 s between passes, else every
pass would look at the same moment of the cycle.

Configurations: stock (memory-backend-ram, merge=on) and memdedup
(memory-backend-ksm, dedup-policy=targeted, cow-threshold and
cow-backoff at their defaults, rescan-interval 10 s), each from a ksmd
reset, at the bench's ksmd rate (default 1000/20), with KSM's
smart_scan off (the behaviour before Linux 6.7) and on (where the
kernel has it: it skips pages that did not merge in earlier scans, so
stock stops merging the hot part again after a few sweeps).

Measured from the kernel: copy-on-write faults of KSM pages (/proc/vmstat
cow_ksm, host wide: the bench runs alone), ksmd CPU (/proc/<ksmd>/stat),
the quiet part's KSM pages at the end (pagemap + /proc/kpageflags), and
memdedup's own count (cow-broken-pages-total, regions off).  Goals, ratio
to stock: copy-on-write faults and ksmd CPU at most 0.2x, quiet saving
at least 0.97x.
"""

import argparse
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
VM_MIB = 512
LOAD_AT = 16 * MiB                  # above the PC's low memory holes
QUIET = 128 * MiB                   # block, written twice
HOT = 16 * MiB                      # block, written twice
QUIET_AT = LOAD_AT
HOT_AT = LOAD_AT + 2 * QUIET
RATES = {"100/20": (100, 20), "1000/20": (1000, 20)}
CONFIGS = ("stock", "memdedup")


def log(msg):
    print("bench: cow: " + msg, flush=True)


def write_image(path):
    """The quiet and hot blocks, each twice, from LOAD_AT on."""
    import random
    rnd = random.Random(23)
    quiet, hot = rnd.randbytes(QUIET), rnd.randbytes(HOT)
    with open(path, "wb") as f:
        f.write(quiet)
        f.write(quiet)
        f.write(hot)
        f.write(hot)


class HotWriter(wl.PeriodicWriter):
    """Every @period seconds, 8 bytes at offset 8 of every hot page, the
    same in both copies (a sweep number and the page's index)."""

    def __init__(self, qt, period):
        super().__init__(period)
        self.qt = qt

    def sweep(self, n):
        return [(self.qt, ["writeq 0x%x 0x%x" % (copy + p * PAGE + 8,
                                                 n << 32 | p)
                           for copy in (HOT_AT, HOT_AT + HOT)
                           for p in range(HOT // PAGE)])]


def qemu_args(config, image):
    args = ["-name", "cow-%s,debug-threads=on" % config,
            "-machine", "pc,memory-backend=m0", "-m", "%dM" % VM_MIB,
            "-device", "loader,file=%s,addr=0x%x,force-raw=on"
            % (image, LOAD_AT)]
    # dump=off: the backend's mappings are the process's VM_DONTDUMP ones.
    if config == "stock":
        return args + ["-object", "memory-backend-ram,id=m0,size=%dM,"
                       "merge=on,dump=off" % VM_MIB]
    return args + ["-object", "memdedup,id=md,rescan-interval=86400000",
                   "-object", "memory-backend-ksm,id=m0,size=%dM,dump=off"
                   % VM_MIB]


def run_config(config, image, workdir, seconds, period, rate, smart):
    pts, sleep_ms = RATES[rate]
    ksmd = host.ksmd_pid()
    res = {"config": config, "seconds": seconds, "period": period,
           "rate": rate, "smart_scan": smart}
    with probe.cpu_lock("cow/" + config):
        log("%s: ksmd reset (run=2) ..." % config)
        host.ksm_reset()
        host.ksm_set(pages_to_scan=pts, sleep_millisecs=sleep_ms)
        vm, qt = qtestvm.start_qtest_vm(qtestvm.QEMU, workdir,
                                        "cow-" + config,
                                        qemu_args(config, image))
        writer = None
        try:
            base, end = host.dontdump_range(vm.pid)
            if end - base != VM_MIB * MiB:
                raise RuntimeError("backend mapped at %x-%x" % (base, end))
            cow0, cpu0 = host.vmstat("cow_ksm"), host.cpu_seconds(ksmd)
            md0 = host.thread_cpu_ns(vm.pid, "memdedup") / 1e9
            t0 = time.monotonic()
            host.ksm_set(run=1)
            if config == "memdedup":
                vm.qmp.cmd("memdedup-scan")
                vm.qmp.cmd("qom-set", path="/objects/md",
                           property="rescan-interval", value=10000)
            writer = HotWriter(qt, period)
            writer.start()
            samples = []
            while time.monotonic() - t0 < seconds:
                time.sleep(min(5.0, max(0.0, seconds -
                                        (time.monotonic() - t0))))
                if writer.error:
                    raise RuntimeError("hot writer: %s" % writer.error)
                samples.append({
                    "t": round(time.monotonic() - t0, 1),
                    "cow_ksm": host.vmstat("cow_ksm") - cow0,
                    "ksmd_cpu": round(host.cpu_seconds(ksmd) - cpu0, 3),
                    "quiet_ksm_pages": host.ksm_pages(
                        vm.pid, base + QUIET_AT, 2 * QUIET)})
            writer.stop()
            res.update(samples[-1])
            res["samples"] = samples
            res["hot_sweeps"] = writer.sweeps
            res["hot_pages_written"] = writer.pages_written
            res["engine_cpu"] = round(host.thread_cpu_ns(
                vm.pid, "memdedup") / 1e9 - md0, 3)
            if config == "memdedup":
                b = vm.qmp.cmd("query-memdedup")["backends"][0]
                res["cow_broken_pages_total"] = b.get(
                    "cow-broken-pages-total")
                res["cow_backoff_regions"] = b["cow-backoff-regions"]
                res["registered_bytes"] = b["registered-bytes"]
        finally:
            with host.shielded():
                if writer:
                    writer.stop()
                vm.stop()
                qt.close()
                host.ksm_set(run=0)
    log("%s%s: cow_ksm %d, ksmd CPU %.2f s, quiet KSM pages %s, engine "
        "CPU %.2f s, %d sweeps" % (config, smart_words(smart),
                                   res["cow_ksm"], res["ksmd_cpu"],
                                   res["quiet_ksm_pages"],
                                   res["engine_cpu"], res["hot_sweeps"]))
    return res


def ratios(runs):
    s, m = runs["stock"], runs["memdedup"]

    def r(key):
        return m[key] / s[key] if s.get(key) else None
    return {"cow_ksm": r("cow_ksm"), "ksmd_cpu": r("ksmd_cpu"),
            "quiet_saving": r("quiet_ksm_pages")}


def targets(result):
    """Rows for run.py's target table, one set per smart_scan setting."""
    out = []
    for var in (result or {}).get("variants", []):
        rat = var["ratios"]
        for key, what, ok in (
                ("cow_ksm", "copy-on-write faults <= 0.2x stock",
                 lambda v: v <= 0.2),
                ("ksmd_cpu", "ksmd CPU <= 0.2x stock", lambda v: v <= 0.2),
                ("quiet_saving", "quiet part's saving >= 0.97x stock",
                 lambda v: v >= 0.97)):
            v = rat.get(key)
            out.append({"workload": "cow", "config": "memdedup",
                        "thp": "-", "rate": result["rate"],
                        "target": what + smart_words(var["smart_scan"]),
                        "value": None if v is None else round(v, 3),
                        "met": v is not None and ok(v)})
    return out


def smart_words(smart):
    return "" if smart is None else " (smart_scan %d)" % smart


def run(workdir, seconds=300, period=13.0, rate="1000/20",
        smart_scan=(0, 1)):
    """Both configurations, stock first, with each of @smart_scan (KSM's
    smart_scan knob, where the kernel has it: 1 skips pages that did
    not merge in earlier scans, 0 is the behaviour before Linux 6.7).
    Inside a host.KsmKnobs block (the caller's): the knobs it sets are
    given back there."""
    if host.vmstat("cow_ksm") is None:
        raise RuntimeError("this kernel has no cow_ksm in /proc/vmstat")
    if host.ksm_read("smart_scan") is None:
        smart_scan = (None,)
    image = os.path.join(workdir, "cow.img")
    write_image(image)
    host.ksm_set(use_zero_pages=0)
    variants = []
    try:
        for smart in smart_scan:
            if smart is not None:
                host.ksm_set(smart_scan=smart)
            runs = {config: run_config(config, image, workdir, seconds,
                                       period, rate, smart)
                    for config in CONFIGS}
            variants.append({"smart_scan": smart, "runs": runs,
                             "ratios": ratios(runs)})
    finally:
        os.unlink(image)
    return {"kernel": os.uname().release, "rate": rate, "seconds": seconds,
            "period": period, "variants": variants}


def table(result):
    lines = []
    for var in result["variants"]:
        s, m = var["runs"]["stock"], var["runs"]["memdedup"]
        rat = var["ratios"]
        lines += ["copy-on-write churn: %d s, hot part rewritten every %.0f "
                  "s, ksmd %s%s, kernel %s" % (
                      result["seconds"], result["period"], result["rate"],
                      smart_words(var["smart_scan"]), result["kernel"]),
                  "%-26s %12s %12s %8s" % ("", "stock", "memdedup",
                                           "ratio")]
        for key, what in (("cow_ksm", "COW faults (cow_ksm)"),
                          ("ksmd_cpu", "ksmd CPU (s)"),
                          ("quiet_ksm_pages", "quiet KSM pages")):
            v = rat.get({"quiet_ksm_pages": "quiet_saving"}.get(key, key))
            lines.append("%-26s %12s %12s %8s" % (
                what, s[key], m[key], "-" if v is None else "%.3f" % v))
        lines.append("%-26s %12s %12s" % ("engine CPU (s)", "-",
                                          m["engine_cpu"]))
        lines.append("memdedup counted %s broken pages, %s regions off KSM "
                     "at the end" % (m.get("cow_broken_pages_total"),
                                     m.get("cow_backoff_regions")))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--period", type=float, default=13.0)
    ap.add_argument("--rate", default="1000/20", choices=sorted(RATES))
    ap.add_argument("--smart-scan", default="0,1",
                    help="KSM's smart_scan values to run with (0,1)")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cow.py: needs root (KSM knobs, page flags)")
    with tempfile.TemporaryDirectory(prefix="memdedup-cow-") as workdir, \
            host.KsmKnobs(run=0) as ksm:
        if not ksm.active:
            sys.exit("bench/cow.py: " + ksm.reason)
        result = run(workdir, a.seconds, a.period, a.rate,
                     tuple(int(x) for x in a.smart_scan.split(",")))
    print(table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if all(t["met"] for t in targets(result)) else 1


if __name__ == "__main__":
    sys.exit(main())
