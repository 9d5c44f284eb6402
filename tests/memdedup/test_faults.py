#!/usr/bin/env python3
"""Kernel faults: the engine degrades, reports, and never lies.

- vm.max_map_count reached for real (the sysctl lowered just above QEMU's
  own VMA count, restored on every exit path): madvise fails with
  ENOMEM; the engine warns once, counts the refusals, registers fewer,
  larger ranges, and what it reports as registered is exactly what the
  kernel's smaps shows as mergeable, during the fault and after;
- the VMA budget: with vm.max_map_count lowered to 8192, 64 KiB regions
  of alternating content (candidates and not; unique and nearly unique)
  stay within half of it, with no refusal and no huge page advice (none
  fits in 64 KiB); huge page advice shares a small budget
  (vma-budget=64), longest runs first;
- EINVAL (always) and EAGAIN (the first calls only) injected through
  the memdedup object's x-madvise-fault: nothing half-registered, a
  warning, and
  recovery once the kernel accepts again;
- /proc/kpageflags unreadable (bind-mounted over in a private mount
  namespace): the exact count is absent, everything else works;
- guest RAM only read, as root and with page frame numbers hidden (QEMU
  without CAP_SYS_ADMIN, as under libvirt): where the kernel maps its
  (huge) zero page on a read fault, that memory is not counted as
  resident; where it allocates a zero-filled page, it is resident zero
  memory; either way the engine's resident and zero counts are the
  kernel's (pagemap, kpageflags).  The side the host's kernel lacks is
  skipped;
- ksmd stopped, started and stopped again, and merge_across_nodes
  flipped at runtime (KSM knobs borrowed and restored): warnings follow
  the host's state, registration is untouched, merging resumes.
Guest memory reads back byte-identical in each.
"""

import os
import random
import re
import sys

import harness
from harness import (KNOWN_CANDIDATES, KNOWN_DUP_BLOCK, KNOWN_ZERO, MiB,
                     PAGE, Skip, backend, check, digest_known, fill_known,
                     mergeable_vmas, run_pass, run_tests,
                     start_qtest_vm, thp_allowed, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)


def map_count(pid):
    with open("/proc/%d/maps" % pid) as f:
        return sum(1 for _ in f)


def mergeable_bytes(pid):
    return sum(e - s for s, e in mergeable_vmas(pid))


def registered_total(info):
    return sum(b["registered-bytes"] for b in info["backends"])


def check_truthful(vm, when):
    """What the engine reports registered is what the kernel has."""
    info = vm.qmp.cmd("query-memdedup")
    reg, mg = registered_total(info), mergeable_bytes(vm.pid)
    check(reg == mg, "%s: engine reports %d bytes registered, the kernel "
          "%d" % (when, reg, mg))
    return info


def warnings_in(vm, text):
    return len(re.findall(re.escape(text), vm.stderr()))


# 3 backends of 128 MiB as guest NUMA nodes, 64 KiB regions.  m0 and m1
# hold alternating zero and random regions (1024 candidate runs each), so
# that QEMU holds several thousand VMAs and the lowered limit stays far
# above what any other process on the host uses; m2 starts all zero (one
# range, one VMA) and then turns alternating, which needs a thousand new
# VMAs the limit does not leave.
NODES, NODE_SIZE, REGION = 3, 128 * MiB, 64 * 1024
FIRST = 1 * MiB                     # skip the legacy VGA/BIOS hole


def write_alternating(qt, rnd, node):
    """Zero and random regions in turn, in guest node @node."""
    for addr in range(max(node * NODE_SIZE, FIRST), (node + 1) * NODE_SIZE,
                      2 * REGION):
        qt.memset(addr, REGION, 0)
        qt.write(addr + REGION, rnd.randbytes(REGION))


def need_map_count_sysctl():
    if os.geteuid() != 0 or not os.access(host.MAX_MAP_COUNT, os.W_OK):
        raise Skip("not root: cannot set vm.max_map_count")


def test_max_map_count(workdir):
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    need_map_count_sysctl()
    args = ["-machine", "pc,mem-merge=off", "-m", "%dM" % (NODES * 128),
            "-object", "memdedup,id=engine,rescan-interval=3600000"]
    for n in range(NODES):
        args += ["-object", "memory-backend-ksm,id=m%d,size=128M,"
                 "region-size=64K" % n,
                 "-numa", "node,nodeid=%d,memdev=m%d" % (n, n)]
    vm, qt = start_qtest_vm(workdir, "maps", args)
    try:
        rnd = random.Random(5)
        write_alternating(qt, rnd, 0)
        write_alternating(qt, rnd, 1)
        qt.memset(2 * NODE_SIZE, NODE_SIZE, 0)
        info = run_pass(vm)
        check_truthful(vm, "before the fault")
        ranges = [b["registered-ranges"] for b in info["backends"]]
        check(min(ranges[:2]) >= 1000 and ranges[2] == 1,
              "registered ranges %s" % ranges)
        print("  QEMU holds %d VMAs, ranges %s" % (map_count(vm.pid), ranges))

        write_alternating(qt, rnd, 2)
        with host.MaxMapCount() as limit:
            limit.set(map_count(vm.pid) + 16)
            info = run_pass(vm, timeout=60)
            failures = [b["registration-failures"] for b in info["backends"]]
            check(failures[2] > 0 and failures[:2] == [0, 0],
                  "failures at the map limit: %s" % failures)
            info = check_truthful(vm, "at the map limit")
            # A failed VMA split: EAGAIN (ENOMEM on older kernels).
            check(re.search("Resource temporarily unavailable|Cannot "
                            "allocate memory", info.get("warning", "")),
                  "warning: %r" % info.get("warning"))
            print("  at the limit: %d refusals, m2 %d bytes registered in "
                  "%d ranges" % (failures[2], info["backends"][2][
                      "registered-bytes"], info["backends"][2][
                      "registered-ranges"]))
            # A second pass under the limit: smaller budget, still true.
            run_pass(vm, timeout=60)
            check_truthful(vm, "second pass at the map limit")
        check(vm.alive(), "QEMU died at the map limit")
        check(warnings_in(vm, "the kernel refused MADV_") == 1,
              "not warned exactly once:\n" + vm.stderr())

        # Limit restored: the next passes converge, in fewer ranges.
        run_pass(vm)
        info = run_pass(vm)
        check_truthful(vm, "after the limit was restored")
        b = info["backends"][2]
        check(b["registered-ranges"] <= 512,
              "m2: %d ranges after ENOMEM" % b["registered-ranges"])
        check(b["registered-bytes"] >= b["candidate-regions"] * REGION,
              "m2: %d bytes registered for %d candidate regions"
              % (b["registered-bytes"], b["candidate-regions"]))
        check(b["candidate-regions"] == 1024,
              "m2: %d candidate regions" % b["candidate-regions"])
        failures_after = b["registration-failures"]
        info = run_pass(vm)
        check(info["backends"][2]["registration-failures"] == failures_after,
              "madvise still failing after the restore")
        check("refused" not in info.get("warning", ""),
              "stale warning: %r" % info.get("warning"))
        print("  restored: m2 %d bytes in %d ranges"
              % (info["backends"][2]["registered-bytes"],
                 info["backends"][2]["registered-ranges"]))
    finally:
        vm.stop()
        qt.close()


def vma_budget_vm(workdir, name, region, engine=""):
    """A 1 GiB memory-backend-ksm of @region-sized regions under qtest."""
    return start_qtest_vm(workdir, name, [
        "-machine", "pc,memory-backend=m0,mem-merge=off", "-m", "1G",
        "-object", "memdedup,id=engine,rescan-interval=3600000" + engine,
        "-object", "memory-backend-ksm,id=m0,size=1G,region-size=%d"
        % region])


def test_vma_budget(workdir):
    """A 1 GiB backend of 64 KiB regions with vm.max_map_count lowered to
    8192.  Its first half is zero and random in turn: 4096 candidate runs,
    8192 VMAs if each were registered alone.  Its second half is random
    and nearly random (one page of 16 shared) in turn: the random ones
    are stable and unique, which asked for huge pages one region at a
    time, a VMA each, although no huge page fits in 64 KiB.  Within the
    budget (half the limit) QEMU lives through several passes, the
    kernel refuses nothing, and what is registered is what smaps
    shows."""
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    need_map_count_sysctl()
    with host.MaxMapCount() as limit:
        limit.set(8192)
        vm, qt = vma_budget_vm(workdir, "vmas", 64 * 1024)
        try:
            base = map_count(vm.pid)
            info = vm.qmp.cmd("query-memdedup")
            check(info["vma-budget"] == 4096, "budget %d at "
                  "max_map_count 8192" % info["vma-budget"])
            rnd = random.Random(8)
            shared = rnd.randbytes(PAGE)
            for addr in range(FIRST, 512 * MiB, 2 * REGION):
                qt.memset(addr, REGION, 0)
                qt.write(addr + REGION, rnd.randbytes(REGION))
            for addr in range(512 * MiB, 1 << 30, 2 * REGION):
                qt.write(addr, rnd.randbytes(2 * REGION - PAGE) + shared)
            for i in range(4):      # huge pages wait for stable regions
                info = run_pass(vm)
                b = info["backends"][0]
                check(b["vmas"] <= b["vma-share"] <= 4096,
                      "pass %d: %d VMAs, share %d" % (i, b["vmas"],
                                                      b["vma-share"]))
                check(map_count(vm.pid) <= base + 4096, "pass %d: QEMU "
                      "holds %d VMAs, %d before" % (i, map_count(vm.pid),
                                                    base))
                check_truthful(vm, "pass %d" % i)
            check(b["registration-failures"] == 0 and
                  b["thp-advice-failures"] == 0 and b["huge-regions"] == 0,
                  "refusals: %d, %d; %d huge regions" % (
                      b["registration-failures"], b["thp-advice-failures"],
                      b["huge-regions"]))
            check(b["candidate-regions"] >= 4000, "candidates %d"
                  % b["candidate-regions"])
            # Coalesced: all candidates registered, in fewer ranges.
            check(b["registered-bytes"] >= b["candidate-regions"] * REGION
                  and b["registered-ranges"] <= 2048,
                  "%d bytes in %d ranges" % (b["registered-bytes"],
                                             b["registered-ranges"]))
            hmp = vm.qmp.hmp("info memdedup")
            check("m0: %d VMAs of %d allowed (budget 4096 over all "
                  "backends)" % (b["vmas"], b["vma-share"]) in hmp, hmp)
            print("  max_map_count 8192: QEMU %d VMAs (%d before), m0 %d "
                  "of %d, %d ranges, %d huge regions"
                  % (map_count(vm.pid), base, b["vmas"], b["vma-share"],
                     b["registered-ranges"], b["huge-regions"]))
            check(vm.alive(), "QEMU died")
        finally:
            vm.stop()
            qt.close()


def test_vma_budget_thp(workdir):
    """2 MiB regions, unique and nearly unique in turn (7 % duplicated
    pages: no candidate, no THP): the unique ones want huge pages, one
    VMA each.  A budget of 64 VMAs keeps the longest runs huge and the
    block within 64 VMAs."""
    region = 2 * MiB
    with thp_allowed():
        vm, qt = vma_budget_vm(workdir, "thp", region, ",vma-budget=64")
        try:
            base = map_count(vm.pid)
            rnd = random.Random(9)
            page = rnd.randbytes(PAGE)
            for n, addr in enumerate(range(2 * MiB, 1 << 30, region)):
                data = bytearray(rnd.randbytes(region))
                if n % 2:
                    data[:36 * PAGE] = page * 36
                qt.write(addr, bytes(data))
            for i in range(4):      # THP wants stable regions
                info = run_pass(vm)
            b = info["backends"][0]
            check(b["candidate-regions"] == 0, "candidates %d"
                  % b["candidate-regions"])
            check(0 < b["huge-regions"] and b["vmas"] <= 64 and
                  b["vma-share"] == 64, "%d huge regions, %d VMAs of %d"
                  % (b["huge-regions"], b["vmas"], b["vma-share"]))
            check(map_count(vm.pid) <= base + 64, "QEMU holds %d VMAs, %d "
                  "before" % (map_count(vm.pid), base))
            check(b["thp-advice-failures"] == 0, "THP advice refused %d"
                  % b["thp-advice-failures"])
            print("  vma-budget 64: %d huge regions in %d VMAs"
                  % (b["huge-regions"], b["vmas"]))
        finally:
            vm.stop()
            qt.close()


def known_vm(workdir, name, engine_opts=""):
    """The known content in a 256 MiB guest; returns (vm, qt, digest).
    @engine_opts: more properties of the memdedup object."""
    vm, qt = start_qtest_vm(workdir, name, [
        "-machine", "pc,memory-backend=m0,mem-merge=off", "-m", "256M",
        "-object", "memdedup,id=engine,rescan-interval=3600000" + engine_opts,
        "-object", "memory-backend-ksm,id=m0,size=256M"])
    fill_known(qt, random.Random(1))
    return vm, qt, digest_known(qt)


def test_madvise_einval(workdir):
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    vm, qt, digest = known_vm(workdir, "einval",
                              ",x-madvise-fault=EINVAL")
    try:
        for _ in range(3):
            run_pass(vm)
        b = backend(vm, "m0")
        check(b["candidate-regions"] * 2 * MiB == KNOWN_CANDIDATES,
              "candidates %d" % b["candidate-regions"])
        check(b["registered-bytes"] == 0, "registered %d bytes the kernel "
              "refused" % b["registered-bytes"])
        check(b["registration-failures"] >= 3,
              "failures %d" % b["registration-failures"])
        hmp = vm.qmp.cmd("human-monitor-command",
                         **{"command-line": "info memdedup"})
        check("refused by the kernel: %d registration changes, 0 huge page "
              "advice" % b["registration-failures"] in hmp, "HMP:\n" + hmp)
        info = check_truthful(vm, "EINVAL")
        check("Invalid argument" in info.get("warning", ""),
              "warning: %r" % info.get("warning"))
        check(warnings_in(vm, "the kernel refused MADV_MERGEABLE") == 1,
              "not warned exactly once:\n" + vm.stderr())
        check(digest_known(qt) == digest, "guest memory changed")
    finally:
        vm.stop()
        qt.close()


def test_madvise_eagain_transient(workdir):
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    # Early registration and the end-of-pass policy make several calls:
    # the first 3 fail, the rest go through.
    vm, qt, digest = known_vm(workdir, "eagain",
                              ",x-madvise-fault=EAGAIN:3")
    try:
        run_pass(vm)
        b = backend(vm, "m0")
        check(b["registration-failures"] == 3,
              "failures %d" % b["registration-failures"])
        check_truthful(vm, "EAGAIN")
        # Refused regions are retried: the next pass completes the set.
        run_pass(vm)
        b = backend(vm, "m0")
        check(b["registered-bytes"] == KNOWN_CANDIDATES,
              "registered %d after the retry" % b["registered-bytes"])
        info = check_truthful(vm, "after EAGAIN")
        check("refused" not in info.get("warning", ""),
              "stale warning: %r" % info.get("warning"))
        check(digest_known(qt) == digest, "guest memory changed")
    finally:
        vm.stop()
        qt.close()


def test_kpageflags_unreadable(workdir):
    if os.geteuid() != 0:
        raise Skip("not root: no exact count to lose")
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    # QEMU in a private mount namespace in which /proc/kpageflags is
    # empty: a script standing in for the binary.
    script = os.path.join(workdir, "qemu-nokpf")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexec unshare -m sh -c 'mount --bind /dev/null "
                "/proc/kpageflags && exec \"$0\" \"$@\"' %s \"$@\"\n"
                % harness.QEMU)
    os.chmod(script, 0o755)
    real, harness.QEMU = harness.QEMU, script
    try:
        vm, qt, digest = known_vm(workdir, "nokpf")
    finally:
        harness.QEMU = real
    try:
        run_pass(vm)
        b = backend(vm, "m0")
        check("kernel-merged-pages-exact" not in b,
              "exact count %r without kpageflags"
              % b.get("kernel-merged-pages-exact"))
        check("kernel-merged-pages" in b, "smaps count missing too")
        check(b["registered-bytes"] == KNOWN_CANDIDATES,
              "registered %d" % b["registered-bytes"])
        check(b["zero-pages"] == KNOWN_ZERO[1] // PAGE,
              "zero pages %d" % b["zero-pages"])
        check(digest_known(qt) == digest, "guest memory changed")
    finally:
        vm.stop()
        qt.close()


def read_only_vm(workdir, wrapper):
    """A QEMU with 8 MiB of non-zero content (32 copies of 256 KiB) and
    4 MiB of written zeroes, scanned once, then 8 MiB read and never
    written, scanned again.  Returns (backend before, after, the kernel's
    residency of the RAM after)."""
    vm, qt = start_qtest_vm(workdir, "zeromap", [
        "-machine", "pc,memory-backend=m0,mem-merge=off", "-m", "256M",
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        "-object", "memory-backend-ksm,id=m0,size=256M,dump=off"], wrapper)
    try:
        base = harness.host_address(vm.pid, 256 * MiB)
        rng = random.Random(3)
        qt.write(16 * MiB, bytes(rng.getrandbits(8)
                                 for _ in range(256 * 1024)) * 32)
        qt.memset(32 * MiB, 4 * MiB, 0)
        run_pass(vm)
        before = backend(vm, "m0")
        check(qt.read(64 * MiB, 8 * MiB) == bytes(8 * MiB),
              "untouched RAM is not zero")
        run_pass(vm)
        after = backend(vm, "m0")
        return before, after, harness.kernel_residency(vm.pid, base,
                                                       256 * MiB)
    finally:
        vm.stop()
        qt.close()


def check_counts_are_kernels(what, b, residency):
    """The engine's resident and zero pages are the kernel's: resident
    pages by pagemap and kpageflags, zero those outside the 8 MiB of
    content."""
    resident = sum(residency)
    content = sum(residency[16 * MiB // PAGE:24 * MiB // PAGE])
    print("  %s: engine resident %d zero %d, kernel resident %d of which "
          "zero %d" % (what, b["resident-pages"], b["zero-pages"], resident,
                       resident - content))
    check(b["resident-pages"] == resident, "%s: resident %d, the kernel %d"
          % (what, b["resident-pages"], resident))
    check(b["zero-pages"] == resident - content, "%s: zero pages %d, the "
          "kernel has %d resident zero pages"
          % (what, b["zero-pages"], resident - content))


WITHOUT_SYS_ADMIN = ("setpriv", "--bounding-set", "-sys_admin",
                     "--inh-caps", "-sys_admin")


def zero_mapped_cases(workdir, kernel_allocates):
    """Run read_only_vm as root and without CAP_SYS_ADMIN, if this kernel
    behaves as @kernel_allocates says on a read fault; else Skip."""
    if os.geteuid() != 0:
        raise Skip("not root: cannot drop CAP_SYS_ADMIN or read PFNs")
    small, huge = (harness.read_fault_allocates(),
                   harness.read_fault_allocates(huge=True))
    if (small or huge) != kernel_allocates:
        raise Skip("this kernel %s on a read fault (small page %s, "
                   "THP %s)" % ("allocates a page" if small or huge else
                                "maps its zero page", small, huge))
    results = []
    for wrapper in ((), WITHOUT_SYS_ADMIN):
        what = "without CAP_SYS_ADMIN" if wrapper else "as root"
        before, after, residency = read_only_vm(workdir, wrapper)
        check(residency is not None, "the test cannot read QEMU's PFNs")
        check(before["resident-pages"] >= 12 * MiB // PAGE,
              "%s: written pages not resident: %d"
              % (what, before["resident-pages"]))
        results.append((what, before, after, residency))
    return results


def test_zero_mapped_read(workdir):
    """Where a read fault maps the kernel's zero page: memory only read
    is not resident, with or without CAP_SYS_ADMIN (PFNs hidden:
    PAGEMAP_SCAN tells the zero page apart; reading pagemap cannot)."""
    for what, before, after, residency in zero_mapped_cases(workdir, False):
        if what != "as root" and not harness.has_pagemap_scan():
            print("  %s: skipped, no PAGEMAP_SCAN on this kernel: without "
                  "PFNs the zero page cannot be told apart" % what)
            continue
        check(after["resident-pages"] == before["resident-pages"],
              "%s: read-only RAM counted as resident: %d -> %d"
              % (what, before["resident-pages"], after["resident-pages"]))
        check(after["zero-pages"] == before["zero-pages"],
              "%s: read-only RAM counted as zero pages: %d -> %d"
              % (what, before["zero-pages"], after["zero-pages"]))
        check_counts_are_kernels(what, after, residency)


def test_read_allocates(workdir):
    """Where a read fault allocates a zero-filled page (or THP): memory
    only read is resident and zero, with or without CAP_SYS_ADMIN, and
    the engine's counts are the kernel's."""
    for what, before, after, residency in zero_mapped_cases(workdir, True):
        read = sum(residency[64 * MiB // PAGE:72 * MiB // PAGE])
        check(read == 8 * MiB // PAGE, "%s: the kernel has %d of the 2048 "
              "read pages resident" % (what, read))
        check(after["zero-pages"] >= before["zero-pages"] + read,
              "%s: read pages not counted as zero: %d -> %d"
              % (what, before["zero-pages"], after["zero-pages"]))
        check_counts_are_kernels(what, after, residency)


def ksm_write(name, value):
    with open(os.path.join(host.KSM_DIR, name), "w") as f:
        f.write("%d\n" % value)


def ksm_reset_all():
    """Unmerge everything (run=2), so that merge_across_nodes may change."""
    ksm_write("run", 2)
    wait_for("KSM to unmerge everything",
             lambda: host.ksm_read("pages_shared") == 0, timeout=60)


def test_ksmd_stopped_and_knobs_flipped(workdir):
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    if os.geteuid() != 0:
        raise Skip("not root: cannot start ksmd")
    goal = 0.9 * (KNOWN_ZERO[1] + 4 * KNOWN_DUP_BLOCK) // PAGE
    with host.KsmKnobs(run=0, pages_to_scan=2000, sleep_millisecs=10,
                      use_zero_pages=0, merge_across_nodes=1) as ksm:
        if not ksm.active:
            raise Skip(ksm.reason)
        vm, qt, digest = known_vm(workdir, "ksmd")
        try:
            # Stopped: registration happens, nothing merges, a warning.
            run_pass(vm)
            info = vm.qmp.cmd("query-memdedup")
            check("ksmd is not running" in info.get("warning", ""),
                  "warning: %r" % info.get("warning"))
            check(backend(vm, "m0")["registered-bytes"] == KNOWN_CANDIDATES,
                  "registration depends on ksmd")

            # Started at runtime: merging follows, the warning goes.
            ksm_write("run", 1)
            wait_for("ksmd to merge", lambda: backend(vm, "m0").get(
                "kernel-merged-pages", 0) >= goal, timeout=60)
            info = vm.qmp.cmd("query-memdedup")
            check("warning" not in info, "warning %r" % info.get("warning"))

            # Stopped again: merged pages stay merged, the engine goes on.
            ksm_write("run", 0)
            run_pass(vm)
            info = vm.qmp.cmd("query-memdedup")
            check("ksmd is not running" in info.get("warning", ""),
                  "warning: %r" % info.get("warning"))
            merged = backend(vm, "m0").get("kernel-merged-pages", 0)
            check(merged >= goal, "stopping ksmd lost merges: %d" % merged)

            # merge_across_nodes flipped (only possible with nothing
            # merged host-wide): reported, registration kept, merging
            # resumes.
            ksm_reset_all()
            ksm_write("merge_across_nodes", 0)
            ksm_write("run", 1)
            wait_for("the flip to show", lambda: vm.qmp.cmd(
                "query-memdedup")["host-ksm"]["merge-across-nodes"] == 0)
            run_pass(vm)
            check(backend(vm, "m0")["registered-bytes"] == KNOWN_CANDIDATES,
                  "registration changed with merge_across_nodes")
            wait_for("ksmd to merge again", lambda: backend(vm, "m0").get(
                "kernel-merged-pages", 0) >= goal, timeout=60)
            check(digest_known(qt) == digest, "guest memory changed")
        finally:
            vm.stop()
            qt.close()
            # Back to merge_across_nodes=1 while nothing is shared, so
            # that KsmKnobs can restore it.
            if host.ksm_read("merge_across_nodes") != 1:
                ksm_reset_all()
                ksm_write("merge_across_nodes", 1)


if __name__ == "__main__":
    sys.exit(run_tests([
        ("faults/max-map-count", test_max_map_count),
        ("faults/vma-budget", test_vma_budget),
        ("faults/vma-budget-thp", test_vma_budget_thp),
        ("faults/madvise-einval", test_madvise_einval),
        ("faults/madvise-eagain-transient", test_madvise_eagain_transient),
        ("faults/kpageflags-unreadable", test_kpageflags_unreadable),
        ("faults/zero-mapped-read", test_zero_mapped_read),
        ("faults/read-allocates", test_read_allocates),
        ("faults/ksmd-stopped-and-knobs-flipped",
         test_ksmd_stopped_and_knobs_flipped),
    ]))
