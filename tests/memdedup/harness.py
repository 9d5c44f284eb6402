"""Shared pieces of the memdedup integration tests.

start_qtest_vm  QEMU under -accel qtest (scripts/memdedup/qtestvm.py,
           shared with the bench, has QTest, run_pass and the rest)
run_tests  runs test functions (all, or those named on the command
           line: test_migration.py precopy), prints one line per test
           and the closing line "integration: N passed, N failed, N
           skipped"
Skip       raise it to skip a test (host lacks a feature)
"""

import contextlib
import errno
import math
import os
import re
import socket
import sys
import tempfile
import time
import traceback

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "scripts", "memdedup"))

import qmp  # noqa: E402  (scripts/memdedup/qmp.py)
import host  # noqa: E402  (scripts/memdedup/host.py)
import qtestvm  # noqa: E402  (scripts/memdedup/qtestvm.py)

# The tests take these modules from here too (from harness import qmp;
# host and qtestvm are on the path harness sets).
SHARED_MODULES = (qmp, host, qtestvm)

QEMU = qtestvm.QEMU         # tests may point it elsewhere (test_faults)
GUEST = os.path.join(TOP, "build", "guest")
PAGE = 4096
MiB = 1 << 20


class Skip(Exception):
    """The host cannot run this test."""


def start_qtest_vm(workdir, name, extra_args, wrapper=()):
    """QEMU (harness.QEMU) under -accel qtest with a QMP socket; returns
    (vm, qtest).  wrapper: a command QEMU runs under (e.g. setpriv and
    its options)."""
    return qtestvm.start_qtest_vm(QEMU, workdir, name, extra_args, wrapper)


# QEMU as an unprivileged user, the way libvirt's system daemon runs it.
AS_NOBODY = ("setpriv", "--reuid", "nobody", "--regid", "nogroup",
             "--clear-groups", "--inh-caps", "-all", "--bounding-set", "-all")


def nobody_workdir(workdir):
    """A new directory in @workdir where QEMUs run as nobody
    (AS_NOBODY) can create their sockets and logs."""
    shared = os.path.join(workdir, "nobody")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    os.chmod(workdir, 0o711)
    return shared


@contextlib.contextmanager
def open_umask():
    """What is created inside (the qtest sockets) is writable by nobody."""
    umask = os.umask(0)
    try:
        yield
    finally:
        os.umask(umask)


def need_ksm_root():
    """Skip unless the host has KSM and we may start ksmd."""
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    if os.geteuid() != 0:
        raise Skip("not root: cannot start ksmd")


@contextlib.contextmanager
def borrowed_ksm(**knobs):
    """The KSM knobs set as asked for the block (host.KsmKnobs), and
    restored after; Skip where KSM or root is missing."""
    need_ksm_root()
    with host.KsmKnobs(**knobs) as ksm:
        if not ksm.active:
            raise Skip(ksm.reason)
        yield ksm


@contextlib.contextmanager
def thp_allowed(**ksm_knobs):
    """Transparent huge pages at least on madvise, and the KSM knobs
    @ksm_knobs if any are given, borrowed for the block and restored
    after it; Skip where the host cannot lend them."""
    with contextlib.ExitStack() as stack:
        thp = stack.enter_context(host.ThpMode())
        ksm = stack.enter_context(host.KsmKnobs(**ksm_knobs)) \
            if ksm_knobs else None
        if not thp.active or (ksm and not ksm.active):
            raise Skip((ksm and ksm.reason) or thp.reason)
        if host.thp_read() == "never":
            thp.set("madvise")
        yield


def write_meminfo(path, available_kb):
    """The host's /proc/meminfo at @path (which QEMU reads instead when
    the memdedup object's x-meminfo names it), with MemAvailable
    replaced if given."""
    with open("/proc/meminfo") as f:
        lines = f.readlines()
    with open(path + ".tmp", "w") as f:
        for line in lines:
            if available_kb is not None and line.startswith("MemAvailable:"):
                line = "MemAvailable:   %d kB\n" % available_kb
            f.write(line)
    os.rename(path + ".tmp", path)


def backend(vm, backend_id):
    for b in vm.qmp.cmd("query-memdedup")["backends"]:
        if b["id"] == backend_id:
            return b
    raise KeyError(backend_id)


# The known content of the real-KSM and migration tests: in a 256 MiB
# guest, 32 MiB of zeroes, one 16 MiB block written four times and 64 MiB
# of random data (offset, length).
KNOWN_ZERO = (16 * MiB, 32 * MiB)
KNOWN_DUP_BLOCK, KNOWN_DUP_AT = 16 * MiB, 64 * MiB
KNOWN_UNIQUE = (160 * MiB, 64 * MiB)
KNOWN_CANDIDATES = KNOWN_ZERO[1] + 4 * KNOWN_DUP_BLOCK   # registered bytes


def fill_known(qt, rnd):
    """Write the known content through qtest, drawing from rnd."""
    dup = rnd.randbytes(KNOWN_DUP_BLOCK)
    qt.memset(KNOWN_ZERO[0], KNOWN_ZERO[1], 0)
    for i in range(4):
        qt.write(KNOWN_DUP_AT + i * KNOWN_DUP_BLOCK, dup)
    qt.write(KNOWN_UNIQUE[0], rnd.randbytes(KNOWN_UNIQUE[1]))


def digest_known(qt):
    """Hash the known content as the guest sees it.  Only what
    fill_known wrote is read: reading never-written guest RAM maps the
    kernel's zero page there on some kernels and allocates a zero-filled
    page (or THP) on others, which would change what a later pass
    counts."""
    import hashlib
    h = hashlib.sha256()
    for addr, size in (KNOWN_ZERO, (KNOWN_DUP_AT, 4 * KNOWN_DUP_BLOCK),
                       KNOWN_UNIQUE):
        h.update(qt.read(addr, size))
    return h.hexdigest()


# The test guest (make guest): boot arguments and a shell on its ttyS1.
GUEST_BOOT_TIMEOUT = 240      # seconds, TCG on a loaded 2-core host


def guest_boot_args(zero=0, shared=0, copies=0, unique=0, append=""):
    """-kernel/-initrd/-append for the test guest, filling the given MiB
    of zero, shared (copies times) and unique data at boot."""
    kernel = os.path.join(GUEST, "vmlinuz")
    initrd = os.path.join(GUEST, "initramfs.cpio.gz")
    if not (os.path.exists(kernel) and os.path.exists(initrd)):
        raise Skip("no guest image: run make guest")
    cmdline = ("console=ttyS0 quiet panic=-1 memdedup.zero=%d "
               "memdedup.shared=%d memdedup.copies=%d memdedup.unique=%d %s"
               % (zero, shared, copies, unique, append))
    return ["-accel", "tcg", "-no-reboot", "-nodefaults", "-kernel", kernel,
            "-initrd", initrd, "-append", cmdline.strip()]


class GuestShell:
    """Shell commands for the test guest, sent on its second serial port;
    the guest prints their output and "MEMDEDUP-CMD-DONE <status>" on its
    console (the serial log)."""

    def __init__(self, workdir, name="guest"):
        self.path = os.path.join(workdir, name + ".cmd")
        self.sock = None

    def args(self):
        # COM2 whatever the order of the options: the log is -serial.
        return ["-chardev", "socket,id=guestcmd,path=%s,server=on,wait=off"
                % self.path, "-device", "isa-serial,chardev=guestcmd,index=1"]

    def run(self, vm, cmd, timeout=180):
        """Run cmd in the guest; return (status, console output)."""
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(self.path)
        log = vm.serial()
        start = len(log)
        self.sock.sendall((cmd + "\n").encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = vm.serial()[start:]
            m = re.search(r"MEMDEDUP-CMD-DONE (\d+)", out)
            if m:
                return int(m.group(1)), out[:m.start()]
            if not vm.alive():
                break
            time.sleep(0.2)
        raise AssertionError("guest command timed out: %s\n%s"
                             % (cmd, vm.serial()[start:][-2000:]))

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None


host_address = host.host_address
# For the tests: QEMU under qtest (scripts/memdedup/qtestvm.py).
QTest = qtestvm.QTest
run_pass = qtestvm.run_pass
smaps_merged_pages = host.smaps_merged_pages
rss_bytes = host.rss_bytes
smaps_vmas = host.smaps_vmas
mergeable_vmas = host.mergeable_vmas


FINGERPRINT_BITS = 40         # MEMDEDUP_FP_BITS


def fingerprint_slack(distinct):
    """How many pages a pass may count as duplicates beyond the true ones.

    The engine compares 40-bit fingerprints, not content (see the manual's
    "fingerprint"): among `distinct` distinct non-zero pages, about
    distinct^2 / 2^41 pairs collide by accident, and each pair adds at
    most two pages.  The slack covers four times the expected number of
    pages plus two pairs, so an honest engine exceeds it with a chance
    below 1e-4, while a real miscount of a region still fails.
    """
    expected = distinct * distinct / 2 ** FINGERPRINT_BITS
    return 4 + int(math.ceil(4 * expected))


kernel_residency = host.kernel_residency


def expected_registration(resident, classify, threshold=10,
                          region=2 * MiB, kept=()):
    """Bytes the targeted policy registers, from the kernel's residency
    (kernel_residency) and the test's knowledge of the content:
    classify(page) is True for a zero or duplicate page.  A region with
    nothing resident counts only if it is in @kept (regions the engine
    may have seen resident and registered before: it keeps them)."""
    per = region // PAGE
    total = 0
    for r in range(len(resident) // per):
        first = r * per
        res = cand = 0
        for p in range(first, first + per):
            if resident[p]:
                res += 1
                cand += bool(classify(p))
        if res == 0:
            if r in kept:
                total += region
        elif cand and cand * 100 >= threshold * res:
            total += region
    return total


def known_candidate(page):
    """Is guest page @page (a 256 MiB known-content guest, RAM at guest
    physical 0) a zero or duplicate page?  Everything but the random
    range is: fill_known's zero and duplicate ranges, and memory never
    written, which is zero."""
    addr = page * PAGE
    return not KNOWN_UNIQUE[0] <= addr < KNOWN_UNIQUE[0] + KNOWN_UNIQUE[1]


def known_registered_regions():
    """Region numbers (2 MiB) fill_known makes candidates."""
    out = set()
    for start, size in (KNOWN_ZERO, (KNOWN_DUP_AT, 4 * KNOWN_DUP_BLOCK)):
        out.update(range(start // (2 * MiB), (start + size) // (2 * MiB)))
    return out


def has_pagemap_scan():
    """Does /proc/PID/pagemap answer the PAGEMAP_SCAN ioctl (Linux 6.7)?"""
    import fcntl
    import struct
    arg = bytearray(struct.pack("12Q", 96, *([0] * 11)))
    request = (3 << 30) | (96 << 16) | (ord("f") << 8) | 16
    with open("/proc/self/pagemap", "rb") as f:
        try:
            fcntl.ioctl(f.fileno(), request, arg)
        except OSError as e:
            return e.errno != errno.ENOTTY
    return True


def read_fault_allocates(huge=False):
    """Does a read fault on untouched anonymous memory allocate a page of
    its own (True) or map the kernel's zero page (False)?  With @huge,
    in a 2 MiB-aligned MADV_HUGEPAGE mapping (a THP, or the huge zero
    page).  Probed in this process through pagemap and kpageflags; None
    if they cannot be read (not root).  Kernels differ: some allocate a
    zero-filled page (or THP) on a read, and then guest memory that QEMU
    or migration only reads is resident."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    prot_read, map_private_anon, madv_hugepage = 1, 0x22, 14
    length = 4 * MiB
    area = libc.mmap(None, length, prot_read, map_private_anon, -1, 0)
    if area in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        addr = (area + 2 * MiB - 1) & ~(2 * MiB - 1) if huge else area
        if huge:
            libc.madvise(addr, 2 * MiB, madv_hugepage)
        ctypes.c_char.from_address(addr).value      # the read fault
        res = kernel_residency(os.getpid(), addr, PAGE)
        return None if res is None else bool(res[0])
    finally:
        libc.munmap(area, length)


def wait_for(what, cond, timeout=30):
    """Poll cond() until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def select_tests(tests, argv):
    """The tests named on the command line: each argument selects the
    tests whose name is it, ends with "/" + it, or starts with it + "/"
    (test_migration.py precopy, or migration/precopy, or migration);
    all of them without arguments."""
    if not argv:
        return tests
    chosen = [(name, fn) for name, fn in tests
              if any(name == a or name.endswith("/" + a) or
                     name.startswith(a.rstrip("/") + "/") for a in argv)]
    unknown = [a for a in argv if not any(
        name == a or name.endswith("/" + a) or
        name.startswith(a.rstrip("/") + "/") for name, _ in tests)]
    if unknown:
        raise SystemExit("no such test: %s (tests: %s)" % (
            ", ".join(unknown), ", ".join(name for name, _ in tests)))
    return chosen


def run_tests(tests, argv=None):
    """Run (name, fn(workdir)) pairs, or those named in @argv (default:
    the command line; see select_tests); return the exit code."""
    passed = failed = skipped = 0
    tests = select_tests(tests, sys.argv[1:] if argv is None else argv)
    for name, fn in tests:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="memdedup-") as workdir:
            try:
                fn(workdir)
            except Skip as e:
                skipped += 1
                print("SKIP %s: %s" % (name, e), flush=True)
                continue
            except BaseException as e:  # noqa: B902  report, then go on
                failed += 1
                print("FAIL %s (%.1f s): %s" % (name, time.monotonic() - t0,
                                                e), flush=True)
                traceback.print_exc()
                if isinstance(e, KeyboardInterrupt):
                    break
                continue
        passed += 1
        print("PASS %s (%.1f s)" % (name, time.monotonic() - t0), flush=True)
    print("integration: %d passed, %d failed, %d skipped"
          % (passed, failed, skipped), flush=True)
    return 1 if failed else 0
