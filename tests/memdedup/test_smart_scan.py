#!/usr/bin/env python3
"""Pairs that KSM's smart scan keeps apart, and how memdedup brings them
together.

With /sys/kernel/mm/ksm/smart_scan on (Linux 6.7 and later), ksmd
settles a page that has not merged into a visit every 9 full scans, in a
rhythm set by the scan that first saw it; two copies of a content seen
by ksmd far enough apart are never visited in the same scan, and never
merge.  Two QEMUs (-accel qtest, policy all: all guest RAM registered,
as stock QEMU does) get the same schedule: 18 contents written once,
then, after ksmd's rhythm set in, a second copy of each, one per full
scan.  In the QEMU with x-rearm=off, some pairs stay unmerged (the
kernel's side: where no pair is kept apart, that is printed); in the one
with the engine's default, every pair merges, through regions taken off
KSM and registered again (rearmed-regions), and the guest memory reads
back unchanged.  The kernel's own view (pagemap + kpageflags) says
what merged.
"""

import os
import random
import sys
import time

from harness import (MiB, PAGE, Skip, backend, check, host_address,
                     need_ksm_root, run_pass, run_tests, start_qtest_vm,
                     wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

SIZE = 256 * MiB
REGION = 2 * MiB
PAIRS = 18
FIRST = 64 * MiB                  # first copies: FIRST + k * REGION
SECOND = 128 * MiB                # second copies: SECOND + k * REGION
SETTLE_SCANS = 30                 # first copies in their 9-scan rhythm
KEPT_APART_SCANS = 120            # scans after which a pair never meets
MERGE_BOUND = 180                 # seconds for the rearming side


def full_scans():
    with open(os.path.join(host.KSM_DIR, "full_scans")) as f:
        return int(f.read())


def wait_scans(n, timeout=60):
    """Wait until ksmd completed @n more full scans; returns the count."""
    target = full_scans() + n
    deadline = time.monotonic() + timeout
    while full_scans() < target:
        if time.monotonic() > deadline:
            raise AssertionError("ksmd did not complete %d full scans in "
                                 "%d s" % (n, timeout))
        time.sleep(0.005)
    return full_scans()


def content(vm, k):
    """Pair @k's content in QEMU number @vm: no two QEMUs share one, or
    the first copies would merge across them at once."""
    return random.Random(1000 * (vm + 1) + k).randbytes(REGION)


def merged_pairs(vm, base):
    """Pairs whose second copy is (almost) all KSM pages, by kpageflags:
    at least 15 in 16 (a region with more than one in 16 of its
    duplicates unmerged is registered again)."""
    flags = host.page_flags(vm.pid, base + SECOND, PAIRS * REGION)
    if flags is None:
        raise Skip("page flags cannot be read")
    per = REGION // PAGE
    out = []
    for k in range(PAIRS):
        ksm = sum(flags.get(k * per + i, 0) >> host.KPF_KSM & 1
                  for i in range(per))
        out.append(ksm * 16 >= per * 15)
    return out


def test_pairs_kept_apart(workdir):
    need_ksm_root()
    if not os.path.exists(os.path.join(host.KSM_DIR, "smart_scan")):
        raise Skip("this kernel has no KSM smart scan (before Linux 6.7): "
                   "ksmd visits every page in every scan, no pair is kept "
                   "apart")
    with host.KsmKnobs(run=1, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0, smart_scan=1) as ksm:
        if not ksm.active:
            raise Skip(ksm.reason)
        vms = []
        try:
            for name, opts in (("kernel", ",x-rearm=off"), ("memdedup", "")):
                vm, qt = start_qtest_vm(workdir, name, [
                    "-machine", "pc,memory-backend=m0,mem-merge=off",
                    "-m", "%dM" % (SIZE // MiB),
                    "-object", "memdedup,id=engine,rescan-interval=3600000"
                    + opts,
                    "-object", "memory-backend-ksm,id=m0,size=%dM,"
                    "dedup-policy=all" % (SIZE // MiB)])
                vms.append((vm, qt, host_address(vm.pid, SIZE)))
            for vm, _, _ in vms:
                run_pass(vm)
            for k in range(PAIRS):
                for v, (_, qt, _) in enumerate(vms):
                    qt.write(FIRST + k * REGION, content(v, k))
            wait_scans(SETTLE_SCANS)
            # One second copy per full scan: each pair's copies are first
            # seen by ksmd a different number of scans apart.
            for k in range(PAIRS):
                wait_scans(1)
                for v, (_, qt, _) in enumerate(vms):
                    qt.write(SECOND + k * REGION, content(v, k))
            written = full_scans()
            for vm, _, _ in vms:
                run_pass(vm)

            (kvm, kqt, kbase), (mvm, mqt, mbase) = vms
            wait_for("every pair merged with the engine rearming",
                     lambda: all(merged_pairs(mvm, mbase)), MERGE_BOUND)
            m = backend(mvm, "m0")
            print("  memdedup: all %d pairs merged, %d regions registered "
                  "again, %d full scans after the writes" % (
                      PAIRS, m["rearmed-regions"],
                      full_scans() - written))
            check(m["registered-bytes"] == SIZE,
                  "policy all left %d bytes registered" %
                  m["registered-bytes"])
            for k in range(PAIRS):
                check(mqt.read(SECOND + k * REGION, REGION) ==
                      content(1, k) and
                      mqt.read(FIRST + k * REGION, REGION) == content(1, k),
                      "pair %d changed" % k)

            # The kernel alone: given as many scans, some pairs never met.
            left = KEPT_APART_SCANS - (full_scans() - written)
            if left > 0:
                wait_scans(left, timeout=120)
            apart = [k for k, ok in enumerate(merged_pairs(kvm, kbase))
                     if not ok]
            k_info = backend(kvm, "m0")
            check(k_info["rearmed-regions"] == 0,
                  "x-rearm=off registered %d regions again" %
                  k_info["rearmed-regions"])
            if apart:
                print("  kernel alone: %d of %d pairs never merged in %d "
                      "full scans (pairs %s)" % (
                          len(apart), PAIRS, full_scans() - written, apart))
                check(m["rearmed-regions"] > 0,
                      "pairs were kept apart but none registered again")
            else:
                print("  kernel alone: this host's ksmd merged every pair "
                      "(its smart scan kept none apart): that side is not "
                      "shown here")
        finally:
            for vm, qt, _ in vms:
                vm.stop()
                qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("smart-scan/pairs-kept-apart", test_pairs_kept_apart),
    ]))
