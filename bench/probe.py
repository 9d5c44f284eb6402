"""What only the benchmarks read of the host: the guest RAM regions of a
QEMU process, the host's description, and the CPU lock shared with
builds.  The kernel readers and the borrowed KSM/THP state they share
with the tests are in scripts/memdedup/host.py.
"""

import contextlib
import fcntl
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts", "memdedup"))
import host  # noqa: E402  (scripts/memdedup/host.py)

PAGE = os.sysconf("SC_PAGE_SIZE")
CPU_LOCK = "/tmp/memdedup-cpu.lock"


@contextlib.contextmanager
def cpu_lock(label):
    """Hold the CPU lock shared with the engineers' builds for a timed
    measurement; wait (and say so) when someone else holds it."""
    fd = os.open(CPU_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("bench: waiting for %s (CPU busy: a build?) before %s"
                  % (CPU_LOCK, label), flush=True)
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("bench: got the CPU lock after %.0f s" %
                  (time.monotonic() - t0), flush=True)
        yield
    finally:
        os.close(fd)      # releases the lock


def host_info():
    info = {"kernel": os.uname().release, "cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    info["ksm"] = {k: host.ksm_read(k) for k in (
        "run", "pages_to_scan", "sleep_millisecs", "use_zero_pages",
        "merge_across_nodes", "max_page_sharing", "smart_scan")}
    with contextlib.suppress(OSError):
        with open(os.path.join(host.KSM_DIR, "advisor_mode")) as f:
            info["ksm"]["advisor_mode"] = f.read().strip()
    info["thp"] = host.thp_read()
    return info


def pagemap_pfns(pid, base, size):
    """The PFN of every page of [base, base + size) in process @pid, a
    numpy uint64 array, 0 where a page is not present (or swapped); None
    when pagemap cannot be read or hides the PFNs (not root)."""
    import numpy as np
    raw = host.pagemap(pid, base, size)
    if raw is None:
        return None
    e = np.frombuffer(raw, dtype=np.uint64)
    present = (e & np.uint64(host.PM_PRESENT | host.PM_SWAPPED)) == \
        np.uint64(host.PM_PRESENT)
    pfns = np.where(present, e & np.uint64(host.PM_PFN_MASK), np.uint64(0))
    if (pfns[present] == 0).any():
        return None                 # PFNs hidden
    return pfns


def kpageflags(pfns, gap=64):
    """/proc/kpageflags flags of the PFNs of a numpy uint64 array (in any
    order, repeated or not), as host.page_flags reads them one by one:
    in sorted runs here, gaps of up to @gap PFNs read through.  None
    when they cannot be read (not root)."""
    import numpy as np
    u = np.unique(pfns)
    flags = np.empty(len(u), dtype=np.uint64)
    if not len(u):
        return flags
    ends = np.append(np.nonzero(np.diff(u) > gap)[0] + 1, len(u))
    try:
        with open("/proc/kpageflags", "rb", buffering=0) as kf:
            start = 0
            for end in ends:
                lo, n = int(u[start]), int(u[end - 1] - u[start]) + 1
                data = os.pread(kf.fileno(), n * 8, lo * 8)
                if len(data) != n * 8:
                    return None
                flags[start:end] = np.frombuffer(data, dtype=np.uint64)[
                    u[start:end] - np.uint64(lo)]
                start = end
    except OSError:
        return None
    return flags[np.searchsorted(u, pfns)]


def guest_ram_regions(pid, region=2 << 20):
    """[(addr, present, huge, first8)] for every region-aligned region of
    the QEMU process's guest RAM mappings: anonymous rw VMAs at least one
    region long that carry THP or KSM advice (VmFlags hg, nh or mg: QEMU
    advises guest RAM, not its heap), merged when adjacent.  huge: the region's first page is part of a THP
    (/proc/kpageflags); first8: its first 8 bytes (None when not
    present: reading would fault it in)."""
    vmas, cur = [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                parts = line.split()
                s, e = (int(x, 16) for x in head.split("-"))
                cur = [s, e, len(parts) == 5 and parts[4] == "0" and
                       parts[1].startswith("rw")]
            elif line.startswith("VmFlags:") and cur is not None:
                flags = set(line.split()[1:])
                if cur[2] and flags & {"hg", "nh", "mg"} and \
                        cur[1] - cur[0] >= region:
                    if vmas and vmas[-1][1] == cur[0]:
                        vmas[-1][1] = cur[1]
                    else:
                        vmas.append([cur[0], cur[1]])
                cur = None
    out = []
    with open("/proc/%d/pagemap" % pid, "rb") as pm, \
            open("/proc/kpageflags", "rb") as kf, \
            open("/proc/%d/mem" % pid, "rb") as mem:
        for s, e in vmas:
            a = (s + region - 1) // region * region
            while a + region <= e:
                pm.seek(a // PAGE * 8)
                ent = int.from_bytes(pm.read(8), "little")
                present = bool(ent >> 63 & 1)
                pfn = ent & ((1 << 55) - 1)
                huge, first8 = False, None
                if present and pfn:
                    kf.seek(pfn * 8)
                    huge = bool(int.from_bytes(kf.read(8), "little") >>
                                host.KPF_THP & 1)
                if present:
                    mem.seek(a)
                    first8 = int.from_bytes(mem.read(8), "little")
                out.append((a, present, huge, first8))
                a += region
    return out
