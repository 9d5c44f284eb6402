#!/usr/bin/env python3
"""Memory hot-plug in a real guest (Debian kernel under TCG).

pc-dimm: a memory-backend-ksm is added at runtime and plugged as a DIMM;
the guest onlines it (memhp_default_state=online_movable) and fills it
with copies of one file; the engine counts it within a pass.  Then the
DIMM is unplugged (the guest offlines and ejects it), the backend is
deleted, and it leaves the statistics and the totals.

virtio-mem: a memory-backend-ksm is the memdev of a virtio-mem device
(the guest loads the virtio_mem module of its kernel package).  Growing
requested-size plugs memory the guest fills; the engine scans only the
plugged part.  Shrinking it discards memory, which leaves the index and
the statistics at once, before the next pass.

unplug-during-collapse (qtest, no guest): a 4 GiB DIMM of unique pages
on small pages, which the engine collapses into huge pages, is unplugged
(qtest writes the eject the guest's ACPI would) and its backend deleted
while the collapse is under way; its RAM must be unmapped and freed
within a second of DEVICE_DELETED (the collapse goes MEMDEDUP_COPY_CHUNK,
8 MiB, at a time, each chunk in an RCU read section that re-checks the
block).
"""

import os
import re
import sys
import time

from harness import (GUEST_BOOT_TIMEOUT, MiB, PAGE, QEMU, GuestShell,
                     backend, check, guest_boot_args, host_address,
                     need_ksm_root, qmp, rss_bytes, run_pass, run_tests,
                     smaps_vmas, start_qtest_vm, thp_allowed, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

BOOT_MEM = 512                # MiB
FILE_MIB = 32                 # one copy of /data/shared.bin
COPIES = 4                    # written into hot-plugged memory


def boot(workdir, extra, append):
    shell = GuestShell(workdir)
    vm = qmp.Qemu(QEMU, guest_boot_args(append=append) + shell.args() + [
        "-machine", "pc,memory-backend=ram0",
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        "-object", "memory-backend-ksm,id=ram0,size=%dM" % BOOT_MEM,
    ] + extra, workdir, "guest").start()
    if not vm.wait_serial("MEMDEDUP-GUEST-READY", GUEST_BOOT_TIMEOUT):
        vm.stop()
        raise AssertionError("guest did not get ready:\n" + vm.serial()[-2000:])
    return vm, shell


def sh(vm, shell, cmd, timeout=180):
    status, out = shell.run(vm, cmd, timeout)
    check(status == 0, "guest command failed (%d): %s\n%s" % (status, cmd, out))
    return out


def fill(vm, shell):
    sh(vm, shell, "i=0; while [ $i -lt %d ]; do dd if=/data/shared.bin "
       "of=/mnt/fill/hot.$i bs=1M count=%d 2>/dev/null; i=$((i+1)); done"
       % (COPIES, FILE_MIB))


def resident_total(info):
    return sum(b["resident-pages"] for b in info["backends"])


def backend_ids(vm):
    return [b["id"] for b in vm.qmp.cmd("query-memdedup")["backends"]]


def events(vm, name):
    vm.qmp.cmd("query-status")          # takes in the events sent so far
    return [e for e in vm.qmp.events if e.get("event") == name]


def test_pc_dimm(workdir):
    vm, shell = boot(workdir, ["-m", "%dM,slots=4,maxmem=4G" % BOOT_MEM],
                     "memhp_default_state=online_movable")
    try:
        total_before = run_pass(vm)["backends"]
        vm.qmp.cmd("object-add", **{"qom-type": "memory-backend-ksm",
                                    "id": "dimm0", "size": 256 * MiB})
        vm.qmp.cmd("device_add", driver="pc-dimm", id="d0", memdev="dimm0")
        check(any(e["data"]["id"] == "dimm0" for e in
                  events(vm, "MEMDEDUP_BACKEND_ADDED")), "no ADDED event")
        # The guest onlines the new memory blocks, then fills them first
        # (ZONE_MOVABLE comes first for page cache and tmpfs).
        wait_for("the guest to online the DIMM", lambda: int(sh(
            vm, shell, "grep -l online /sys/devices/system/memory/memory*/"
            "state | wc -l").split()[-1]) > BOOT_MEM // 128, 120)
        fill(vm, shell)
        info = run_pass(vm)
        d = backend(vm, "dimm0")
        print("  dimm0: resident %d duplicate %d registered %d MiB" % (
            d["resident-pages"], d["duplicate-pages"],
            d["registered-bytes"] // MiB))
        check(d["resident-pages"] >= COPIES * FILE_MIB * MiB // PAGE * 0.8,
              "DIMM resident pages %d" % d["resident-pages"])
        check(d["resident-pages"] <= 256 * MiB // PAGE, "more than the DIMM")
        check(d["duplicate-pages"] >= COPIES * FILE_MIB * MiB // PAGE * 0.7,
              "DIMM duplicate pages %d" % d["duplicate-pages"])
        check(d["registered-bytes"] >= COPIES * FILE_MIB * MiB * 0.7,
              "DIMM registered %d" % d["registered-bytes"])
        check(len(info["backends"]) == len(total_before) + 1, "no new backend")

        # Unplug: free the memory, the guest offlines and ejects the DIMM.
        sh(vm, shell, "rm -f /mnt/fill/hot.*")
        vm.qmp.cmd("device_del", id="d0")
        wait_for("the guest to eject the DIMM", lambda: any(
            e["data"].get("device") == "d0"
            for e in events(vm, "DEVICE_DELETED")), 180)
        vm.qmp.cmd("object-del", id="dimm0")
        # Its RAM goes when nothing uses it any more (the memory map holds
        # it until an RCU grace period ends), and the event says when;
        # querying receives it.
        wait_for("MEMDEDUP_BACKEND_REMOVED", lambda: "dimm0" not in
                 backend_ids(vm) and any(
                     e["data"]["id"] == "dimm0" for e in
                     events(vm, "MEMDEDUP_BACKEND_REMOVED")), 10)
        after = run_pass(vm)
        check(resident_total(after) < resident_total(info) -
              COPIES * FILE_MIB * MiB // PAGE * 0.7,
              "totals did not drop: %d -> %d" % (resident_total(info),
                                                  resident_total(after)))
        check(after["metadata-bytes"] < info["metadata-bytes"],
              "metadata did not drop: %d -> %d" % (info["metadata-bytes"],
                                                    after["metadata-bytes"]))
        check("error" not in vm.stderr().lower(), "QEMU errors:\n" +
              vm.stderr())
    finally:
        shell.close()
        vm.stop()


def plugged(vm):
    return vm.qmp.cmd("qom-get", path="/machine/peripheral/vm0",
                      property="size")


def set_requested(vm, size):
    vm.qmp.cmd("qom-set", path="/machine/peripheral/vm0",
               property="requested-size", value=size)
    wait_for("virtio-mem to reach %d MiB" % (size // MiB),
             lambda: plugged(vm) == size, 180)


def test_virtio_mem(workdir):
    vm, shell = boot(workdir, [
        "-m", "%dM,maxmem=4G" % BOOT_MEM,
        "-object", "memory-backend-ksm,id=vmem0,size=1G",
        "-device", "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0"],
        "memhp_default_state=online_movable")
    try:
        check("virtio_mem" in sh(vm, shell, "cat /proc/modules"),
              "virtio_mem module not loaded")
        set_requested(vm, 256 * MiB)
        fill(vm, shell)
        grown_info = run_pass(vm)
        grown = backend(vm, "vmem0")
        print("  plugged 256 MiB: resident %d duplicate %d" % (
            grown["resident-pages"], grown["duplicate-pages"]))
        check(grown["resident-pages"] >= COPIES * FILE_MIB * MiB // PAGE * 0.8,
              "resident pages %d" % grown["resident-pages"])
        check(grown["resident-pages"] <= 256 * MiB // PAGE,
              "more resident than plugged")
        check(grown["duplicate-pages"] >= COPIES * FILE_MIB * MiB // PAGE
              * 0.7, "duplicate pages %d" % grown["duplicate-pages"])

        # Shrink: the discarded memory leaves the statistics at once,
        # without a pass.
        sh(vm, shell, "rm -f /mnt/fill/hot.*")
        passes = vm.qmp.cmd("query-memdedup")["passes-completed"]
        set_requested(vm, 64 * MiB)
        shrunk = wait_for("discarded pages to leave the index", lambda: (
            lambda b: b if b["resident-pages"] <= 64 * MiB // PAGE else None)(
                backend(vm, "vmem0")), 30)
        check(vm.qmp.cmd("query-memdedup")["passes-completed"] == passes,
              "a pass ran; the discard itself should update the index")
        print("  plugged 64 MiB: resident %d duplicate %d" % (
            shrunk["resident-pages"], shrunk["duplicate-pages"]))
        after = run_pass(vm)
        b = backend(vm, "vmem0")
        check(b["resident-pages"] <= 64 * MiB // PAGE,
              "after a pass: resident %d > plugged" % b["resident-pages"])
        check(resident_total(after) < resident_total(grown_info),
              "totals did not drop")
        # Grow again: the engine follows.
        set_requested(vm, 192 * MiB)
        fill(vm, shell)
        run_pass(vm)
        regrown = backend(vm, "vmem0")
        check(regrown["resident-pages"] >= COPIES * FILE_MIB * MiB // PAGE
              * 0.5, "after growing again: resident %d"
              % regrown["resident-pages"])
        check(regrown["resident-pages"] <= 192 * MiB // PAGE,
              "more resident than plugged after growing again")
    finally:
        shell.close()
        vm.stop()


def test_virtio_mem_unplugged(workdir):
    # No guest driver (qtest): nothing is plugged, so pages written into
    # the device's memory from outside are not guest memory and must not
    # be scanned; the machine's own RAM still is.
    vm, qt = start_qtest_vm(workdir, "qtest", [
        "-machine", "pc,memory-backend=ram0", "-m", "128M,maxmem=1G",
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        "-object", "memory-backend-ksm,id=ram0,size=128M",
        "-object", "memory-backend-ksm,id=vmem0,size=256M",
        "-device", "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0"])
    try:
        addr = vm.qmp.cmd("qom-get", path="/machine/peripheral/vm0",
                          property="memaddr")
        qt.memset(addr, 16 * MiB, 0x5a)
        qt.memset(16 * MiB, 16 * MiB, 0x5a)
        run_pass(vm)
        check(backend(vm, "vmem0")["resident-pages"] == 0,
              "unplugged virtio-mem memory scanned: %d pages"
              % backend(vm, "vmem0")["resident-pages"])
        check(backend(vm, "ram0")["resident-pages"] >= 16 * MiB // PAGE,
              "machine RAM not scanned")
    finally:
        vm.stop()
        qt.close()


# unplug-during-collapse: a DIMM of unique pages on small pages, which the
# engine collapses into huge pages (MADV_COLLAPSE copies 0.3-2 GB/s, so
# seconds for all of it) MEMDEDUP_COPY_CHUNK (8 MiB) at a time, each in
# an RCU read section that checks the block is still there.
COLLAPSE_DIMM = 4 << 30
UNPLUG_BOUND = 1.0            # s from DEVICE_DELETED to the RAM freed
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
# The ACPI memory hotplug registers (docs/specs/acpi_mem_hotplug.rst):
# slot selector at 0, control at 0x14, whose bit 3 ejects the slot.
MEMHP_IO_BASE = 0xa00
MEMHP_EJECT = 8


def fill_unique(qt, addr, size):
    """A distinct non-zero qword at the start of every page (the rest of
    it zero): every page unique, written page by page (small pages)."""
    pages = size // PAGE
    per = 64 * MiB // PAGE
    for first in range(0, pages, per):
        qt.pipeline(["writeq 0x%x 0x%x" % (
            addr + p * PAGE, (p + 1) * 0x9E3779B97F4A7C15 % (1 << 64))
            for p in range(first, min(first + per, pages))])


def anon_huge_in(pid, start, end):
    """AnonHugePages of @pid's VMAs overlapping [start, end)."""
    return sum(int(fields.get("AnonHugePages", "0 kB").split()[0]) * 1024
               for s, e, fields in smaps_vmas(pid) if s < end and e > start)


def mapped_in(pid, start, end):
    """Bytes of @pid's mappings inside [start, end)."""
    total = 0
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            s, e = (int(x, 16) for x in line.split()[0].split("-"))
            total += max(0, min(e, end) - max(s, start))
    return total


def trace_lines(trace, pattern):
    with open(trace) as f:
        return re.findall(pattern, f.read())


def advised(trace, backend_id, advice):
    """[(time stamp, len)] of the runs the engine advised @advice on
    @backend_id (the trace event comes when the whole run is done; the
    time stamp with -msg timestamp=on, else None)."""
    return [(float(t) if t else None, int(n, 16)) for t, n in trace_lines(
        trace, r"(?:@([0-9.]+):)?memdedup_advise backend %s offset \S+ "
        r"len (\S+) advice %d " % (backend_id, advice))]


def event_time(e):
    return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6


def start_collapse(vm, trace, base, size):
    """Request passes until one collapses the DIMM (at @base, @size bytes
    in QEMU), and return once it has collapsed at least 128 MiB: (bytes
    on huge pages then, collapse rate in bytes/s)."""
    for _ in range(5):
        wait_for("the engine to be idle", lambda: vm.qmp.cmd(
            "query-memdedup")["state"] != "scanning")
        huge0 = host.meminfo("AnonHugePages")
        done = len(trace_lines(trace, "memdedup_pass_done"))
        vm.qmp.cmd("memdedup-scan")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # MADV_HUGEPAGE on the DIMM is done: MADV_COLLAPSE follows.
            started = advised(trace, "dimm0", MADV_HUGEPAGE)
            # The host's AnonHugePages is cheap to poll; smaps is not.
            grown = host.meminfo("AnonHugePages") - huge0
            if started and grown >= 128 * MiB:
                # The host's count is the cheap trigger; smaps says.
                huge = anon_huge_in(vm.pid, base, base + size)
                if huge >= 128 * MiB:
                    return huge, huge / (time.time() - started[-1][0])
                huge0 = host.meminfo("AnonHugePages") - huge
            if len(trace_lines(trace, "memdedup_pass_done")) > done:
                break
            time.sleep(0.005)
        check(not advised(trace, "dimm0", MADV_COLLAPSE) and
              backend(vm, "dimm0")["huge-regions"] == 0,
              "the DIMM was collapsed (%d huge regions) before the test "
              "saw it start" % backend(vm, "dimm0")["huge-regions"])
    raise AssertionError("no pass collapsed the DIMM")


def test_unplug_during_collapse(workdir):
    """A DIMM unplugged while the engine collapses it leaves at once: the
    collapse goes 8 MiB at a time, each chunk in an RCU read section
    that re-checks the block, so the RAM is unmapped and freed within a
    second of the device going away, long before the collapse would have
    ended."""
    need_ksm_root()
    # ksmd stopped: stable unique regions are collapsed at once.
    with thp_allowed(run=0):
        trace = os.path.join(workdir, "collapse.trace")
        # The machine's RAM is a backend too (never written), so that
        # the engine has a block left to pass over after the unplug;
        # trace lines with time stamps.
        vm, qt = start_qtest_vm(workdir, "unplug", [
            "-machine", "pc,memory-backend=ram0",
            "-m", "%dM,slots=2,maxmem=8G" % BOOT_MEM, "-msg", "timestamp=on",
            "-object", "memdedup,id=engine,rescan-interval=3600000",
            "-object", "memory-backend-ksm,id=ram0,size=%dM" % BOOT_MEM,
        ] + [arg for event in ("memdedup_advise", "memdedup_pass_done",
                               "memdedup_block_removed")
             for arg in ("-trace", "enable=%s,file=%s" % (event, trace))])
        try:
            # dump=off: a flag no neighbour has, so the RAM is one VMA.
            vm.qmp.cmd("object-add", **{"qom-type": "memory-backend-ksm",
                                        "id": "dimm0", "size": COLLAPSE_DIMM,
                                        "dump": False})
            vm.qmp.cmd("device_add", driver="pc-dimm", id="d0",
                       memdev="dimm0")
            dimm = [m["data"] for m in vm.qmp.cmd("query-memory-devices")
                    if m["data"].get("id") == "d0"][0]
            base = host_address(vm.pid, COLLAPSE_DIMM)
            end = base + COLLAPSE_DIMM
            t0 = time.monotonic()
            # The backend advised its RAM MADV_NOHUGEPAGE (manage-thp):
            # the fill lands on small pages.
            fill_unique(qt, dimm["addr"], COLLAPSE_DIMM)
            t_fill = time.monotonic() - t0
            check(anon_huge_in(vm.pid, base, end) == 0,
                  "the fill got huge pages")
            huge, rate = start_collapse(vm, trace, base, COLLAPSE_DIMM)
            # Still collapsing: most of the DIMM on small pages.
            check(not advised(trace, "dimm0", MADV_COLLAPSE) and
                  0 < huge <= COLLAPSE_DIMM // 2,
                  "not collapsing at the unplug: %d MiB of %d on huge "
                  "pages" % (huge // MiB, COLLAPSE_DIMM // MiB))

            # Unplug, qtest standing in for the guest's ACPI _EJ0.
            rss = rss_bytes(vm.pid)
            vm.qmp.cmd("device_del", id="d0")
            qt.command("outl 0x%x 0x%x" % (MEMHP_IO_BASE, dimm["slot"]))
            qt.command("outb 0x%x 0x%x" % (MEMHP_IO_BASE + 0x14,
                                           MEMHP_EJECT))
            deleted = wait_for("DEVICE_DELETED", lambda: [
                e for e in events(vm, "DEVICE_DELETED")
                if e["data"].get("device") == "d0"], 10)[0]
            vm.qmp.cmd("object-del", id="dimm0")
            t_del = time.time()
            # The RAM is gone when its mapping is (munmap takes the VMA
            # out first) and its pages are freed (RSS drops by the DIMM).
            t_unmapped = t_freed = None
            while (t_unmapped is None or t_freed is None) and \
                    time.time() - event_time(deleted) < 30:
                now = time.time()
                if t_unmapped is None and not mapped_in(vm.pid, base, end):
                    t_unmapped = now
                if t_freed is None and rss_bytes(vm.pid) <= \
                        rss - 0.9 * COLLAPSE_DIMM:
                    t_freed = now
                time.sleep(0.002)
            check(t_unmapped and t_freed, "the DIMM's RAM is still there "
                  "30 s after DEVICE_DELETED (mapped: %s, RSS %d MiB)"
                  % (not t_unmapped, rss_bytes(vm.pid) // MiB))
            removed = wait_for("MEMDEDUP_BACKEND_REMOVED", lambda: [
                e for e in events(vm, "MEMDEDUP_BACKEND_REMOVED")
                if e["data"]["id"] == "dimm0"], 10)[0]
            unmapped = t_unmapped - event_time(deleted)
            gone = t_freed - event_time(deleted)
            print("  filled %d MiB in %.1f s; unplugged with %d MiB "
                  "collapsed, at %.0f MB/s (an 8 MiB chunk in %.0f ms)"
                  % (COLLAPSE_DIMM // MiB, t_fill, huge // MiB, rate / 1e6,
                     8 * MiB / rate * 1e3))
            print("  after DEVICE_DELETED: object-del done %.3f s, "
                  "BACKEND_REMOVED %.3f s, RAM unmapped %.3f s, freed "
                  "%.3f s" % (t_del - event_time(deleted),
                              event_time(removed) - event_time(deleted),
                              unmapped, gone))
            check(gone < UNPLUG_BOUND, "RAM freed %.3f s after "
                  "DEVICE_DELETED" % gone)
            # The collapse stopped at a chunk boundary: its run neither
            # completed nor failed (either would be traced).
            check(not advised(trace, "dimm0", MADV_COLLAPSE),
                  "the DIMM's collapse ran on after its removal: %s"
                  % advised(trace, "dimm0", MADV_COLLAPSE))
            info = run_pass(vm)
            check("dimm0" not in [b["id"] for b in info["backends"]],
                  "dimm0 still in query-memdedup")
            check(vm.alive(), "QEMU exited")
            check("error" not in vm.stderr().lower(), "QEMU errors:\n" +
                  vm.stderr())
        finally:
            vm.stop()
            qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("hotplug/pc-dimm", test_pc_dimm),
        ("hotplug/virtio-mem", test_virtio_mem),
        ("hotplug/virtio-mem-unplugged", test_virtio_mem_unplugged),
        ("hotplug/unplug-during-collapse", test_unplug_during_collapse),
    ]))
