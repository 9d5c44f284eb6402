#!/usr/bin/env python3
"""Unmerge admission with real merged memory (real KSM):

- three adjacent duplicate regions registered as one VMA; the middle one
  stops qualifying (a higher duplicate-threshold) while MemAvailable
  looks low: its merged pages count although its VMA is larger than
  the region, so it is refused, not unmerged, and unregistered once the
  memory is there;
- adoption at runtime of a memory-backend-ram whose pages mem-merge let
  KSM merge: refused while MemAvailable looks low (the object is not
  created, nothing unmerged), admitted once the memory is there;
- a real memory cgroup: the test creates a child of its own cgroup,
  moves QEMU into it and sets a limit below what unmerging needs; then
  policy off is refused with the cgroup named, and QEMU lives.  The
  test removes the cgroup on every exit path and changes no cgroup it
  did not create.
"""

import contextlib
import os
import random
import sys
import time

from harness import (MiB, PAGE, Skip, backend, borrowed_ksm, check,
                     digest_known, fill_known, host_address, mergeable_vmas,
                     qmp, run_pass, run_tests, smaps_merged_pages,
                     start_qtest_vm, wait_for, write_meminfo)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

REGION = 2 * MiB


@contextlib.contextmanager
def merging_ksm():
    """ksmd merging fast, zero pages as KSM pages; knobs restored."""
    with borrowed_ksm(run=1, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        yield ksm


@contextlib.contextmanager
def faked_meminfo(workdir):
    """A copy of /proc/meminfo for the memdedup object's x-meminfo, read
    instead of the real one (write_meminfo changes its MemAvailable)."""
    meminfo = os.path.join(workdir, "meminfo")
    write_meminfo(meminfo, None)
    yield meminfo


def wait_merged(vm, pages, what, timeout=90):
    """Wait until @vm has at least @pages merged (smaps); return them."""
    return wait_for(what, lambda: (lambda m: m if m >= pages else 0)(
        smaps_merged_pages(vm.pid)), timeout)


def mergeable_in(pid, base, size):
    """[(start, end)] of the mergeable VMAs in [base, base + size), as
    offsets."""
    return [(max(s, base) - base, min(e, base + size) - base)
            for s, e in mergeable_vmas(pid) if s < base + size and e > base]


def test_refusal_inside_a_vma(workdir):
    size = 64 * MiB
    a, b, c = 16 * MiB, 16 * MiB + REGION, 16 * MiB + 2 * REGION
    with merging_ksm(), faked_meminfo(workdir) as meminfo:
        vm, qt = start_qtest_vm(workdir, "vma", [
            "-machine", "pc,memory-backend=m0,mem-merge=off",
            "-m", "%dM" % (size // MiB),
            "-object", "memdedup,id=engine,rescan-interval=3600000,"
            "x-meminfo=" + meminfo,
            # dump=off: a VMA flag no neighbour has (one mapping).
            "-object", "memory-backend-ksm,id=m0,size=%dM,dump=off"
                       % (size // MiB)])
        try:
            base = host_address(vm.pid, size)
            rnd = random.Random(21)
            x = rnd.randbytes(REGION)
            # a and c are copies; b shares the first half (50 %).
            qt.write(a, x)
            qt.write(b, x[:REGION // 2] + rnd.randbytes(REGION // 2))
            qt.write(c, x)
            before = qt.read(a, 3 * REGION)
            run_pass(vm)
            check(mergeable_in(vm.pid, base, size) == [(a, c + REGION)],
                  "not one registered VMA: %s"
                  % mergeable_in(vm.pid, base, size))
            merged = wait_merged(vm, (5 * REGION // 2) // PAGE,
                                 "ksmd to merge the three regions", 60)

            # 1 MiB available; b's merged half needs 1 MiB unmerged.
            write_meminfo(meminfo, 1024)
            vm.qmp.cmd("qom-set", path="/objects/m0",
                       property="duplicate-threshold", value=60)
            run_pass(vm)
            m0 = backend(vm, "m0")
            check(m0["unmerge-refusals"] >= 1, "no refusal: %d"
                  % m0["unmerge-refusals"])
            check(mergeable_in(vm.pid, base, size) == [(a, c + REGION)],
                  "unregistered at the refusal: %s"
                  % mergeable_in(vm.pid, base, size))
            check(smaps_merged_pages(vm.pid) >= merged - 8,
                  "unmerged: %d merged pages, %d before"
                  % (smaps_merged_pages(vm.pid), merged))
            print("  refused: %d, %d pages still merged"
                  % (m0["unmerge-refusals"], smaps_merged_pages(vm.pid)))

            # The memory is there again: b leaves the registered range.
            write_meminfo(meminfo, None)
            run_pass(vm)
            check(mergeable_in(vm.pid, base, size) ==
                  [(a, b), (c, c + REGION)], "after the refusal: %s"
                  % mergeable_in(vm.pid, base, size))
            check(qt.read(a, 3 * REGION) == before, "guest memory changed")
        finally:
            vm.stop()
            qt.close()


def test_runtime_adoption(workdir):
    """Adopting a running guest's RAM that mem-merge let KSM merge
    unmerges it first: admitted like any other unmerge."""
    with merging_ksm(), faked_meminfo(workdir) as meminfo:
        vm, qt = start_qtest_vm(workdir, "adopt", [
            "-machine", "pc,memory-backend=pc.ram,mem-merge=on",
            "-m", "256M",
            "-object", "memory-backend-ram,id=pc.ram,size=256M"])
        try:
            fill_known(qt, random.Random(23))
            digest = digest_known(qt)
            merged = wait_merged(vm, 64 * MiB // PAGE,
                                 "ksmd to merge under mem-merge")
            write_meminfo(meminfo, 1024)
            try:
                vm.qmp.cmd("object-add", **{"qom-type": "memdedup",
                                            "id": "md", "adopt": ["pc.ram"],
                                            "x-meminfo": meminfo})
                raise AssertionError("adoption admitted with 1 MiB "
                                     "available")
            except qmp.QMPError as e:
                check("backend 'pc.ram': unmerging" in str(e) and
                      "MemAvailable" in str(e), "refusal: %s" % e)
            check(vm.qmp.cmd("query-memdedup")["backends"] == [],
                  "adopted after the refusal")
            check(smaps_merged_pages(vm.pid) >= merged * 0.9,
                  "unmerged by the refused adoption: %d pages, %d before"
                  % (smaps_merged_pages(vm.pid), merged))
            write_meminfo(meminfo, None)
            vm.qmp.cmd("object-add", **{"qom-type": "memdedup", "id": "md",
                                        "adopt": ["pc.ram"],
                                        "x-meminfo": meminfo})
            check([b["id"] for b in vm.qmp.cmd("query-memdedup")["backends"]]
                  == ["pc.ram"], "not adopted with the memory there")
            check(digest_known(qt) == digest, "guest memory changed")
        finally:
            vm.stop()
            qt.close()


class ChildMemoryCgroup:
    """A memory cgroup created below this process's own (cgroup v2 if
    its memory controller is enabled there, else v1), removed on exit."""

    def __init__(self, name):
        self.name = name
        self.path = None
        self.v2 = False

    def __enter__(self):
        v2 = v1 = None
        with open("/proc/self/cgroup") as f:
            for line in f:
                hid, ctrls, path = line.rstrip("\n").split(":", 2)
                if hid == "0" and not ctrls:
                    v2 = path
                elif "memory" in ctrls.split(","):
                    v1 = path
        mount2 = "/sys/fs/cgroup" if os.path.exists(
            "/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
        parent = None
        if v2 is not None:
            d = mount2 + v2
            with contextlib.suppress(OSError), \
                    open(os.path.join(d, "cgroup.subtree_control")) as f:
                if "memory" in f.read().split():
                    parent, self.v2 = d, True
        if parent is None and v1 is not None and \
                os.path.isdir("/sys/fs/cgroup/memory"):
            parent = "/sys/fs/cgroup/memory" + v1
        if parent is None:
            raise Skip("no memory cgroup to create a child in (v2 without "
                       "the memory controller enabled, no v1)")
        self.path = os.path.join(parent, self.name)
        try:
            os.mkdir(self.path)
        except OSError as e:
            self.path = None
            raise Skip("cannot create a memory cgroup under %s: %s"
                       % (parent, e.strerror))
        return self

    def file(self, name):
        v2_names = {"limit": "memory.max", "usage": "memory.current"}
        v1_names = {"limit": "memory.limit_in_bytes",
                    "usage": "memory.usage_in_bytes"}
        return os.path.join(self.path, (v2_names if self.v2 else
                                        v1_names).get(name, name))

    def read(self, name):
        with open(self.file(name)) as f:
            return int(f.read().split()[0])

    def write(self, name, value):
        with open(self.file(name), "w") as f:
            f.write("%s\n" % value)

    def __exit__(self, *exc):
        if self.path:
            # Empty once QEMU was stopped; the kernel may take a moment.
            with host.shielded():
                for _ in range(50):
                    try:
                        os.rmdir(self.path)
                        break
                    except OSError:
                        time.sleep(0.1)
                else:
                    print("ChildMemoryCgroup: could not remove %s"
                          % self.path, file=sys.stderr)
        return False


def test_cgroup_limit(workdir):
    with merging_ksm():
        with ChildMemoryCgroup("memdedup-test-%d" % os.getpid()) as cg:
            vm, qt = start_qtest_vm(workdir, "cg", [
                "-machine", "pc,memory-backend=m0,mem-merge=off",
                "-m", "256M",
                "-object", "memdedup,id=engine,rescan-interval=3600000",
                "-object", "memory-backend-ksm,id=m0,size=256M"])
            try:
                fill_known(qt, random.Random(22))
                digest = digest_known(qt)
                run_pass(vm)
                merged = wait_merged(vm, 64 * MiB // PAGE,
                                     "ksmd to merge 64 MiB")
                with open(os.path.join(cg.path, "cgroup.procs"), "w") as f:
                    f.write("%d\n" % vm.pid)
                # 32 MiB of room, less than unmerging needs.
                cg.write("limit", cg.read("usage") + 32 * MiB)
                try:
                    vm.qmp.cmd("qom-set", path="/objects/m0",
                               property="dedup-policy", value="off")
                    raise AssertionError("policy off admitted in a cgroup "
                                         "with 32 MiB of room")
                except qmp.QMPError as e:
                    check("memory cgroup" in str(e) and cg.path in str(e) and
                          "force-unmerge" in str(e), "refusal: %s" % e)
                    print("  refused: %s" % e)
                check(vm.alive(), "QEMU died in its cgroup")
                check(backend(vm, "m0")["policy"] == "targeted",
                      "policy changed")
                check(smaps_merged_pages(vm.pid) >= merged * 0.9,
                      "unmerged: %d pages merged, %d before"
                      % (smaps_merged_pages(vm.pid), merged))
                check(digest_known(qt) == digest, "guest memory changed")
            finally:
                vm.stop()
                qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("admission/refusal-inside-a-vma", test_refusal_inside_a_vma),
        ("admission/runtime-adoption", test_runtime_adoption),
        ("admission/cgroup-limit", test_cgroup_limit),
    ]))
