"""The benchmark workloads and the QEMU configurations they run under.

mixed     two VMs under -accel qtest with deterministic content: ~10 %
          zero, ~20 % duplicated inside the VM (a block written twice),
          ~10 % duplicated only across the two VMs, the rest unique and
          stable
volatile  as mixed, and a quarter of the unique pages keep changing: a
          thread rewrites them through qtest for the whole run
guests    two TCG guests booting the test initramfs (build/guest): they
          share /data/shared.bin and the kernel, and add private copies
          of it, zeroes and random data (memdedup.* kernel options)

Layout of one qtest VM (1 GiB by default), in four equal stripes, every
area 2 MiB aligned:

    | zero | dup A | dup A | cross | unique ... | volatile |

'dup A' is the same block twice (its content differs per VM and per
stripe), 'cross' is identical in both VMs and unique within each.  The
volatile quarter of the unique pages is stable in the mixed workload.
The first 2 MiB of guest RAM (legacy PC holes: VGA window, option ROMs,
BIOS shadow) stay untouched.  Pages are a seeded 4 MiB random chunk
repeated, each page stamped with a distinct 64-bit value in its first 8
bytes.  The content is written to an image file once per bench run and
loaded by QEMU's generic loader, which copies it into guest RAM at
machine reset, before any measurement starts (qtest's b64write moves
~90 MB/s here; the loader ~1 GB/s).
"""

import os
import random
import threading
import time

import probe  # noqa: F401  (puts scripts/memdedup/ on the path)
import qmp  # noqa: E402  (scripts/memdedup/qmp.py)
from qtestvm import QEMU  # noqa: F401  (scripts/memdedup/, on probe's path)

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(TOP, "build", "guest")
MiB = 1 << 20
PAGE = 4096
CHUNK = 4 * MiB
SKIP = 2 * MiB                      # legacy holes at the start of RAM
READY = "MEMDEDUP-GUEST-READY"

# Stamp kinds (top byte of a page's first 8 bytes).
K_DUP, K_CROSS, K_UNIQUE, K_VOLATILE = 0xd1, 0xc2, 0xa3, 0xb4


def _mib2(x):
    """x MiB rounded to a multiple of 2 MiB."""
    return max(2, int(round(x / 2.0)) * 2)


class Layout:
    """Where each kind of content lies in one qtest VM's RAM."""

    def __init__(self, vm_mib, stripes=4):
        self.vm_mib = vm_mib
        stripe = vm_mib // stripes
        z = d = c = _mib2(stripe * 0.10)
        u = stripe - z - 2 * d - c
        v = _mib2(u / 4.0)
        self.areas = []         # (kind, start, length, stripe), bytes
        self.segments = []      # (merge-worthy, start, length), bytes
        for s in range(stripes):
            off = s * stripe * MiB
            for kind, mib in (("zero", z), ("dup", d), ("dup", d),
                              ("cross", c), ("unique", u - v),
                              ("volatile", v)):
                self.areas.append((kind, off, mib * MiB, s))
                off += mib * MiB
            m = (z + 2 * d + c) * MiB
            self.segments.append((True, s * stripe * MiB, m))
            self.segments.append((False, s * stripe * MiB + m,
                                  stripe * MiB - m))
        k, start, length, s = self.areas[0]
        self.areas[0] = (k, start + SKIP, length - SKIP, s)

    def total(self, *kinds):
        return sum(a[2] for a in self.areas if a[0] in kinds)

    def expected(self, nvms):
        """What merging can free, in pages: with cross-VM knowledge
        (ideal) and from each VM's own view (no cross-VM board)."""
        zero = self.total("zero") // PAGE * nvms
        dup = self.total("dup") // 2 // PAGE * nvms
        cross = self.total("cross") // PAGE * (nvms - 1)
        return {"ideal_saving_pages": zero + dup + cross,
                "own_view_saving_pages": zero + dup,
                "unique_bytes": self.total("unique", "volatile") * nvms,
                "volatile_bytes": self.total("volatile") * nvms,
                "cross_bytes": self.total("cross") * nvms,
                "merge_worthy_bytes":
                    self.total("zero", "dup", "cross") * nvms,
                "written_bytes": (self.vm_mib * MiB - SKIP) * nvms}

    def kind_of(self, first8):
        """The area a region belongs to, from its first page's stamp."""
        if first8 is None:
            return "absent"
        if first8 == 0:
            return "zero"
        kind = first8 >> 56
        if kind == K_DUP:
            return "dup"
        if kind == K_CROSS:
            return "cross"
        if kind == K_UNIQUE:
            off = (first8 & ((1 << 40) - 1)) * PAGE
            for k, start, length, _ in self.areas:
                if start <= off < start + length:
                    return k
        return "other"

    def census(self, regions):
        """{kind: {"regions": n, "huge": n}} from probe.guest_ram_regions."""
        out = {}
        for _addr, _present, huge, first8 in regions:
            c = out.setdefault(self.kind_of(first8), {"regions": 0,
                                                      "huge": 0})
            c["regions"] += 1
            c["huge"] += huge
        return out

    def describe(self):
        t = self.vm_mib * MiB
        return ("%d MiB per VM: zero %.1f%%, intra-VM duplicate %.1f%%, "
                "cross-VM-only duplicate %.1f%%, unique %.1f%% (a quarter "
                "of it volatile in the volatile workload)" % (
                    self.vm_mib, 100.0 * self.total("zero") / t,
                    100.0 * self.total("dup") / t,
                    100.0 * self.total("cross") / t,
                    100.0 * self.total("unique", "volatile") / t))


def _base_chunk(seed):
    import numpy as np
    return np.frombuffer(random.Random(seed).randbytes(CHUNK),
                         dtype=np.uint8)


def write_image(layout, vm_index, path):
    """Write VM vm_index's RAM content from SKIP to the end into path."""
    import numpy as np
    own, shared = _base_chunk(1000 + vm_index), _base_chunk(7)
    buf = np.empty(CHUNK, dtype=np.uint8)
    stamps = buf.view(np.uint64)[::PAGE // 8]
    with open(path, "wb") as f:
        for kind, start, length, stripe in layout.areas:
            for off in range(0, length, CHUNK):
                n = min(CHUNK, length - off)
                idx = np.arange(off // PAGE, (off + n) // PAGE,
                                dtype=np.uint64)
                if kind == "zero":
                    buf[:n] = 0
                elif kind == "dup":
                    # Both copies of a stripe's block: same content.
                    buf[:] = own
                    stamps[:n // PAGE] = idx | np.uint64(
                        (K_DUP << 56) | (vm_index << 48) | (stripe << 40))
                elif kind == "cross":
                    # Identical in every VM, unique within each.
                    buf[:] = shared
                    stamps[:n // PAGE] = idx | np.uint64(
                        (K_CROSS << 56) | (stripe << 40))
                else:               # unique, volatile
                    buf[:] = own
                    stamps[:n // PAGE] = (idx + np.uint64(start // PAGE)) | \
                        np.uint64((K_UNIQUE << 56) | (vm_index << 48))
                f.write(buf[:n].tobytes())


def loader_args(image, base_gpa):
    return ["-device", "loader,file=%s,addr=0x%x,force-raw=on"
            % (image, base_gpa + SKIP)]


class PeriodicWriter(threading.Thread):
    """One sweep of qtest writes every `period` seconds, until stop():
    sweep(n) (n from 1) gives [(qtest, lines)], each list sent through
    its qtest socket.  Counts sweeps and pages (lines) written; an error
    is kept in .error for the driver."""

    def __init__(self, period):
        super().__init__(daemon=True)
        self.period = period
        self.halt = threading.Event()
        self.sweeps = 0
        self.pages_written = 0
        self.error = None

    def sweep(self, n):
        raise NotImplementedError

    def run(self):
        try:
            while not self.halt.is_set():
                t0 = time.monotonic()
                n = self.sweeps + 1
                for qt, lines in self.sweep(n):
                    qt.pipeline(lines)
                    self.pages_written += len(lines)
                self.sweeps = n
                self.halt.wait(max(0.0, self.period -
                                   (time.monotonic() - t0)))
        except BaseException as e:  # noqa: B902  reported by the driver
            if not self.halt.is_set():
                self.error = e

    def stop(self):
        self.halt.set()
        self.join(30)


class VolatileWriter(PeriodicWriter):
    """Rewrites the volatile pages of each VM through its qtest socket
    (8 bytes per page, at offset 8: the page stays unique)."""

    def __init__(self, targets, layout, period):
        """targets: [(qtest, base_gpa)], one per VM."""
        super().__init__(period)
        self.targets = targets
        self.layout = layout

    def sweep(self, n):
        out = []
        for qt, base in self.targets:
            lines = []
            for kind, start, length, _ in self.layout.areas:
                if kind != "volatile":
                    continue
                for p in range(start // PAGE, (start + length) // PAGE):
                    lines.append("writeq 0x%x 0x%x" % (
                        base + p * PAGE + 8, (K_VOLATILE << 56) | n))
            out.append((qt, lines))
        return out


# ---------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------

CONFIGS = {
    "stock": "stock QEMU 7.2: memory-backend-ram,merge=on (all guest RAM "
             "handed to KSM)",
    "targeted": "memdedup: memory-backend-ksm, dedup-policy=targeted, "
                "defaults (one QEMU per VM: no cross-VM board)",
    "board": "memdedup as targeted, both QEMUs on one cross-VM board "
             "(one key)",
    "proxy": "memdedup with both VMs' RAM in one QEMU (two "
             "memory-backend-ksm): the engine sees cross-VM duplicates "
             "directly, what the board approximates",
    "ideal": "stock QEMU with MADV_MERGEABLE placed by hand on exactly the "
             "zero and duplicate ranges (merge=on backends there, merge=off "
             "elsewhere, mem-merge=off)",
    "nomanage": "memdedup with manage-thp=off (QEMU's THP advice kept)",
}
MEMDEDUP_CONFIGS = ("targeted", "board", "proxy", "nomanage")
BOARD_KEY = "memdedup-bench-domain"
ENGINE_ID = "md"
FILL_INTERVAL = 86400000            # ms: no pass while the VMs fill


def _common(name):
    return ["-name", "%s,debug-threads=on" % name]


def _engine(board=None):
    """The memdedup object, with the residency watch; with a board
    path, on that board."""
    opts = "memdedup,id=%s,rescan-interval=%d,residency-watch=on" % (
        ENGINE_ID, FILL_INTERVAL)
    if not board:
        return ["-object", opts]
    return ["-object", "secret,id=bk,data=" + BOARD_KEY,
            "-object", opts + ",board=%s,board-key=bk" % board]


def _ksm_backend(bid, mib, config):
    s = "memory-backend-ksm,id=%s,size=%dM" % (bid, mib)
    if config == "nomanage":
        s += ",manage-thp=off"
    return ["-object", s]


def qtest_processes(config, layout, nvms=2, board=None, dump=True):
    """The qtest QEMU processes of a configuration: a list of
    (name, args, [(vm_index, base_gpa)]) (without the loader).  board:
    the board file of the "board" configuration.  dump=False: the
    backends with dump=off (host.dontdump_range finds their RAM)."""
    procs = _qtest_processes(config, layout, nvms, board)
    if not dump:
        for _, args, _ in procs:
            args[:] = [a + ",dump=off" if a.startswith("memory-backend-")
                       else a for a in args]
    return procs


def _qtest_processes(config, layout, nvms, board):
    mib = layout.vm_mib
    procs = []
    if config == "proxy":
        args = _common("proxy") + ["-machine", "pc",
                                   "-m", "%dM" % (mib * nvms)] + _engine()
        for i in range(nvms):
            args += _ksm_backend("m%d" % i, mib, config) + [
                "-numa", "node,nodeid=%d,memdev=m%d" % (i, i)]
        return [("proxy", args, [(i, i * mib * MiB) for i in range(nvms)])]
    for i in range(nvms):
        name = "%s%d" % (config, i)
        if config == "stock":
            args = ["-machine", "pc,memory-backend=m0", "-m", "%dM" % mib,
                    "-object", "memory-backend-ram,id=m0,size=%dM,merge=on"
                    % mib]
        elif config in ("targeted", "nomanage", "board"):
            args = ["-machine", "pc,memory-backend=m0",
                    "-m", "%dM" % mib] + \
                _engine(board if config == "board" else None) + \
                _ksm_backend("m0", mib, config)
        elif config == "ideal":
            args = ["-machine", "pc,mem-merge=off", "-m", "%dM" % mib]
            for j, (merge, _start, length) in enumerate(layout.segments):
                args += ["-object",
                         "memory-backend-ram,id=n%d,size=%dM,merge=%s"
                         % (j, length // MiB, "on" if merge else "off"),
                         "-numa", "node,nodeid=%d,memdev=n%d" % (j, j)]
        else:
            raise ValueError("unknown configuration %s" % config)
        procs.append((name, _common(name) + args, [(i, 0)]))
    return procs


def wait_engine_idle(vms, timeout=120):
    """Wait until the engines of @vms (memdedup QEMUs, qmp.Qemu) are
    between passes."""
    deadline = time.monotonic() + timeout
    for vm in vms:
        while time.monotonic() < deadline:
            if vm.qmp.cmd("query-memdedup")["state"] != "scanning":
                break
            time.sleep(0.1)


def start_engine(vm, interval_ms):
    """t = 0 for the engine of @vm (idle, as qtest_processes or
    guest_args started it): a pass at once, then one every
    @interval_ms.  The pass first: the new interval would start one at
    once (the last pass was before the VM filled), and memdedup-scan
    during it would queue a second."""
    vm.qmp.cmd("memdedup-scan")
    vm.qmp.cmd("qom-set", path="/objects/" + ENGINE_ID,
               property="rescan-interval", value=interval_ms)


def guest_args(config, mem_mib, name, append, board=None):
    args = _common(name) + [
        "-accel", "tcg", "-m", "%dM" % mem_mib, "-nodefaults", "-no-reboot",
        "-machine", "pc,memory-backend=ram0",
        "-kernel", os.path.join(GUEST, "vmlinuz"),
        "-initrd", os.path.join(GUEST, "initramfs.cpio.gz"),
        "-append", "console=ttyS0 quiet panic=-1 " + append]
    if config == "stock":
        args += ["-object", "memory-backend-ram,id=ram0,size=%dM,merge=on"
                 % mem_mib]
    elif config in ("targeted", "nomanage", "board"):
        args += _engine(board if config == "board" else None) + \
            _ksm_backend("ram0", mem_mib, config)
    else:
        raise ValueError("%s does not apply to real guests" % config)
    return args


def have_guest_image():
    return all(os.path.exists(os.path.join(GUEST, f))
               for f in ("vmlinuz", "initramfs.cpio.gz"))


def start_guests(config, workdir, n, mem_mib, append, boot_timeout, out):
    """Boot n guests, appending each qmp.Qemu to `out` as it starts (the
    caller stops them whatever happens); return when all are ready."""
    for i in range(n):
        name = "%s%d" % (config, i)
        vm = qmp.Qemu(QEMU, guest_args(config, mem_mib, name, append,
                                       os.path.join(workdir, "board")),
                      workdir, name)
        out.append(vm)
        vm.start()
    deadline = time.monotonic() + boot_timeout
    pending = list(out)
    while pending:
        for vm in list(pending):
            if READY in vm.serial():
                pending.remove(vm)
            elif not vm.alive():
                raise RuntimeError("%s exited during boot: %s"
                                   % (vm.name, vm.stderr()[-500:]))
        if pending and time.monotonic() > deadline:
            raise RuntimeError("guests not ready after %d s (see %s)"
                               % (boot_timeout, workdir))
        time.sleep(0.5)
