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
"""

import sys

from harness import (GUEST_BOOT_TIMEOUT, MiB, PAGE, QEMU, GuestShell,
                     backend, check, guest_boot_args, qmp, run_pass,
                     run_tests, start_qtest_vm, wait_for)

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


if __name__ == "__main__":
    sys.exit(run_tests([
        ("hotplug/pc-dimm", test_pc_dimm),
        ("hotplug/virtio-mem", test_virtio_mem),
        ("hotplug/virtio-mem-unplugged", test_virtio_mem_unplugged),
    ]))
