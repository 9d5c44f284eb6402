"""Tiny dependency-free helpers for the memdedup demo and tests.

QMP      a QMP client over a unix socket
Qemu     starts qemu-system-x86_64 with a QMP socket and a serial log,
         and always stops and reaps it
KsmKnobs saves, sets and restores the host's /sys/kernel/mm/ksm knobs
ThpMode  saves, sets and restores the host's transparent huge page mode
shielded a context manager that ignores SIGINT/SIGTERM/SIGHUP, so that
         cleanup cannot be interrupted half-way
"""

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

KSM_DIR = "/sys/kernel/mm/ksm"
# Debian's firmware packages (seabios, qemu-system-data, ipxe-qemu).
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class QMPError(Exception):
    """A QMP command returned an error (or the connection failed)."""

    def __init__(self, msg, cls="GenericError"):
        super().__init__(msg)
        self.cls = cls


class QMP:
    """A QMP client: QMP(path).connect(); cmd(name, **args); hmp(line)."""

    def __init__(self, path, timeout=30.0):
        self.path = path
        self.timeout = timeout
        self.events = []        # every event received, in order
        self.greeting = None
        self._sock = None
        self._file = None
        self._id = 0

    def connect(self, retry_for=10.0, alive=None):
        """Connect, retrying for retry_for seconds while alive() (if
        given) says the server may still come up; then negotiate."""
        deadline = time.monotonic() + retry_for
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                break
            except OSError as e:
                sock.close()
                if time.monotonic() > deadline or (alive and not alive()):
                    raise QMPError("cannot connect to %s: %s" % (self.path, e))
                time.sleep(0.1)
        sock.settimeout(self.timeout)
        self._sock = sock
        self._file = sock.makefile("rb")
        self.greeting = self._recv()
        if "QMP" not in self.greeting:
            raise QMPError("not a QMP server: %r" % self.greeting)
        self.cmd("qmp_capabilities")
        return self

    def _recv(self):
        line = self._file.readline()
        if not line:
            raise QMPError("QMP connection closed", "ConnectionClosed")
        return json.loads(line)

    def cmd(self, name, **args):
        """Run a command; return its 'return' value or raise QMPError.
        Arguments with dashes: cmd('x', **{'command-line': ...})."""
        self._id += 1
        msg = {"execute": name, "id": self._id}
        if args:
            msg["arguments"] = args
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            resp = self._recv()
            if "event" in resp:
                self.events.append(resp)
            elif resp.get("id") == self._id:
                if "error" in resp:
                    err = resp["error"]
                    raise QMPError("%s: %s" % (name, err.get("desc")),
                                   err.get("class", "GenericError"))
                return resp.get("return")

    def hmp(self, cmdline):
        """Run a human monitor command; return its text output."""
        return self.cmd("human-monitor-command", **{"command-line": cmdline})

    def close(self):
        for f in (self._file, self._sock):
            if f:
                with contextlib.suppress(OSError):
                    f.close()
        self._file = self._sock = None


class Qemu:
    """One QEMU process with a QMP socket and its serial port in a file.

    q = Qemu(binary, args, workdir, name).start(); q.qmp.cmd(...); q.stop()
    """

    def __init__(self, binary, args, workdir, name="vm"):
        self.binary = binary
        self.args = list(args)
        self.name = name
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.serial_log = os.path.join(workdir, name + ".serial.log")
        self.stderr_log = os.path.join(workdir, name + ".stderr.log")
        self.proc = None
        self.pid = None
        self.qmp = None

    def start(self):
        for p in (self.qmp_path, self.serial_log):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        argv = [self.binary] + self.args + [
            "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
            "-serial", "file:%s" % self.serial_log]
        if "-display" not in self.args and "-nographic" not in self.args:
            argv += ["-display", "none"]
        if "-L" not in self.args:
            # Add the firmware directories explicitly: a binary installed
            # or unpacked elsewhere may relocate its built-in path.
            for d in FIRMWARE_DIRS:
                if os.path.isdir(d):
                    argv += ["-L", d]
        with open(self.stderr_log, "wb") as err:
            # Own session: a terminal's Ctrl-C reaches us, not QEMU, so we
            # can still quit it cleanly.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err,
                                         start_new_session=True)
        self.pid = self.proc.pid
        try:
            self.qmp = QMP(self.qmp_path).connect(
                retry_for=30.0, alive=lambda: self.proc.poll() is None)
        except QMPError as e:
            self.stop()
            raise QMPError("%s: QEMU did not start (%s)\n%s"
                           % (self.name, e, self.stderr().strip()),
                           "StartFailed") from None
        return self

    def stderr(self):
        with contextlib.suppress(OSError), open(self.stderr_log,
                                                errors="replace") as f:
            return f.read()
        return ""

    def serial(self):
        with contextlib.suppress(OSError), open(self.serial_log, "rb") as f:
            return f.read().decode(errors="replace")
        return ""

    def wait_serial(self, text, timeout):
        """Wait until text appears on the serial port; False on timeout
        or if QEMU exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.serial():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return text in self.serial()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """quit over QMP, wait, then SIGTERM/SIGKILL by PID; always reap."""
        if self.proc is None:
            return None
        if self.qmp and self.proc.poll() is None:
            with contextlib.suppress(QMPError, OSError, ValueError):
                self.qmp.cmd("quit")
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            try:
                self.proc.wait(None if sig == signal.SIGKILL else timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.qmp_path)
        return self.proc.returncode


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
             "max_page_sharing", "merge_across_nodes", "run")
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
