"""Readers of the kernel's view for the benchmarks, and the host state
they borrow.

Everything here reads /proc and /sys; the only writers are ksm_set()
(used inside a qmp.KsmKnobs block, which restores every knob on exit)
and qmp.ThpMode (which restores the THP mode on exit).
"""

import contextlib
import fcntl
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts", "memdedup"))
import qmp  # noqa: E402  (scripts/memdedup/qmp.py)
import procfs  # noqa: E402  (scripts/memdedup/procfs.py)

PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CPU_LOCK = "/tmp/memdedup-cpu.lock"


def _stat_cpu(path):
    """utime + stime in seconds from a /proc/.../stat file, or None."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): utime, stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid):
    return None if pid is None else _stat_cpu("/proc/%d/stat" % pid)


def thread_cpu(pid, prefix):
    """CPU seconds of pid's live threads whose name starts with prefix
    (QEMU names its threads with -name ...,debug-threads=on)."""
    return procfs.thread_cpu_ns(pid, prefix) / 1e9


def ksm_stat(pid):
    """/proc/PID/ksm_stat as a dict of ints (empty if unreadable)."""
    out = {}
    with contextlib.suppress(OSError):
        with open("/proc/%d/ksm_stat" % pid) as f:
            for line in f:
                k, _, v = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[k] = int(v)
    return out


def rss_pages(pid):
    with contextlib.suppress(OSError):
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1])
    return 0


def smaps_rollup(pid):
    """Fields of /proc/PID/smaps_rollup in bytes."""
    out = {}
    with contextlib.suppress(OSError):
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def smaps_ksm_bytes(pid):
    """Sum of the per-VMA 'KSM:' lines of /proc/PID/smaps."""
    total = 0
    with contextlib.suppress(OSError):
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                if line.startswith("KSM:"):
                    total += int(line.split()[1]) * 1024
    return total


def ksm_set(**values):
    """Write /sys/kernel/mm/ksm knobs (run last).  Only call this inside a
    qmp.KsmKnobs block: it saved the host's values and restores them."""
    for k in sorted(values, key=lambda k: k == "run"):
        if qmp.ksm_read(k) != values[k]:
            with open(os.path.join(qmp.KSM_DIR, k), "w") as f:
                f.write("%d\n" % values[k])


def ksm_reset(timeout=60.0):
    """Forget every KSM page: run=2 (unmerge all), wait, then run=0.
    Returns the seconds it took."""
    t0 = time.monotonic()
    ksm_set(run=2)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if not (qmp.ksm_read("pages_shared") or qmp.ksm_read("pages_sharing")):
            break
        time.sleep(0.1)
    ksm_set(run=0)
    return time.monotonic() - t0


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
    info["ksm"] = {k: qmp.ksm_read(k) for k in (
        "run", "pages_to_scan", "sleep_millisecs", "use_zero_pages",
        "merge_across_nodes", "max_page_sharing", "smart_scan")}
    with contextlib.suppress(OSError):
        with open(os.path.join(qmp.KSM_DIR, "advisor_mode")) as f:
            info["ksm"]["advisor_mode"] = f.read().strip()
    info["thp"] = qmp.thp_read()
    return info


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
                                procfs.KPF_THP & 1)
                if present:
                    mem.seek(a)
                    first8 = int.from_bytes(mem.read(8), "little")
                out.append((a, present, huge, first8))
                a += region
    return out
