#!/usr/bin/env python3
"""After a live migration, how soon does the destination get back the
source's KSM saving?  memdedup (with and without migrate-hints) against
stock QEMU (memory-backend-ram, merge=on), same host, same ksmd settings,
one run.

A source VM (-accel qtest, 1 GiB: 10 % zero, 20 % duplicated in the VM,
the rest unique) is merged by ksmd, migrated over a unix socket to a
fresh destination, and the destination's merged pages (smaps KSM lines)
are sampled from the end of the migration until they reach 90 % of the
duplicated block's pages (pages sent as zero are never allocated on the
destination).  Stock's destination is mergeable while RAM arrives, so
ksmd may merge during the transfer; memdedup's registers its own choice
at the end, or, with hints, the source's choice when the migration
starts.  Times are from the end of the migration and from its start.

    bench/migration.py [--seconds N] [--pages-to-scan N]
"""

import argparse
import functools
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts", "memdedup"))
import host  # noqa: E402  (scripts/memdedup/)
from host import smaps_merged_pages  # noqa: E402
from qtestvm import MiB, PAGE, run_pass  # noqa: E402
import qtestvm  # noqa: E402

start_qtest_vm = functools.partial(qtestvm.start_qtest_vm, qtestvm.QEMU)

SIZE = 1024 * MiB
ZERO = (0, 100 * MiB)
DUP = (100 * MiB, 100 * MiB)       # a 100 MiB block written twice
UNIQUE = (300 * MiB, 700 * MiB)


def args_for(config, incoming=None):
    if config == "stock":
        obj = "memory-backend-ram,id=m0,size=1G,merge=on"
        args = ["-object", obj]
    else:
        hints = ",migrate-hints=on" if config == "memdedup+hints" else ""
        args = ["-object", "memdedup,id=engine" + hints,
                "-object", "memory-backend-ksm,id=m0,size=1G"]
    args = ["-machine", "pc,memory-backend=m0", "-m", "1G"] + args
    if incoming:
        args += ["-incoming", "unix:" + incoming]
    return args


def fill(qt):
    rnd = random.Random(5)
    qt.memset(ZERO[0] + 2 * MiB, ZERO[1] - 2 * MiB, 0)
    block = rnd.randbytes(DUP[1] // 2)
    qt.write(DUP[0], block)
    qt.write(DUP[0] + DUP[1] // 2, block)
    for off in range(0, UNIQUE[1], 64 * MiB):
        qt.write(UNIQUE[0] + off, os.urandom(min(64 * MiB, UNIQUE[1] - off)))


def wait_merged(pid, goal, limit):
    t0 = time.monotonic()
    merged = 0
    while time.monotonic() - t0 < limit:
        merged = smaps_merged_pages(pid)
        if merged >= goal:
            return time.monotonic() - t0, merged
        time.sleep(0.25)
    return None, merged


def run(config, limit):
    with tempfile.TemporaryDirectory(prefix="memdedup-bench-") as d:
        sock = os.path.join(d, "mig.sock")
        src = dst = sqt = dqt = None
        try:
            src, sqt = start_qtest_vm(d, "src", args_for(config))
            fill(sqt)
            if config != "stock":
                run_pass(src)
            # The source converges first: everything it can merge.
            goal = (DUP[1] // 2 + (ZERO[1] - 2 * MiB)) // PAGE * 0.9
            t_src, src_merged = wait_merged(src.pid, goal, limit)
            dst, dqt = start_qtest_vm(d, "dst", args_for(config, sock))
            t_start = time.monotonic()
            src.qmp.cmd("migrate", uri="unix:" + sock)
            while src.qmp.cmd("query-migrate")["status"] not in (
                    "completed", "failed", "cancelled"):
                time.sleep(0.05)
            t_mig = time.monotonic() - t_start
            # Zero pages are not allocated on the destination: the goal is
            # 90 % of the duplicated block's pages (both copies).
            dst_goal = 0.9 * DUP[1] // PAGE
            t_dst, dst_merged = wait_merged(dst.pid, dst_goal, limit)
            return t_src, src_merged, t_mig, t_dst, dst_merged
        finally:
            for vm, qt in ((dst, dqt), (src, sqt)):
                if vm:
                    vm.stop()
                if qt:
                    qt.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=120,
                    help="bound for each convergence wait")
    ap.add_argument("--pages-to-scan", type=int, default=1000)
    a = ap.parse_args()
    rows = []
    with host.KsmKnobs(run=1, pages_to_scan=a.pages_to_scan,
                      sleep_millisecs=20) as ksm:
        if not ksm.active:
            sys.exit("bench/migration.py: %s" % ksm.reason)
        for config in ("stock", "memdedup", "memdedup+hints"):
            rows.append((config,) + run(config, a.seconds))
    fmt = "%-16s %10s %11s %10s %15s %15s %11s"
    print(fmt % ("config", "src t90 s", "src merged", "migrate s",
                 "dst t90 s (end)", "dst t90 (start)", "dst merged"))
    for config, ts, ms, tm, td, md in rows:
        print(fmt % (config, "%.1f" % ts if ts else "-", ms, "%.1f" % tm,
                     "%.1f" % td if td is not None else "-",
                     "%.1f" % (tm + td) if td is not None else "-", md))
    # From the start of the migration: with hints the destination may be
    # done the moment the migration completes, as stock may be at a fast
    # ksmd rate, so the time after completion alone can be 0 for both.
    stock = rows[0]
    for config, _, _, tm, td, _ in rows[1:]:
        if td is None:
            print("%s: destination did not reach 90%% in %d s"
                  % (config, a.seconds))
        elif stock[4] is None:
            print("%s: destination reached 90%% %.1f s after the migration "
                  "started; stock did not within %d s after it ended"
                  % (config, tm + td, a.seconds))
        else:
            print("%s: destination time to 90%% from migration start = "
                  "%.2f x stock" % (config, (tm + td) / (stock[3] + stock[4])))
    print("ksmd: pages_to_scan=%d sleep_millisecs=20" % a.pages_to_scan)


if __name__ == "__main__":
    main()
