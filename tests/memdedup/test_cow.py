#!/usr/bin/env python3
"""Copy-on-write churn: merged pages that writes break are counted, and
regions whose merged pages keep breaking go off KSM for a while.

cow/backoff     a QEMU under -accel qtest, real ksmd: duplicate regions
                (quiet), a region of one repeated page (hot), a zero
                region.  With ksmd stopped (so that nothing is merged
                again in between), QEMU writes all of one hot region,
                part of the other and all of the zero region: the
                kernel counts each write of a KSM page (/proc/vmstat
                cow_ksm); the engine counts the non-zero merged pages
                broken (cow-broken-pages, exactly those written), takes
                the fully written region off KSM (the kernel's mergeable
                VMAs no longer cover it) and keeps the others.  Written
                again while off, its time off starts again; left alone
                for that long, it is registered again; broken again, it
                goes off for twice as long; cow-threshold=0 lets it back
                at once
cow/kernel-unmerge  ksmd's run=2 unmerges every merged page (no write):
                no page counted broken, no region off, registration kept
cow/unprivileged  the same counts with QEMU as nobody (pagemap's
                exclusive bit needs no privilege)
cow/merged-kept  pages that stayed merged since the last walk are not
                read again: at 4 MiB/s (scan-rate), a pass over the
                merged regions takes less than half as long as the
                pass that hashes every page (one full pass in four),
                and both find the same duplicate and zero pages
cow/properties  bad cow-threshold and cow-backoff values are refused
                with the property's name and range
"""

import sys
import time

from harness import (AS_NOBODY, MiB, PAGE, backend, borrowed_ksm, check,
                     need_ksm_root, nobody_workdir, open_umask, run_pass,
                     run_tests, start_qtest_vm, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)
from test_accounting import merging, tagged

SIZE = 64 * MiB
REGION = 2 * MiB
REGION_PAGES = REGION // PAGE
QUIET_AT = 8 * MiB            # 2 regions, written twice (2048 pages)
HOT_AT = 24 * MiB             # 2 regions of one repeated page
ZERO_AT = 32 * MiB            # 1 region of zeroes
PART = 100                    # pages written of the second hot region
BACKOFF = 3000                # ms
MERGE_BOUND = 120
# Every page above merged: the quiet pairs, the hot pages, the zero ones.
ALL_MERGED = 2 * 2 * REGION_PAGES + 2 * REGION_PAGES + REGION_PAGES


def start_vm(workdir, name, wrapper=()):
    vm, qt = start_qtest_vm(workdir, name, [
        "-machine", "pc,memory-backend=m0,mem-merge=off",
        "-m", "%dM" % (SIZE // MiB),
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        "-object", "memory-backend-ksm,id=m0,size=%dM,"
                   "cow-backoff=%d,dump=off"
                   % (SIZE // MiB, BACKOFF)], wrapper)
    try:
        quiet = tagged(1, 2 * REGION_PAGES)
        qt.write(QUIET_AT, quiet)
        qt.write(QUIET_AT + len(quiet), quiet)
        qt.memset(HOT_AT, 2 * REGION, 0xa1)
        qt.memset(ZERO_AT, REGION, 0)
    except BaseException:
        vm.stop()
        qt.close()
        raise
    return vm, qt


def registered_at(vm, base, offset):
    """Does a mergeable VMA of the kernel cover the region at @offset?"""
    return any(s <= base + offset and base + offset + REGION <= e
               for s, e in host.mergeable_vmas(vm.pid))


def merge(ksm, vm, pages):
    """Let ksmd merge @vm's pages (at least @pages, after three full
    scans: ksm_merging_pages still counts pages unmerged by an
    unregistration until ksmd passes over them), then stop it (what it
    merged stays merged) and have the engine's walk see them."""
    scans = host.ksm_read("full_scans") + 3
    ksm.set("run", 1)
    wait_for("ksmd merging %d pages" % pages,
             lambda: host.ksm_read("full_scans") >= scans and
             merging(vm.pid) >= pages, MERGE_BOUND)
    ksm.set("run", 0)
    run_pass(vm)


def break_and_count(ksm, vm, qt):
    """Merge everything, write the hot and zero regions with ksmd
    stopped, and check the counts; returns the kernel's mapping base."""
    base = host.host_address(vm.pid, SIZE)
    run_pass(vm)                  # registers the three kinds
    merge(ksm, vm, ALL_MERGED)
    b = backend(vm, "m0")
    check(b.get("cow-broken-pages") == 0 and b["cow-backoff-regions"] == 0,
          "before any write: %r" % b)
    registered = b["registered-bytes"]
    before = host.vmstat("cow_ksm")
    qt.memset(HOT_AT, REGION, 0xb2)                 # all of hot region 0
    qt.memset(HOT_AT + REGION, PART * PAGE, 0xb2)   # part of region 1
    qt.memset(ZERO_AT, REGION, 0xc3)                # the zero region
    after = host.vmstat("cow_ksm")
    run_pass(vm)
    b = backend(vm, "m0")
    broken = REGION_PAGES + PART
    print("  cow-broken-pages %s (written: %d merged non-zero pages, %d "
          "zero); cow_ksm grew by %s; regions off %d; %r" % (
              b.get("cow-broken-pages"), broken, REGION_PAGES,
              None if before is None else after - before,
              b["cow-backoff-regions"], b["cow-regions"]))
    if before is None:
        print("  (this kernel has no cow_ksm in /proc/vmstat: the write "
              "count is the test's own)")
    else:
        check(after - before >= broken + REGION_PAGES,
              "cow_ksm grew by %d" % (after - before))
    check(b["cow-broken-pages"] == broken, "broken %r" % b)
    check(b["cow-broken-pages-total"] == broken, "total %r" % b)
    check(b["cow-backoff-regions"] == 1, "off %r" % b)
    regions = b["cow-regions"]
    check(len(regions) == 2, "regions %r" % regions)
    check(regions[0]["offset"] == HOT_AT and regions[0]["off"] and
          regions[0]["broken-pages"] == REGION_PAGES and
          regions[0]["level"] == 1 and
          0 < regions[0]["off-remaining"] <= BACKOFF, "%r" % regions[0])
    check(regions[1]["offset"] == HOT_AT + REGION and
          not regions[1]["off"] and regions[1]["broken-pages"] == PART and
          "off-remaining" not in regions[1], "%r" % regions[1])
    check(b["registered-bytes"] == registered - REGION,
          "registered %d, was %d" % (b["registered-bytes"], registered))
    check(not registered_at(vm, base, HOT_AT), "hot region 0 mergeable")
    for offset in (QUIET_AT, HOT_AT + REGION, ZERO_AT):
        check(registered_at(vm, base, offset),
              "region at %d MiB not mergeable" % (offset // MiB))
    return base


def test_backoff(workdir):
    with borrowed_ksm(run=0, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        vm, qt = start_vm(workdir, "cow")
        try:
            base = break_and_count(ksm, vm, qt)
            went_off = time.monotonic()

            # Written while off: its time off starts again.
            qt.memset(HOT_AT, REGION, 0xd4)
            time.sleep(max(0, went_off + BACKOFF / 1000 + 0.2 -
                           time.monotonic()))
            run_pass(vm)
            written = time.monotonic()
            b = backend(vm, "m0")
            check(b["cow-backoff-regions"] == 1 and
                  BACKOFF - 1000 < b["cow-regions"][0]["off-remaining"]
                  <= BACKOFF, "written while off: %r" % b["cow-regions"])
            check(not registered_at(vm, base, HOT_AT), "mergeable too soon")

            # Not written for its whole time off: registered again.
            time.sleep(max(0, written + BACKOFF / 1000 + 0.2 -
                           time.monotonic()))
            run_pass(vm)
            b = backend(vm, "m0")
            check(b["cow-backoff-regions"] == 0, "quiet: %r" % b)
            check(registered_at(vm, base, HOT_AT), "not mergeable again")

            # Merged and broken again: off for twice as long.
            merge(ksm, vm, ALL_MERGED)
            qt.memset(HOT_AT, REGION, 0xe5)
            run_pass(vm)
            again = time.monotonic()
            b = backend(vm, "m0")
            r = b["cow-regions"][0]
            print("  broken again: %r" % r)
            check(r["offset"] == HOT_AT and r["off"] and r["level"] == 2 and
                  BACKOFF < r["off-remaining"] <= 2 * BACKOFF,
                  "second time: %r" % r)
            check(b["cow-broken-pages-total"] ==
                  2 * REGION_PAGES + PART, "total %r" % b)
            time.sleep(max(0, again + BACKOFF / 1000 + 0.5 -
                           time.monotonic()))
            run_pass(vm)
            check(backend(vm, "m0")["cow-backoff-regions"] == 1,
                  "level 2 ended after one backoff")

            # Churn not judged: back at once.
            vm.qmp.cmd("qom-set", path="/objects/m0",
                       property="cow-threshold", value=0)
            wait_for("the region registered again",
                     lambda: registered_at(vm, base, HOT_AT), 30)
            run_pass(vm)
            b = backend(vm, "m0")
            check(b["cow-threshold"] == 0 and b["cow-backoff-regions"] == 0,
                  "threshold 0: %r" % b)
            info = vm.qmp.cmd("human-monitor-command",
                              **{"command-line": "info memdedup"})
            check("copy-on-write: " in info, info)
        finally:
            vm.stop()
            qt.close()


def test_kernel_unmerge(workdir):
    """ksmd's run=2 unmerges every page without a write: not churn."""
    with borrowed_ksm(run=0, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        vm, qt = start_vm(workdir, "cow-unmerge")
        try:
            run_pass(vm)
            merge(ksm, vm, ALL_MERGED)
            registered = backend(vm, "m0")["registered-bytes"]
            host.ksm_reset()                # run=2 until nothing is shared
            check(merging(vm.pid) == 0 or
                  host.smaps_merged_pages(vm.pid) == 0, "still merged")
            ksm.set("run", 1)
            run_pass(vm)
            b = backend(vm, "m0")
            print("  after run=2: cow-broken-pages %s, regions off %d"
                  % (b.get("cow-broken-pages"), b["cow-backoff-regions"]))
            check(b["cow-broken-pages"] == 0 and
                  b["cow-backoff-regions"] == 0, "churn: %r" % b)
            check(b["registered-bytes"] == registered,
                  "registered %d, was %d" % (b["registered-bytes"],
                                             registered))
        finally:
            vm.stop()
            qt.close()


def test_unprivileged(workdir):
    need_ksm_root()
    shared = nobody_workdir(workdir)
    with borrowed_ksm(run=0, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        with open_umask():
            vm, qt = start_vm(shared, "cow-nobody", wrapper=AS_NOBODY)
        try:
            check(not vm.qmp.cmd("query-memdedup")["kernel"]["pfns"],
                  "nobody sees PFNs")
            break_and_count(ksm, vm, qt)
        finally:
            vm.stop()
            qt.close()


def test_merged_kept(workdir):
    """Merged pages keep their fingerprints but in one full pass in 4."""
    with borrowed_ksm(run=0, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        vm, qt = start_vm(workdir, "cow-kept")
        try:
            run_pass(vm)
            merge(ksm, vm, ALL_MERGED)      # its pass walks them
            vm.qmp.cmd("qom-set", path="/objects/engine",
                       property="scan-rate", value=4 * MiB)
            kept, rehashed = [], []
            while not (kept and rehashed):
                info = run_pass(vm)
                b = backend(vm, "m0")
                # Pass N hashes every page when N is a multiple of 4.
                (rehashed if info["passes-completed"] % 4 == 0 else
                 kept).append((info["last-pass-duration"] / 1e9,
                               b["duplicate-pages"], b["zero-pages"],
                               b["scanned-pages"]))
            print("  pass with merged pages kept %.2f s, hashing all "
                  "%.2f s (duplicate, zero, scanned: %r, %r)"
                  % (kept[-1][0], rehashed[-1][0], kept[-1][1:],
                     rehashed[-1][1:]))
            check(kept[-1][0] * 2 < rehashed[-1][0],
                  "kept %.2f s, all %.2f s" % (kept[-1][0],
                                               rehashed[-1][0]))
            check(kept[-1][1:] == rehashed[-1][1:],
                  "counts differ: %r %r" % (kept[-1], rehashed[-1]))
            check(rehashed[-1][1] >= 2 * 2 * REGION_PAGES,
                  "duplicates %r" % (rehashed[-1],))
        finally:
            vm.stop()
            qt.close()


def test_properties(workdir):
    vm, qt = start_qtest_vm(workdir, "cow-props", [
        "-machine", "pc,memory-backend=m0,mem-merge=off", "-m", "16M",
        "-object", "memory-backend-ksm,id=m0,size=16M,dedup-policy=estimate"])
    try:
        b = backend(vm, "m0")
        check(b["cow-threshold"] == 50 and b["cow-backoff"] == 60000,
              "defaults %r" % b)
        for prop, value, words in (
                ("cow-threshold", 101, "between 0 (off) and 100, not 101"),
                ("cow-backoff", 50, "between 100 and 86400000 milliseconds"),
                ("cow-backoff", 86400001, "not 86400001")):
            try:
                vm.qmp.cmd("qom-set", path="/objects/m0", property=prop,
                           value=value)
            except Exception as e:      # qmp.QMPError
                check(prop in str(e) and words in str(e), str(e))
            else:
                raise AssertionError("%s=%d accepted" % (prop, value))
        vm.qmp.cmd("qom-set", path="/objects/m0", property="cow-backoff",
                   value=100)
        check(backend(vm, "m0")["cow-backoff"] == 100, "not set")
    finally:
        vm.stop()
        qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([("cow/backoff", test_backoff),
                        ("cow/kernel-unmerge", test_kernel_unmerge),
                        ("cow/unprivileged", test_unprivileged),
    ("cow/merged-kept", test_merged_kept),
                        ("cow/properties", test_properties)]))
