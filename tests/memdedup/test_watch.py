#!/usr/bin/env python3
"""The residency watch: guest memory that fills between passes is hashed
and registered within seconds, not at the next full pass.

watch/fill      a QEMU under -accel qtest whose next full pass is an hour
                away (rescan-interval): after its first pass the guest
                fills part of its memory (a block written twice, a region
                whose halves are equal, zeroes, random pages).  A partial
                pass follows within seconds (partial-passes, no full
                pass): it registers exactly the duplicated and zero
                regions (registered-bytes, and the kernel's mergeable
                VMAs cover them and not the random pages); the watch
                faulted nothing in (the pages the kernel holds for the
                guest grew by exactly the pages written); with nothing
                moving afterwards the watch runs (watch-cpu-time grows)
                and starts no pass.  ksmd is stopped meanwhile: merging
                zero pages would change the residency counted
watch/unprivileged  the same with QEMU as nobody
"""

import os
import sys
import time

from harness import (AS_NOBODY, MiB, PAGE, backend, borrowed_ksm, check,
                     nobody_workdir, open_umask, run_pass, run_tests, start_qtest_vm,
                     wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)
from test_accounting import tagged

SIZE = 256 * MiB
REGION = 2 * MiB
BLOCK_AT, BLOCK = 64 * MiB, 8 * MiB     # written twice: 8 regions
HALVES_AT = 96 * MiB                    # one region, its halves equal
RANDOM_AT, RANDOM = 128 * MiB, 16 * MiB
ZERO_AT, ZERO = 160 * MiB, 8 * MiB
WANTED = 2 * BLOCK + REGION + ZERO      # what qualifies: registered
WRITTEN = 2 * BLOCK + REGION + RANDOM + ZERO
FOLLOW = 30                             # s: a pass is an hour away


def fill(qt):
    block = tagged(1, BLOCK // PAGE)
    qt.write(BLOCK_AT, block)
    qt.write(BLOCK_AT + BLOCK, block)
    half = tagged(900000, REGION // PAGE // 2)
    qt.write(HALVES_AT, half + half)
    qt.write(RANDOM_AT, os.urandom(RANDOM))
    qt.memset(ZERO_AT, ZERO, 0)


def resident(pid, base):
    """Pages of the guest RAM the kernel holds for QEMU, or None."""
    flags = host.kernel_residency(pid, base, SIZE)
    return None if flags is None else sum(flags)


def covered(vm, base, offset, size):
    return any(s <= base + offset and base + offset + size <= e
               for s, e in host.mergeable_vmas(vm.pid))


def fill_and_follow(workdir, wrapper=()):
    # ksmd stopped: merging zero pages into the zero page would change
    # the residency the test counts.
    with borrowed_ksm(run=0):
        follow(workdir, wrapper)


def follow(workdir, wrapper):
    with open_umask():
        vm, qt = start_qtest_vm(workdir, "watch", [
            "-machine", "pc,memory-backend=m0,mem-merge=off",
            "-m", "%dM" % (SIZE // MiB),
            "-object", "memdedup,id=engine,rescan-interval=3600000,"
                       "residency-watch=on",
            "-object", "memory-backend-ksm,id=m0,size=%dM,dump=off"
                       % (SIZE // MiB)], wrapper)
    try:
        info = run_pass(vm)
        passes, partial = info["passes-completed"], info["partial-passes"]
        base = host.host_address(vm.pid, SIZE)
        before = resident(vm.pid, base)
        check(backend(vm, "m0")["registered-bytes"] == 0,
              "registered before the guest wrote anything")

        fill(qt)
        written = time.monotonic()
        wait_for("a partial pass registering %d MiB" % (WANTED // MiB),
                 lambda: backend(vm, "m0")["registered-bytes"] == WANTED,
                 FOLLOW)
        took = time.monotonic() - written
        info = vm.qmp.cmd("query-memdedup")
        print("  registered %d MiB %.1f s after the guest wrote it; "
              "partial passes %d, watch CPU %.1f ms"
              % (WANTED // MiB, took, info["partial-passes"] - partial,
                 info["watch-cpu-time"] / 1e6))
        check(info["passes-completed"] == passes,
              "a full pass ran: %r" % info)
        check(info["partial-passes"] > partial, "no partial pass: %r" % info)
        for at, size in ((BLOCK_AT, 2 * BLOCK), (HALVES_AT, REGION),
                         (ZERO_AT, ZERO)):
            check(covered(vm, base, at, size),
                  "the kernel has %d MiB at %d MiB unregistered"
                  % (size // MiB, at // MiB))
        check(not any(s < base + RANDOM_AT + RANDOM and
                      base + RANDOM_AT < e
                      for s, e in host.mergeable_vmas(vm.pid)),
              "random pages registered")

        after = resident(vm.pid, base)
        if before is None:
            print("  (no page flags as this user: residency from the "
                  "engine's side only)")
        else:
            check(after - before == WRITTEN // PAGE,
                  "resident pages grew by %d, the guest wrote %d"
                  % (after - before, WRITTEN // PAGE))

        # Nothing moves now: the watch keeps looking, and starts nothing.
        info = vm.qmp.cmd("query-memdedup")
        cpu0, cpu_t0 = info["watch-cpu-time"], time.monotonic()
        wait_for("the watch running",
                 lambda: vm.qmp.cmd("query-memdedup")["watch-cpu-time"] >
                 cpu0, FOLLOW)
        time.sleep(3)
        quiet = vm.qmp.cmd("query-memdedup")
        per_gib = ((quiet["watch-cpu-time"] - cpu0) / 1e9 /
                   (time.monotonic() - cpu_t0) / (SIZE / (1 << 30)))
        print("  quiet: the watch used %.3f %% of a core per GiB"
              % (100 * per_gib))
        check(quiet["partial-passes"] == info["partial-passes"] and
              quiet["passes-completed"] == passes,
              "a pass with nothing moving: %r" % quiet)
        if before is not None:
            check(resident(vm.pid, base) == after,
                  "residency changed while the guest was quiet")
    finally:
        vm.stop()
        qt.close()


def test_fill(workdir):
    fill_and_follow(workdir)


def test_unprivileged(workdir):
    fill_and_follow(nobody_workdir(workdir), AS_NOBODY)


TESTS = [
    ("watch/fill", test_fill),
    ("watch/unprivileged", test_unprivileged),
]

if __name__ == "__main__":
    sys.exit(run_tests(TESTS, sys.argv[1:]))
