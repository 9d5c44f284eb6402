#!/usr/bin/env python3
"""Real KSM: the kernel merges what memdedup registers, and only that.

QEMU runs under -accel qtest with a memory-backend-ksm whose content the
test writes: zero, 4-way duplicated and random regions.  With ksmd
running (knobs set for the test and restored on every exit path), the
kernel-merged count must reach 90% of the duplicate and zero pages
within a bound, the unique regions must stay unregistered, guest memory
must read back byte-identical, and scanning must not grow RSS.
"""

import os
import random
import re
import sys
import time

from harness import (KNOWN_DUP_AT, KNOWN_DUP_BLOCK, KNOWN_UNIQUE,
                     KNOWN_ZERO, MiB, PAGE, Skip, backend, check,
                     digest_known, fill_known, fingerprint_slack,
                     host_address, mergeable_vmas, need_ksm_root, qmp,
                     rss_bytes, run_pass, run_tests, smaps_merged_pages,
                     smaps_vmas, start_qtest_vm, thp_allowed, wait_for,
                     write_meminfo)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

SIZE = 256 * MiB
ZERO, UNIQUE = KNOWN_ZERO, KNOWN_UNIQUE
DUP_BLOCK = KNOWN_DUP_BLOCK
MERGE_BOUND = 60                      # seconds for ksmd to merge


def test_kernel_merges_registered(workdir):
    need_ksm_root()
    with host.KsmKnobs(run=1, pages_to_scan=2000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        if not ksm.active:
            raise Skip(ksm.reason)
        # The engine reads MemAvailable from this file, so that the test
        # can make the host look short of memory.
        meminfo = os.path.join(workdir, "meminfo")
        write_meminfo(meminfo, None)
        trace = os.path.join(workdir, "view.trace")
        # mem-merge=off keeps QEMU's firmware blocks out of the count.
        vm, qt = start_qtest_vm(workdir, "ksm", [
            "-machine", "pc,memory-backend=m0,mem-merge=off",
            "-m", "%dM" % (SIZE // MiB),
            "-object", "memdedup,id=engine,rescan-interval=3600000,"
            "x-meminfo=" + meminfo,
            "-object", "memory-backend-ksm,id=m0,size=%dM" % (SIZE // MiB),
            "-trace", "enable=memdedup_kernel_view,file=%s" % trace])
        try:
            fill_known(qt, random.Random(1))
            before = digest_known(qt)
            run_pass(vm)
            b = backend(vm, "m0")
            dup_pages = 3 * DUP_BLOCK // PAGE + DUP_BLOCK // PAGE
            zero_pages = ZERO[1] // PAGE
            check(b["zero-pages"] == zero_pages, "zero pages %d" % b["zero-pages"])
            # Fingerprints may collide by accident: a unique page can be
            # counted as a duplicate, never the reverse.
            distinct = DUP_BLOCK // PAGE + UNIQUE[1] // PAGE
            extra = b["duplicate-pages"] - dup_pages
            check(0 <= extra <= fingerprint_slack(distinct),
                  "duplicate pages %d, want %d" % (b["duplicate-pages"],
                                                   dup_pages))
            check(b["duplicate-pages"] + b["unique-pages"]
                  == dup_pages + UNIQUE[1] // PAGE,
                  "unique pages %d" % b["unique-pages"])
            want = ZERO[1] + 4 * DUP_BLOCK
            check(b["registered-bytes"] == want,
                  "registered %d, want %d" % (b["registered-bytes"], want))

            # The kernel sees exactly that registered, and merges it.
            mg = sum(e - s for s, e in mergeable_vmas(vm.pid))
            check(mg == want, "kernel mergeable %d, want %d" % (mg, want))
            goal = 0.9 * (dup_pages + zero_pages)
            deadline = time.monotonic() + MERGE_BOUND
            merged = 0
            while time.monotonic() < deadline:
                merged = backend(vm, "m0").get("kernel-merged-pages", 0)
                if merged >= goal:
                    break
                time.sleep(0.5)
            print("  merged %d of %d candidate pages in %.1f s" % (
                merged, dup_pages + zero_pages,
                MERGE_BOUND - (deadline - time.monotonic())))
            check(merged >= goal, "kernel merged %d pages, want >= %d"
                  % (merged, goal))
            info = vm.qmp.cmd("query-memdedup")
            check(info["process-ksm"]["merging-pages"] >= goal,
                  "ksm_stat merging_pages %s" % info["process-ksm"])
            exact = backend(vm, "m0").get("kernel-merged-pages-exact")
            if exact is not None:
                run_pass(vm)
                exact = backend(vm, "m0")["kernel-merged-pages-exact"]
                check(exact >= goal, "kpageflags KSM pages %d" % exact)

            check_quiet_view(vm, qt, trace)

            # Unique memory was never registered, so never merged.
            b = backend(vm, "m0")
            check(b["registered-bytes"] == want, "registration drifted")
            check(digest_known(qt) == before, "guest memory changed")

            check_admission(vm, meminfo, want)
            check(digest_known(qt) == before, "guest memory changed by unmerging")
        finally:
            vm.stop()
            qt.close()


def view_reads(trace):
    """(smaps reads, refreshes spared) of the kernel view so far."""
    with open(trace) as f:
        text = f.read()
    return (len(re.findall(r"memdedup_kernel_view smaps read 1", text)),
            len(re.findall(r"memdedup_kernel_view smaps read 0", text)))


def read_ages(trace):
    """The age limits (ms) the smaps reads so far set for the next."""
    with open(trace) as f:
        return re.findall(r"memdedup_kernel_view smaps read 1 .*"
                          r"read again at (\d+) ms", f.read())


def check_quiet_view(vm, qt, trace):
    """Nothing merges or unmerges: a monitor polling twice a second has
    the kernel view refreshed without reading smaps, and it stays what
    smaps says.  A page the guest writes is seen once ksmd notices."""
    # ksmd done: merging-pages unchanged for 3 s.
    last = [None, time.monotonic()]

    def settled():
        n = vm.qmp.cmd("query-memdedup")["process-ksm"]["merging-pages"]
        if n != last[0]:
            last[0], last[1] = n, time.monotonic()
        return time.monotonic() - last[1] >= 3
    wait_for("ksmd to finish merging", settled, timeout=60)
    reads0, spared0 = view_reads(trace)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 12:
        vm.qmp.cmd("query-memdedup")
        time.sleep(0.5)
    reads, spared = view_reads(trace)
    print("  12 s of polling, nothing merging: %d smaps reads, %d spared"
          % (reads - reads0, spared - spared0))
    # Stale after 5 s, so refreshed twice; smaps is due again 16 s after
    # its last read, which may fall in the window once.
    check(spared - spared0 >= 1 and reads - reads0 <= 1 and
          reads + spared - reads0 - spared0 >= 2,
          "%d smaps reads and %d spared in 12 quiet seconds"
          % (reads - reads0, spared - spared0))
    b = backend(vm, "m0")
    check(b["kernel-merged-pages"] == smaps_merged_pages(vm.pid),
          "view %d, smaps %d" % (b["kernel-merged-pages"],
                                 smaps_merged_pages(vm.pid)))

    # A read at the age limit that finds nothing changed doubles the
    # limit (16 s, 32 s, ... 128 s): quiet memory is read ever less often.
    def backed_off():
        vm.qmp.cmd("query-memdedup")
        return any(int(age) >= 32000 for age in read_ages(trace))
    wait_for("an smaps read to double the age limit", backed_off,
             timeout=40)
    print("  smaps read again at: %s ms" % read_ages(trace)[-4:])
    reads = view_reads(trace)[0]

    # The guest writes one merged page (a copy of the duplicate block):
    # ksmd discounts it at its next scan, which moves ksm_stat, and once
    # it stops moving smaps is read again (refreshes every 5 s while
    # polled).
    addr = KNOWN_DUP_AT
    page = qt.read(addr, PAGE)
    qt.write(addr, bytes(b ^ 0xff for b in page))
    wait_for("the view to see the written page", lambda: (
        backend(vm, "m0")["kernel-merged-pages"] ==
        smaps_merged_pages(vm.pid) and view_reads(trace)[0] > reads),
        timeout=30)
    qt.write(addr, page)


def qom_set(vm, prop, value):
    vm.qmp.cmd("qom-set", path="/objects/m0", property=prop, value=value)


def check_admission(vm, meminfo, registered):
    """Unmerging must fit in MemAvailable unless forced."""
    write_meminfo(meminfo, 1024)       # 1 MiB available: nothing fits
    merged_mib = backend(vm, "m0")["kernel-merged-pages"] * PAGE / MiB
    try:
        qom_set(vm, "dedup-policy", "off")
        raise AssertionError("policy off accepted with no memory to unmerge")
    except qmp.QMPError as e:
        check("force-unmerge" in str(e), "unclear refusal: %s" % e)
        # The amount at stake: what the kernel merged (ksmd may still be
        # merging, and the engine's view is refreshed every second).
        m = re.search(r"unmerging ([0-9.]+) MiB", str(e))
        check(m and abs(float(m.group(1)) - merged_mib) <= 0.1 *
              merged_mib + 1, "refusal %r, %.1f MiB merged" % (str(e),
                                                              merged_mib))
        print("  refused: %s" % e)
    check(backend(vm, "m0")["policy"] == "targeted", "policy changed anyway")

    # zero-only drops the merged duplicate regions: refused and counted,
    # they stay registered.
    qom_set(vm, "dedup-policy", "zero-only")
    b = wait_for("an unmerge refusal",
                 lambda: (lambda b: b if b["unmerge-refusals"] >= 1 else None)(
                     backend(vm, "m0")))
    check(b["registered-bytes"] == registered,
          "registered %d after a refusal" % b["registered-bytes"])

    # Forced: the duplicate regions go, the zero regions stay.
    qom_set(vm, "force-unmerge", True)
    wait_for("unregistration of the duplicate regions",
             lambda: backend(vm, "m0")["registered-bytes"] == ZERO[1])
    qom_set(vm, "dedup-policy", "off")
    wait_for("unregistration of everything",
             lambda: backend(vm, "m0")["registered-bytes"] == 0)
    wait_for("the kernel to report nothing merged",
             lambda: backend(vm, "m0").get("kernel-merged-pages") == 0)
    write_meminfo(meminfo, None)


def test_scan_rate_is_honoured(workdir):
    # 64 MiB resident at 16 MiB/s: a pass takes about 4 s.
    vm, qt = start_qtest_vm(workdir, "rate", [
        "-machine", "pc,memory-backend=m0", "-m", "256M",
        "-object", "memdedup,id=engine,rescan-interval=3600000,"
                   "scan-rate=16M",
        "-object", "memory-backend-ksm,id=m0,size=256M,dedup-policy=estimate"])
    try:
        qt.write(32 * MiB, random.Random(3).randbytes(64 * MiB))
        run_pass(vm)
        info = vm.qmp.cmd("query-memdedup")
        check(backend(vm, "m0")["scanned-pages"] == 64 * MiB // PAGE,
              "scanned %d" % backend(vm, "m0")["scanned-pages"])
        check(info["last-pass-duration"] >= 3.5e9,
              "pass took %d ns at 16 MiB/s" % info["last-pass-duration"])
        slow = info["last-pass-duration"]
        check(info["scanner-cpu-time"] > 0, "no scanner CPU time")
        # Raising the budget at runtime takes effect for the next pass.
        vm.qmp.cmd("qom-set", path="/objects/engine", property="scan-rate",
                   value=1 << 30)
        run_pass(vm)
        info = vm.qmp.cmd("query-memdedup")
        check(info["scan-rate"] == 1 << 30, "scan-rate %d" % info["scan-rate"])
        # 64 MiB at 1 GiB/s: a small fraction of the rate-limited pass
        # (>= 3.5 s), held to half of it so that no machine is too slow.
        check(info["last-pass-duration"] < slow / 2,
              "pass took %d ns at 1 GiB/s, %d at 16 MiB/s"
              % (info["last-pass-duration"], slow))
    finally:
        vm.stop()
        qt.close()


def test_scan_does_not_grow_rss(workdir):
    # 1 GiB of guest RAM, 64 MiB of it touched: scanning the rest must
    # not fault it in.
    vm, qt = start_qtest_vm(workdir, "rss", [
        "-machine", "pc,memory-backend=m0", "-m", "1G",
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        "-object", "memory-backend-ksm,id=m0,size=1G,dedup-policy=estimate"])
    try:
        qt.write(64 * MiB, random.Random(2).randbytes(64 * MiB))
        run_pass(vm)
        rss0 = rss_bytes(vm.pid)
        for _ in range(3):
            run_pass(vm)
        rss1 = rss_bytes(vm.pid)
        b = backend(vm, "m0")
        check(b["resident-pages"] < 20000,
              "resident pages %d" % b["resident-pages"])
        check(rss1 - rss0 < 8 * MiB,
              "RSS grew by %d bytes while scanning" % (rss1 - rss0))
        # QEMU madvises all RAM MERGEABLE when the machine's mem-merge is
        # on (the default); the backend undoes that for its 1 GiB.  Only
        # the firmware blocks (a few MiB) remain mergeable.
        mg = sum(e - s for s, e in mergeable_vmas(vm.pid))
        check(mg < 16 * MiB, "%d bytes mergeable with estimate" % mg)
        info = vm.qmp.cmd("query-memdedup")
        # Metadata: at most 8 bytes per guest page.
        check(info["metadata-bytes"] <= 8 * (1 << 30) // PAGE,
              "metadata %d bytes" % info["metadata-bytes"])
    finally:
        vm.stop()
        qt.close()


# MEMDEDUP_COLLAPSE_AFTER_SCANS: ksmd full scans, after the engine's first
# registration, before unique regions are collapsed into huge pages.
COLLAPSE_AFTER_SCANS = 3
UNIQUE_REGIONS = UNIQUE[1] // (2 * MiB)


def anon_huge_bytes(pid, start, end):
    """AnonHugePages of the VMAs inside [start, end) (kernel's view)."""
    return sum(int(fields.get("AnonHugePages", "0 kB").split()[0]) * 1024
               for s, e, fields in smaps_vmas(pid)
               if s >= start and e <= end)


def start_thp_vm(workdir, name, trace):
    """A 256 MiB qtest VM with the known content, passes on request only,
    tracing the kernel view to @trace."""
    vm, qt = start_qtest_vm(workdir, name, [
        "-machine", "pc,memory-backend=m0,mem-merge=off",
        "-m", "%dM" % (SIZE // MiB),
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        # dump=off: a flag no neighbour has, so the RAM is one VMA.
        "-object", "memory-backend-ksm,id=m0,size=%dM,dump=off"
                   % (SIZE // MiB),
        "-trace", "enable=memdedup_kernel_view,file=%s" % trace])
    try:
        base = host_address(vm.pid, SIZE)
        fill_known(qt, random.Random(2))
    except BaseException:
        try:
            vm.stop()
        finally:
            qt.close()
        raise
    return vm, qt, base


def check_unique_huge(vm, base):
    """Every stable unique region is a huge page again, as the kernel has
    it (AnonHugePages), and nothing else is."""
    b = backend(vm, "m0")
    check(b["huge-regions"] == UNIQUE_REGIONS,
          "huge regions %d, want %d" % (b["huge-regions"], UNIQUE_REGIONS))
    huge = anon_huge_bytes(vm.pid, base + UNIQUE[0],
                           base + UNIQUE[0] + UNIQUE[1])
    total = anon_huge_bytes(vm.pid, base, base + SIZE)
    print("  AnonHugePages: %d MiB in the unique range, %d MiB in all"
          % (huge // MiB, total // MiB))
    check(huge >= 0.9 * UNIQUE[1], "unique range: %d MiB on huge pages"
          % (huge // MiB))
    check(total == huge, "huge pages outside the unique range: %d MiB"
          % ((total - huge) // MiB))


def test_collapse_waits_for_ksmd(workdir):
    """Unique regions get huge pages back (MADV_COLLAPSE copies them) only
    once ksmd has had its full scans over what was registered: the copying
    must not compete with ksmd while it merges."""
    need_ksm_root()
    # use_zero_pages=0: zero pages merge as KSM pages, counted as such.
    with thp_allowed(run=1, pages_to_scan=1000, sleep_millisecs=100,
                     use_zero_pages=0):
        trace = os.path.join(workdir, "collapse.trace")
        vm, qt, base = start_thp_vm(workdir, "collapse", trace)
        try:
            before = digest_known(qt)
            scans0 = host.ksm_read("full_scans")
            t0 = time.monotonic()
            reads0, spared0 = view_reads(trace)
            candidates = (ZERO[1] + 4 * DUP_BLOCK) // PAGE
            held = 0
            deadline = time.monotonic() + 90
            while True:
                run_pass(vm)
                scans = host.ksm_read("full_scans")
                b = backend(vm, "m0")
                merged = b.get("kernel-merged-pages", 0)
                if scans < scans0 + COLLAPSE_AFTER_SCANS:
                    # Read after the pass decided: fewer scans then.
                    check(b["huge-regions"] == 0, "collapsed after %d of "
                          "ksmd's full scans" % (scans - scans0))
                    held += 1
                elif b["huge-regions"]:
                    break
                check(time.monotonic() < deadline,
                      "no collapse in 90 s (%d full scans)"
                      % (scans - scans0))
                time.sleep(0.5)
            print("  held for %d passes; collapsed after %d full scans "
                  "with %d of %d candidate pages merged"
                  % (held, scans - scans0, merged, candidates))
            # Three passes make a region stable: the wait must have
            # mattered, and ksmd must have merged before the copying.
            check(held >= 3, "collapse held back for %d passes" % held)
            check(merged >= 0.9 * candidates, "only %d pages merged at "
                  "the collapse" % merged)
            # Every pass refreshed the view while ksmd merged, but one
            # block's view follows ksm_stat: smaps is read until two reads
            # agree on what is merged outside the block, then once per
            # 16 s.
            reads, spared = view_reads(trace)
            reads, spared = reads - reads0, spared - spared0
            elapsed = time.monotonic() - t0
            print("  kernel view over %.0f s of merging: %d smaps reads, "
                  "%d from ksm_stat" % (elapsed, reads, spared))
            # Each held pass refreshed it once, by a read or from
            # ksm_stat (the reads fall in those passes too).
            check(reads <= 3 + elapsed // 16 and reads + spared >= held,
                  "%d smaps reads, %d spared in %.0f s, %d passes held"
                  % (reads, spared, elapsed, held))
            wait_for("the view to equal smaps", lambda: backend(
                vm, "m0")["kernel-merged-pages"] ==
                smaps_merged_pages(vm.pid), timeout=20)
            check_unique_huge(vm, base)
            check(digest_known(qt) == before, "guest memory changed")
        finally:
            vm.stop()
            qt.close()


def test_collapse_without_ksmd(workdir):
    """ksmd stopped: stable unique regions are collapsed at once (after
    the passes that make them stable), since nothing competes."""
    need_ksm_root()
    with thp_allowed(run=0):
        vm, qt, base = start_thp_vm(workdir, "nocollapse",
                                    os.path.join(workdir, "nc.trace"))
        try:
            before = digest_known(qt)
            for _ in range(3):
                run_pass(vm)
            check_unique_huge(vm, base)
            check(backend(vm, "m0")["registered-bytes"]
                  == ZERO[1] + 4 * DUP_BLOCK, "registration")
            check(digest_known(qt) == before, "guest memory changed")
        finally:
            vm.stop()
            qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("ksm/kernel-merges-registered", test_kernel_merges_registered),
        ("ksm/scan-does-not-grow-rss", test_scan_does_not_grow_rss),
        ("ksm/scan-rate-is-honoured", test_scan_rate_is_honoured),
        ("ksm/collapse-waits-for-ksmd", test_collapse_waits_for_ksmd),
        ("ksm/collapse-without-ksmd", test_collapse_without_ksmd),
    ]))
