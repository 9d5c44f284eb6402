"""What the kernel says of a process, for the tests and the bench alike
(scripts/memdedup/ is on both's path)."""

import os

PAGE = 4096
# /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h).
KPF_KSM = 21
KPF_THP = 22
KPF_ZERO_PAGE = 24
# /proc/PID/pagemap entry bits.
PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_PFN_MASK = (1 << 55) - 1


def host_address(pid, size):
    """Start of the only VMA of exactly @size bytes in process @pid: a
    backend's RAM, looked up before registration splits it."""
    found = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            s, e = (int(x, 16) for x in line.split()[0].split("-"))
            if e - s == size:
                found.append(s)
    if len(found) != 1:
        raise AssertionError("%d VMAs of %d bytes" % (len(found), size))
    return found[0]


def kernel_residency(pid, base, size):
    """Which pages of [base, base + size) in process @pid hold memory of
    their own, as the kernel has it: present in pagemap, not swapped,
    and not the kernel's (small or huge) zero page by /proc/kpageflags.
    A bytearray with one 0/1 flag per page; None when PFNs or page flags
    cannot be read (not root).  This is what the engine calls resident,
    whatever this kernel does on a read fault (some map the zero page,
    some allocate a zero-filled page or THP)."""
    pages = size // PAGE
    try:
        pm = open("/proc/%d/pagemap" % pid, "rb", buffering=0)
        kf = open("/proc/kpageflags", "rb", buffering=0)
    except OSError:
        return None
    out = bytearray(pages)
    with pm, kf:
        raw = os.pread(pm.fileno(), pages * 8, base // PAGE * 8)
        if len(raw) != pages * 8:
            return None
        entries = memoryview(raw).cast("Q")
        flags = {}
        for i in range(pages):
            e = entries[i]
            if not e & PM_PRESENT or e & PM_SWAPPED:
                continue
            pfn = e & PM_PFN_MASK
            if not pfn:
                return None         # PFNs hidden
            f = flags.get(pfn)
            if f is None:
                data = os.pread(kf.fileno(), 8, pfn * 8)
                if len(data) != 8:
                    return None
                f = flags[pfn] = int.from_bytes(data, "little")
            if not f >> KPF_ZERO_PAGE & 1:
                out[i] = 1
    return out


def thread_cpu_ns(pid, prefix):
    """CPU time (ns) of @pid's live threads whose name starts with
    @prefix (QEMU names its threads with -name ...,debug-threads=on),
    from their schedstat, or stat's clock ticks where the kernel has no
    schedstat."""
    total = 0
    task = "/proc/%d/task" % pid
    try:
        tids = os.listdir(task)
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(os.path.join(task, tid, "comm")) as f:
                if not f.read().startswith(prefix):
                    continue
            try:
                with open(os.path.join(task, tid, "schedstat")) as f:
                    total += int(f.read().split()[0])
            except OSError:
                with open(os.path.join(task, tid, "stat")) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) * \
                    (10 ** 9 // os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            continue                # the thread ended
    return total
