#!/usr/bin/env python3
"""A real guest: a Debian kernel + busybox initramfs boots under TCG with
memory-backend-ksm as its machine memory, fills its RAM with known
amounts of zero, duplicated and unique data, and the engine reports
numbers that fit what the guest did.  With ksmd running (knobs restored
afterwards) the kernel merges part of what was registered.
"""

import sys
import time

from harness import (GUEST_BOOT_TIMEOUT, MiB, PAGE, QEMU, backend, check,
                     guest_boot_args, qmp, run_pass, run_tests)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

MEM = 512                     # MiB of guest RAM
ZERO, SHARED, COPIES, UNIQUE = 32, 32, 2, 64   # MiB, as the guest fills


def guest_vm(workdir, name):
    return qmp.Qemu(QEMU, guest_boot_args(ZERO, SHARED, COPIES, UNIQUE) + [
        "-m", "%dM" % MEM, "-machine", "pc,memory-backend=ram0",
        "-object", "memdedup,id=engine,rescan-interval=2000",
        "-object", "memory-backend-ksm,id=ram0,size=%dM" % MEM,
    ], workdir, name)


def test_guest_numbers(workdir):
    with host.KsmKnobs(run=1, pages_to_scan=2000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        vm = guest_vm(workdir, "guest").start()
        try:
            t0 = time.monotonic()
            check(vm.wait_serial("MEMDEDUP-GUEST-READY", GUEST_BOOT_TIMEOUT),
                  "guest did not get ready:\n" + vm.serial()[-2000:])
            print("  guest ready after %.1f s" % (time.monotonic() - t0))
            run_pass(vm)
            b = backend(vm, "ram0")
            pages = lambda mib: mib * MiB // PAGE   # noqa: E731
            print("  resident %d zero %d duplicate %d unique %d "
                  "registered %d MiB" % (
                      b["resident-pages"], b["zero-pages"],
                      b["duplicate-pages"], b["unique-pages"],
                      b["registered-bytes"] // MiB))
            # The guest wrote all of this; the kernel and page cache more.
            check(b["resident-pages"] >= pages(ZERO + SHARED * COPIES + UNIQUE),
                  "resident pages %d" % b["resident-pages"])
            check(b["resident-pages"] <= pages(MEM), "more resident than RAM")
            check(b["zero-pages"] >= pages(ZERO) * 0.9,
                  "zero pages %d" % b["zero-pages"])
            # COPIES copies plus the initramfs's own file, all identical.
            check(b["duplicate-pages"] >= pages(SHARED * COPIES) * 0.9,
                  "duplicate pages %d" % b["duplicate-pages"])
            check(b["unique-pages"] >= pages(UNIQUE) * 0.9,
                  "unique pages %d" % b["unique-pages"])
            # Candidates are registered; the unique fill is not.
            check(b["registered-bytes"] >= (ZERO + SHARED * COPIES) * MiB * 0.9,
                  "registered %d" % b["registered-bytes"])
            check(b["registered-bytes"] <= b["resident-pages"] * PAGE -
                  UNIQUE * MiB * 0.9, "unique memory registered")
            check(b["estimated-saving"] >= (ZERO + SHARED * (COPIES - 1)) *
                  MiB * 0.9, "estimated saving %d" % b["estimated-saving"])
            if ksm.active:
                deadline = time.monotonic() + 60
                merged = 0
                while time.monotonic() < deadline and merged < pages(SHARED):
                    merged = backend(vm, "ram0").get("kernel-merged-pages", 0)
                    time.sleep(1)
                print("  kernel merged %d pages" % merged)
                check(merged >= pages(SHARED),
                      "kernel merged only %d pages" % merged)
            hmp = vm.qmp.hmp("info memdedup")
            check("ram0" in hmp and "targeted" in hmp, hmp)
        finally:
            vm.stop()


if __name__ == "__main__":
    sys.exit(run_tests([("guest/numbers", test_guest_numbers)]))
