"""The host kernel, for the tests and the bench alike (scripts/memdedup/
is on both's path): what it says of a process (procfs), and its KSM and
THP state (sysfs), read, borrowed and given back.

Readers    host_address, pagemap, page_flags, kernel_residency,
           ksm_pages, thread_cpu_ns, cpu_seconds, cpu_busy_seconds,
           rss_bytes, smaps_vmas, mergeable_vmas, smaps_merged_pages,
           smaps_rollup, ksm_stat, ksmd_pid, ksm_read, thp_read, meminfo
KsmKnobs   saves, sets and restores the /sys/kernel/mm/ksm knobs
           (ksm_set and ksm_reset write them inside such a block)
ThpMode    saves, sets and restores the transparent huge page mode
MaxMapCount saves, sets and restores vm.max_map_count
shielded   a context manager that ignores SIGINT/SIGTERM/SIGHUP, so that
           cleanup cannot be interrupted half-way
"""

import contextlib
import errno
import fcntl
import os
import signal
import sys
import time

KSM_DIR = "/sys/kernel/mm/ksm"
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
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


def dontdump_range(pid):
    """(start, end) of the VM_DONTDUMP memory of process @pid (not the
    kernel's PFN mappings, vvar and the like), which must be one
    contiguous run: the RAM of a backend with dump=off, however
    registration split it into VMAs."""
    runs = []
    for s, e, fields in smaps_vmas(pid):
        flags = fields.get("VmFlags", "").split()
        if "dd" in flags and "pf" not in flags:
            if runs and runs[-1][1] == s:
                runs[-1][1] = e
            else:
                runs.append([s, e])
    if len(runs) != 1:
        raise AssertionError("%d runs of VM_DONTDUMP mappings" % len(runs))
    return tuple(runs[0])


def pagemap(pid, base, size):
    """The /proc/PID/pagemap entries of [base, base + size) in process
    @pid, 8 bytes a page (PM_* bits, the PFN where root may see it), or
    None when they cannot be read."""
    try:
        with open("/proc/%d/pagemap" % pid, "rb", buffering=0) as pm:
            raw = os.pread(pm.fileno(), size // PAGE * 8, base // PAGE * 8)
    except OSError:
        return None
    return raw if len(raw) == size // PAGE * 8 else None


def page_flags(pid, base, size):
    """{page index: /proc/kpageflags flags} of the present (not swapped)
    pages of [base, base + size) in process @pid; None when PFNs or page
    flags cannot be read (not root)."""
    raw = pagemap(pid, base, size)
    if raw is None:
        return None
    try:
        kf = open("/proc/kpageflags", "rb", buffering=0)
    except OSError:
        return None
    out, flags = {}, {}
    with kf:
        entries = memoryview(raw).cast("Q")
        for i in range(len(entries)):
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
            out[i] = f
    return out


def kernel_residency(pid, base, size):
    """Which pages of [base, base + size) in process @pid hold memory of
    their own, as the kernel has it: present in pagemap, not swapped,
    and not the kernel's (small or huge) zero page by /proc/kpageflags.
    A bytearray with one 0/1 flag per page; None when PFNs or page flags
    cannot be read (not root).  This is what the engine calls resident,
    whatever this kernel does on a read fault (some map the zero page,
    some allocate a zero-filled page or THP)."""
    flags = page_flags(pid, base, size)
    if flags is None:
        return None
    out = bytearray(size // PAGE)
    for i, f in flags.items():
        if not f >> KPF_ZERO_PAGE & 1:
            out[i] = 1
    return out


def ksm_pages(pid, base, size):
    """Pages of [base, base + size) in process @pid that map a KSM page
    (KPF_KSM), or None when page flags cannot be read."""
    flags = page_flags(pid, base, size)
    if flags is None:
        return None
    return sum(f >> KPF_KSM & 1 for f in flags.values())


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


def vmstat(name):
    """A counter of /proc/vmstat (e.g. cow_ksm, the kernel's writes to
    KSM pages, host wide), or None where this kernel has none."""
    with open("/proc/vmstat") as f:
        for line in f:
            key, value = line.split()
            if key == name:
                return int(value)
    return None


def meminfo(field):
    """A /proc/meminfo field (MemAvailable, AnonHugePages, ...) in bytes,
    0 if the kernel has none of that name."""
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name == field:
                return int(rest.split()[0]) * 1024
    return 0


def rss_bytes(pid):
    """Resident set size of process @pid in bytes (VmRSS), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def smaps_vmas(pid):
    """[(start, end, fields)] of a process's VMAs in /proc/PID/smaps;
    fields maps each line's name ('AnonHugePages', 'VmFlags', ...) to the
    rest of that line."""
    out = []
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                s, e = head.split("-")
                out.append((int(s, 16), int(e, 16), {}))
            elif out and ":" in head:
                name, rest = line.split(":", 1)
                out[-1][2][name] = rest.strip()
    return out


def mergeable_vmas(pid):
    """[(start, end)] of the VMAs of @pid with the 'mg' (VM_MERGEABLE)
    flag."""
    return [(s, e) for s, e, fields in smaps_vmas(pid)
            if "mg" in fields.get("VmFlags", "").split()]


def smaps_merged_pages(pid):
    """Pages of process @pid mapped to KSM pages (the sum of its smaps
    KSM: lines); 0 when the process is gone."""
    total = 0
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                if line.startswith("KSM:"):
                    total += int(line.split()[1]) * 1024 // PAGE
    except OSError:
        return 0
    return total


def smaps_rollup(pid):
    """Fields of /proc/PID/smaps_rollup in bytes (empty if unreadable)."""
    out = {}
    with contextlib.suppress(OSError):
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


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


def cpu_seconds(pid):
    """utime + stime of process @pid in seconds, or None (also for no
    @pid)."""
    if pid is None:
        return None
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): utime, stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds():
    """CPU seconds the host's CPUs spent busy since boot, all of them
    together (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest: in user)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _raise_exit(signum, frame):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def shielded():
    """Ignore SIGINT/SIGTERM/SIGHUP inside the block (for cleanup)."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ksmd_pid():
    """PID of the ksmd kernel thread, or None if not visible here."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                with open("/proc/%s/comm" % pid) as f:
                    if f.read().strip() == "ksmd":
                        return int(pid)
    return None


def ksm_read(name):
    """A /sys/kernel/mm/ksm value as int, or None."""
    try:
        with open(os.path.join(KSM_DIR, name)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ksm_set(**values):
    """Write /sys/kernel/mm/ksm knobs (run last).  Only call this inside a
    KsmKnobs block: it saved the host's values and restores them."""
    for k in sorted(values, key=lambda k: k == "run"):
        if ksm_read(k) != values[k]:
            with open(os.path.join(KSM_DIR, k), "w") as f:
                f.write("%d\n" % values[k])


def advisor_mode():
    """The KSM advisor's mode ("none" or "scan-time"), or None where the
    kernel has no advisor (before Linux 6.7)."""
    try:
        with open(os.path.join(KSM_DIR, "advisor_mode")) as f:
            words = f.read().split()
    except OSError:
        return None
    chosen = [w[1:-1] for w in words if w.startswith("[")]
    return chosen[0] if chosen else None


def set_advisor_mode(mode):
    """Write the advisor's mode.  A change resets the advisor's state:
    to none, pages_to_scan goes back to the kernel's default; to
    scan-time, the advisor starts again from advisor_min_pages_to_scan."""
    with open(os.path.join(KSM_DIR, "advisor_mode"), "w") as f:
        f.write(mode + "\n")


@contextlib.contextmanager
def borrowed_advisor():
    """Give the advisor's mode back as found, on every exit path.  Use it
    inside a KsmKnobs block: that turns SIGTERM and SIGHUP into
    exceptions, and restores pages_to_scan after this (the kernel takes
    pages_to_scan only while the advisor is off)."""
    saved = advisor_mode()
    try:
        yield saved
    finally:
        if saved is not None and advisor_mode() != saved:
            with shielded():
                set_advisor_mode(saved)


def ksm_reset(timeout=60.0):
    """Forget every KSM page: run=2 (unmerge all), wait, then run=0
    (inside a KsmKnobs block).  Returns the seconds it took."""
    t0 = time.monotonic()
    ksm_set(run=2)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if not (ksm_read("pages_shared") or ksm_read("pages_sharing")):
            break
        time.sleep(0.1)
    ksm_set(run=0)
    return time.monotonic() - t0


class KsmKnobs:
    """with KsmKnobs(run=1, pages_to_scan=1000): ...

    Saves the KSM knobs, sets the requested ones, and restores every
    saved value on exit, even on an exception, SIGINT, SIGTERM or SIGHUP
    (SIGINT raises KeyboardInterrupt, the others SystemExit).  'run' is
    set and restored last.  merge_across_nodes and max_page_sharing can
    only change while no KSM page is shared: when the kernel refuses
    (EBUSY), everything is unmerged first (run=2, which every KSM user of
    the host pays for) and run is put back.  A failure to set or restore
    them is reported in .errors, not fatal.  Without write access,
    .active is False and nothing changes.

    ksmd forgets the KSM pages of exited processes only while it runs, so
    before stopping it again, restore() gives it up to `settle` seconds
    to drop them: exit KsmKnobs after the processes it served.  Users are
    serialized by a lock file: a second one waits in __enter__.
    """

    KNOBS = ("pages_to_scan", "sleep_millisecs", "use_zero_pages",
             "smart_scan", "max_page_sharing", "merge_across_nodes", "run")
    # Knobs the kernel changes only while no KSM page is shared.
    UNSHARED = ("max_page_sharing", "merge_across_nodes")
    UNMERGE_TIMEOUT = 60.0        # seconds for run=2 to unshare everything

    def __init__(self, settle=5.0, **want):
        unknown = set(want) - set(self.KNOBS)
        if unknown:
            raise ValueError("unknown KSM knobs: %s" % ", ".join(unknown))
        self.want = want
        self.settle = settle
        self.baseline = {}
        self.saved = {}
        self.active = False
        self.reason = None
        self.errors = []
        self._old_handlers = {}
        self._lockfd = None

    def set(self, name, value):
        """Change one borrowed knob while borrowed (restored on exit)."""
        if name not in self.want:
            raise ValueError("%s is not borrowed" % name)
        if self.active:
            self._write(name, value)

    def _write(self, name, value):
        if ksm_read(name) == value:
            return
        try:
            with open(os.path.join(KSM_DIR, name), "w") as f:
                f.write("%d\n" % value)
        except OSError as e:
            if e.errno == errno.EBUSY and name in self.UNSHARED:
                self._write_unshared(name, value)
                return
            self.errors.append("%s=%d: %s" % (name, value, e.strerror))

    def _write_unshared(self, name, value):
        """Unmerge every KSM page (run=2), write name, put run back."""
        run = ksm_read("run")
        self._write("run", 2)
        deadline = time.monotonic() + self.UNMERGE_TIMEOUT
        while (ksm_read("pages_shared") or 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            with open(os.path.join(KSM_DIR, name), "w") as f:
                f.write("%d\n" % value)
        except OSError as e:
            self.errors.append("%s=%d (after unmerging): %s"
                               % (name, value, e.strerror))
        if run is not None:
            self._write("run", run)

    def __enter__(self):
        run = os.path.join(KSM_DIR, "run")
        if not os.path.exists(run):
            self.reason = "this kernel has no KSM (%s missing)" % KSM_DIR
            return self
        if os.geteuid() != 0 or not os.access(run, os.W_OK):
            self.reason = "not root: cannot set the KSM knobs"
            return self
        self._old_handlers = {s: signal.signal(s, _raise_exit)
                              for s in _SIGNALS}
        try:
            self._lock()
            for k in self.KNOBS:
                v = ksm_read(k)
                if v is not None and os.access(os.path.join(KSM_DIR, k),
                                               os.W_OK):
                    self.saved[k] = v
            self.baseline = {k: ksm_read(k) or 0
                             for k in ("pages_shared", "pages_sharing")}
            self.active = True
            for k in self.KNOBS:          # everything else first, run last
                if k in self.want and k in self.saved:
                    self._write(k, self.want[k])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _lock(self):
        """One KsmKnobs user at a time on this host (demo, tests, bench):
        otherwise each would restore what another had set."""
        d = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
        self._lockfd = os.open(os.path.join(d, "memdedup-ksm.lock"),
                               os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lockfd, 32, 0).decode(errors="replace")
            print("KsmKnobs: waiting for another user of the KSM knobs "
                  "(pid %s)" % (holder.strip() or "?"), file=sys.stderr,
                  flush=True)
            fcntl.flock(self._lockfd, fcntl.LOCK_EX)
        os.ftruncate(self._lockfd, 0)
        os.pwrite(self._lockfd, b"%d\n" % os.getpid(), 0)

    def _unlock(self):
        if self._lockfd is not None:
            os.close(self._lockfd)        # releases the flock
            self._lockfd = None

    def restore(self):
        if not self.active:
            return
        with shielded():
            if self.saved.get("run") == 0 and ksm_read("run") == 1:
                self._settle()
            before = len(self.errors)
            for k in self.KNOBS:          # run is last in KNOBS
                if k in self.saved:
                    self._write(k, self.saved[k])
            self.active = False
            for e in self.errors[before:]:
                print("KsmKnobs: could not restore %s" % e, file=sys.stderr)

    def _settle(self):
        """Wait until the KSM page counters are back to their values at
        entry, or ksmd has done two more full scans, or settle seconds."""
        deadline = time.monotonic() + self.settle
        scans = ksm_read("full_scans")
        while time.monotonic() < deadline:
            if all((ksm_read(k) or 0) <= v for k, v in self.baseline.items()):
                return
            if scans is not None and (ksm_read("full_scans") or 0) >= scans + 2:
                return
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.restore()
        self._unlock()
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}
        return False


THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_read():
    """The host's THP mode ('always', 'madvise' or 'never'), or None."""
    try:
        with open(THP_ENABLED) as f:
            text = f.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


class ThpMode:
    """with ThpMode() as thp: thp.set("never"); ...

    Saves /sys/kernel/mm/transparent_hugepage/enabled on entry and
    restores it on exit, even on an exception, SIGINT, SIGTERM or SIGHUP
    (turned into KeyboardInterrupt / SystemExit as in KsmKnobs).  set()
    changes the mode inside the block.  Without write access, .active is
    False and set() raises PermissionError.  Users are serialized by a
    lock file, like KsmKnobs.
    """

    def __init__(self):
        self.saved = None
        self.active = False
        self.reason = None
        self._old_handlers = {}
        self._lockfd = None

    def __enter__(self):
        if thp_read() is None:
            self.reason = "this kernel has no THP (%s)" % THP_ENABLED
            return self
        if os.geteuid() != 0 or not os.access(THP_ENABLED, os.W_OK):
            self.reason = "not root: cannot set the THP mode"
            return self
        self._old_handlers = {s: signal.signal(s, _raise_exit)
                              for s in _SIGNALS}
        try:
            d = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
            self._lockfd = os.open(os.path.join(d, "memdedup-thp.lock"),
                                   os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lockfd, fcntl.LOCK_EX)
            self.saved = thp_read()
            self.active = True
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def set(self, mode):
        if not self.active:
            raise PermissionError(self.reason or "ThpMode not entered")
        if thp_read() != mode:
            with open(THP_ENABLED, "w") as f:
                f.write(mode + "\n")
        if thp_read() != mode:
            raise OSError("THP mode is %s, wanted %s" % (thp_read(), mode))

    def restore(self):
        if not self.active:
            return
        with shielded():
            try:
                if thp_read() != self.saved:
                    with open(THP_ENABLED, "w") as f:
                        f.write(self.saved + "\n")
            except OSError as e:
                print("ThpMode: could not restore %s: %s"
                      % (self.saved, e.strerror), file=sys.stderr)
            self.active = False

    def __exit__(self, *exc):
        self.restore()
        if self._lockfd is not None:
            os.close(self._lockfd)
            self._lockfd = None
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}
        return False


MAX_MAP_COUNT = "/proc/sys/vm/max_map_count"


class MaxMapCount:
    """with MaxMapCount() as m: m.set(n) ...

    Borrows vm.max_map_count: saves it on entry and restores it on exit,
    even on an exception, SIGINT, SIGTERM or SIGHUP (as host.KsmKnobs
    does).  The limit is global: keep the window short and the value
    above what other processes use.
    """

    def __init__(self):
        self.saved = None
        self._old = {}

    def __enter__(self):
        if os.geteuid() != 0 or not os.access(MAX_MAP_COUNT, os.W_OK):
            raise PermissionError("not root: cannot set vm.max_map_count")
        self._old = {s: signal.signal(s, _raise_exit)
                     for s in _SIGNALS}
        with open(MAX_MAP_COUNT) as f:
            self.saved = int(f.read())
        return self

    def set(self, value):
        with open(MAX_MAP_COUNT, "w") as f:
            f.write("%d\n" % value)

    def __exit__(self, *exc):
        with shielded():
            if self.saved is not None:
                self.set(self.saved)
                with open(MAX_MAP_COUNT) as f:
                    now = int(f.read())
                if now != self.saved:
                    print("MaxMapCount: could not restore %d (now %d)"
                          % (self.saved, now), file=sys.stderr)
        for s, h in self._old.items():
            signal.signal(s, h)
        return False
