#!/usr/bin/env python3
"""Hostile guest content cannot make a pass much slower or grow metadata.

One QEMU holds a 4 GiB memory-backend-ksm (a million pages), fully
resident.  The test writes guest memory directly through /proc/PID/mem
(root), so that every page can change between two passes, and times
passes (last-pass-duration, unlimited scan rate) on:

normal     the benchmark's mix: 10 % zero, 30 % copies of one template
           region, 60 % unique; one page rewritten since the previous
           pass (a pass over memory in which nothing at all changed
           keeps the last summary and only hashes: it is timed too, and
           printed, but it is not the pass a guest can be compared with,
           since any change starts the summary again)
distinct   every page different from every other, all rewritten before
           each pass (a million fingerprints change every pass)
pairs      every page has exactly one twin, re-paired before each pass:
           the largest possible dup set (half a million entries)
identical  every page the same non-zero content, rewritten each pass:
           a million equal fingerprints
flip       alternate regions switch between pairs and distinct each
           pass: every region's registration changes every pass

Normal and hostile passes are interleaved and measured in the same run;
each hostile median must stay within 2x the fastest normal pass, and the
engine's metadata within 8 bytes per guest page.  (Collisions crafted
for an unseeded hash are the unit test's /memdedup/hostile-collisions.)
"""

import os
import sys

from harness import (MiB, PAGE, Skip, check, host_address, qmp, run_pass,
                     run_tests)

SIZE = 4096 * MiB
PAGES = SIZE // PAGE
REGION_PAGES = 512                # 2 MiB regions
CHUNK_PAGES = 16384               # pages per write (64 MiB)
ROUNDS = 3
RATIO_LIMIT = 2.0
KINDS = ("distinct", "pairs", "identical", "flip")


class GuestWriter:
    """Writes page contents of the backend through /proc/PID/mem."""

    def __init__(self, np, pid, base):
        self.np = np
        self.base = base
        self.fd = os.open("/proc/%d/mem" % pid, os.O_RDWR)
        self.buf = np.empty((CHUNK_PAGES, PAGE // 8), dtype=np.uint64)

    def close(self):
        os.close(self.fd)

    def touch(self, value):
        """Rewrite one word of one unique page of the normal mix."""
        page = 5 * REGION_PAGES         # region 5: unique pages
        os.pwrite(self.fd, int(value).to_bytes(8, "little"),
                  self.base + page * PAGE + 8)

    def fill(self, kind, salt):
        """Rewrite all of guest memory as @kind; @salt makes it new."""
        np = self.np
        salt = np.uint64(salt << 40)
        for first in range(0, PAGES, CHUNK_PAGES):
            p = np.arange(first, first + CHUNK_PAGES, dtype=np.uint64)
            region = p // np.uint64(REGION_PAGES)
            buf = self.buf
            buf[:, 1:] = np.uint64(0x5a5a5a5a5a5a5a5a)
            if kind == "normal":
                # Static: the same bytes whatever the salt.
                kind_of = region % np.uint64(10)
                head = p | np.uint64(1 << 63)
                dup = kind_of <= np.uint64(3)
                head[dup] = (p[dup] % np.uint64(REGION_PAGES)) | \
                    np.uint64(5 << 56)
                buf[:, 0] = head
                buf[kind_of == np.uint64(0), :] = 0
            elif kind == "distinct":
                buf[:, 0] = p | salt | np.uint64(1 << 63)
            elif kind == "pairs":
                buf[:, 0] = (p >> np.uint64(1)) | salt | np.uint64(1 << 62)
            elif kind == "identical":
                buf[:, 0] = salt | np.uint64(3 << 60)
            elif kind == "flip":
                pairs = (region + np.uint64(salt >> np.uint64(40))) % \
                    np.uint64(2) == np.uint64(0)
                head = p | salt | np.uint64(1 << 63)
                head[pairs] = (p[pairs] >> np.uint64(1)) | salt | \
                    np.uint64(1 << 62)
                buf[:, 0] = head
            os.pwrite(self.fd, memoryview(buf).cast("B"),
                      self.base + first * PAGE)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def test_hostile_content(workdir):
    if os.geteuid() != 0:
        raise Skip("not root: cannot write guest memory through /proc/PID/mem")
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    try:
        import numpy as np
    except ImportError:
        raise Skip("python3-numpy is missing") from None
    with open("/proc/meminfo") as f:
        avail = [int(line.split()[1]) * 1024 for line in f
                 if line.startswith("MemAvailable:")][0]
    if avail < 2 * SIZE:
        raise Skip("needs %d MiB available" % (2 * SIZE // MiB))

    vm = qmp.Qemu(os.environ.get("MEMDEDUP_QEMU", os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "build", "qemu-src", "build",
        "qemu-system-x86_64")), [
        "-machine", "none", "-nodefaults",
        "-object", "memdedup,id=engine,scan-rate=1T,"
                   "rescan-interval=3600000",
        # dump=off: a VMA flag no neighbour has, so none merges into it
        # and host_address() finds it.
        "-object", "memory-backend-ksm,id=m0,size=%dM,dump=off"
                   % (SIZE // MiB)],
        workdir, "hostile").start()
    writer = None
    try:
        writer = GuestWriter(np, vm.pid, host_address(vm.pid, SIZE))
        times = {k: [] for k in ("normal", "quiet") + KINDS}
        meta = {}
        salt = 1
        for _ in range(ROUNDS):
            # Normal: written, one pass to see it (and one to settle its
            # huge pages), then measured, each after one page changed.
            writer.fill("normal", 0)
            for i in range(3):
                if i:
                    salt += 1
                    writer.touch(salt)
                info = run_pass(vm)
                if i:
                    times["normal"].append(info["last-pass-duration"])
            meta["normal"] = info["metadata-bytes"]
            # And once more with nothing changed.
            times["quiet"].append(run_pass(vm)["last-pass-duration"])
            for kind in KINDS:
                # Each hostile kind changes every page before each pass.
                for _ in range(2):
                    salt += 1
                    writer.fill(kind, salt)
                    info = run_pass(vm)
                    times[kind].append(info["last-pass-duration"])
                    meta[kind] = max(meta.get(kind, 0),
                                     info["metadata-bytes"])
                b = info["backends"][0]
                check(b["resident-pages"] == PAGES,
                      "%s: %d resident pages" % (kind, b["resident-pages"]))
                if kind != "flip":
                    check(b["volatile-pages"] == PAGES,
                          "%s: %d volatile pages" % (kind,
                                                     b["volatile-pages"]))
        # The fastest normal pass: the strictest baseline.
        normal = min(times["normal"])
        print("  normal pass %.3f s, metadata %.2f B/page; with nothing "
              "changed %.3f s" % (normal / 1e9, meta["normal"] / PAGES,
                                  min(times["quiet"]) / 1e9))
        for kind in KINDS:
            m = median(times[kind])
            print("  %-9s pass %.3f s, ratio %.2f, metadata %.2f B/page"
                  % (kind, m / 1e9, m / normal, meta[kind] / PAGES))
        for kind in ("normal",) + KINDS:
            check(meta[kind] <= 8 * PAGES, "%s: metadata %.2f bytes per page"
                  % (kind, meta[kind] / PAGES))
        for kind in KINDS:
            ratio = median(times[kind]) / normal
            check(ratio <= RATIO_LIMIT, "%s passes %.2fx slower than normal"
                  % (kind, ratio))
        check(vm.alive(), "QEMU died")
    finally:
        if writer:
            writer.close()
        vm.stop()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("hostile/content", test_hostile_content),
    ]))
