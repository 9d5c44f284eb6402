"""QMP and QEMU processes for the memdedup demo, tests and bench.

QMP      QEMU's own QMP client (python/qemu in the unpacked source)
         behind the small interface the tests and the bench use
Qemu     starts qemu-system-x86_64 with a QMP socket and a serial log,
         and always stops and reaps it
"""

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Debian's firmware packages (seabios, qemu-system-data, ipxe-qemu).
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")


class QMPError(Exception):
    """A QMP command returned an error (or the connection failed).
    cls: the QMP error class, or ConnectionClosed / Timeout /
    StartFailed for failures of the connection itself."""

    def __init__(self, msg, cls="GenericError"):
        super().__init__(msg)
        self.cls = cls


def _qemu_python():
    """QEMU's own python/ package (qemu.qmp), from the source tree the
    build unpacks."""
    path = os.path.join(TOP, "build", "qemu-src", "python")
    if not os.path.isdir(os.path.join(path, "qemu", "qmp")):
        raise ImportError("QEMU's python package is not at %s; run "
                          "'make build' first" % path)
    if path not in sys.path:
        sys.path.insert(0, path)
    # The async client logs a disconnect it did not ask for (QEMU's own
    # quit) as an error; the caller sees it as ConnectionClosed instead.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    import qemu.qmp as qemu_qmp  # noqa: E402
    import qemu.qmp.legacy as qemu_qmp_legacy  # noqa: E402
    return qemu_qmp, qemu_qmp_legacy


class QMP:
    """QEMU's QMP client (qemu.qmp) with the interface the tests use:
    QMP(path).connect(); cmd(name, **args); hmp(line); events."""

    def __init__(self, path, timeout=30.0):
        self.path = path
        self.timeout = timeout
        self._events = []       # every event received, in order
        self.greeting = None
        self._qmp = None
        self._lib, self._legacy = _qemu_python()

    def connect(self, retry_for=10.0, alive=None):
        """Connect, retrying for retry_for seconds while alive() (if
        given) says the server may still come up; then negotiate."""
        deadline = time.monotonic() + retry_for
        while True:
            conn = self._legacy.QEMUMonitorProtocol(self.path)
            try:
                self.greeting = conn.connect()
                break
            except self._lib.QMPError as e:
                if time.monotonic() > deadline or (alive and not alive()):
                    raise QMPError("cannot connect to %s: %s"
                                   % (self.path, e)) from None
                time.sleep(0.1)
        conn.settimeout(self.timeout)
        self._qmp = conn
        return self

    @property
    def events(self):
        """Every event received so far, in order."""
        if self._qmp:
            self._events += self._qmp.get_events()
        return self._events

    def cmd(self, name, **args):
        """Run a command; return its 'return' value or raise QMPError.
        Arguments with dashes: cmd('x', **{'command-line': ...})."""
        if self._qmp is None:
            raise QMPError("%s: not connected" % name, "ConnectionClosed")
        try:
            return self._qmp.command(name, **args)
        except self._lib.ExecuteError as e:
            raise QMPError("%s: %s" % (name, e), e.error_class) from None
        except asyncio.TimeoutError:
            raise QMPError("%s: no reply in %.0f s" % (name, self.timeout),
                           "Timeout") from None
        except (self._lib.QMPError, OSError, EOFError) as e:
            raise QMPError("%s: QMP connection closed (%s)" % (name, e),
                           "ConnectionClosed") from None
        finally:
            self._events += self._qmp.get_events()

    def hmp(self, cmdline):
        """Run a human monitor command; return its text output."""
        return self.cmd("human-monitor-command", **{"command-line": cmdline})

    def close(self):
        if self._qmp:
            self._events += self._qmp.get_events()
            with contextlib.suppress(self._lib.QMPError, OSError, EOFError):
                self._qmp.close()
        self._qmp = None


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
