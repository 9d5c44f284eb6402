"""Hostile guest content against the engine: the measurement shared by
the functional test (tests/memdedup/test_hostile.py, a loose bound) and
make bench (bench/run.py, the 2x goal).

One QEMU holds a 4 GiB memory-backend-ksm (a million pages), fully
resident.  Guest memory is written directly through /proc/PID/mem
(root), so that every page can change between two passes, and each pass
(unlimited scan rate, started by memdedup-scan) is measured by the CPU
time of QEMU's memdedup threads over it (their /proc schedstat run time:
hashing, index, summaries and registration alike), which, unlike
wall-clock time, does not grow when another process takes the CPU.
The content kinds:

normal     the benchmark's mix: 10 % zero, 30 % copies of one template
           region, 60 % unique; one page rewritten since the previous
           pass (a pass over memory in which nothing at all changed
           keeps the last summary and only hashes: it is measured too,
           as "quiet", but it is not the pass a guest can be compared
           with, since any change starts the summary again)
distinct   every page different from every other, all rewritten before
           each pass (a million fingerprints change every pass)
pairs      every page has exactly one twin, re-paired before each pass:
           the largest possible dup set (half a million entries)
identical  every page the same non-zero content, rewritten each pass:
           a million equal fingerprints
flip       alternate regions switch between pairs and distinct each
           pass: every region's registration changes every pass

Normal and hostile passes are interleaved in rounds, so that a drift of
the machine's speed affects both alike.
"""

import os

import qmp
import host
from host import host_address
# The median of the passes (even counts: the mean of the middle two).
from statistics import median  # noqa: F401  (hostile.median, for callers)

SIZE = 4096 << 20
PAGE = 4096
PAGES = SIZE // PAGE
REGION_PAGES = 512                # 2 MiB regions
CHUNK_PAGES = 16384               # pages per write (64 MiB)
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


def measure(qemu, workdir, run_pass, rounds=3, passes=2, check=None):
    """Start QEMU, measure rounds x passes passes of every kind (and
    rounds x passes normal ones), and return a dict:

      cpu       {kind: [ns of engine CPU per pass]}, kinds normal,
                quiet and KINDS
      wall      the same with last-pass-duration
      metadata  {kind: the largest metadata-bytes}
      pages     PAGES

    check(cond, message) is called on the engine's resident and volatile
    counts after each kind (the test fails on them; the bench only
    records).  Needs root and numpy."""
    import numpy as np
    check = check or (lambda cond, message: None)
    vm = qmp.Qemu(qemu, [
        # debug-threads: the engine's threads carry their names.
        "-machine", "none", "-nodefaults", "-name", "hostile,debug-threads=on",
        "-object", "memdedup,id=engine,scan-rate=1T,"
                   "rescan-interval=3600000",
        # dump=off: a VMA flag no neighbour has, so none merges into it
        # and host_address() finds it.
        "-object", "memory-backend-ksm,id=m0,size=%dM,dump=off"
                   % (SIZE >> 20)],
        workdir, "hostile").start()
    writer = None
    cpu = {k: [] for k in ("normal", "quiet") + KINDS}
    wall = {k: [] for k in cpu}
    meta = {}

    def timed(kind):
        before = host.thread_cpu_ns(vm.pid, "memdedup")
        info = run_pass(vm)
        cpu[kind].append(host.thread_cpu_ns(vm.pid, "memdedup") - before)
        wall[kind].append(info["last-pass-duration"])
        meta[kind] = max(meta.get(kind, 0), info["metadata-bytes"])
        return info

    try:
        writer = GuestWriter(np, vm.pid, host_address(vm.pid, SIZE))
        salt = 1
        for _ in range(rounds):
            # Normal: written, one pass to see it (and one to settle its
            # huge pages), then measured, each after one page changed.
            writer.fill("normal", 0)
            run_pass(vm)
            for _ in range(passes):
                salt += 1
                writer.touch(salt)
                timed("normal")
            # And once more with nothing changed.
            timed("quiet")
            for kind in KINDS:
                # Each hostile kind changes every page before each pass.
                for _ in range(passes):
                    salt += 1
                    writer.fill(kind, salt)
                    info = timed(kind)
                b = info["backends"][0]
                check(b["resident-pages"] == PAGES,
                      "%s: %d resident pages" % (kind, b["resident-pages"]))
                if kind != "flip":
                    check(b["volatile-pages"] == PAGES,
                          "%s: %d volatile pages" % (kind,
                                                     b["volatile-pages"]))
        check(vm.alive(), "QEMU died")
    finally:
        if writer:
            writer.close()
        vm.stop()
    return {"cpu": cpu, "wall": wall, "metadata": meta, "pages": PAGES}


def ratios(result):
    """{kind: median engine CPU per pass of @kind / median normal pass}."""
    normal = median(result["cpu"]["normal"])
    if not normal:
        raise RuntimeError("no CPU time measured for the memdedup threads")
    return {k: median(result["cpu"][k]) / normal for k in KINDS}
