"""QEMU under -accel qtest, for the tests and the bench alike
(scripts/memdedup/ is on both's path).

QTest               QEMU's qtest client (python/qemu), with guest-memory
                    writes and reads for the test
start_qtest_vm      start a QEMU under -accel qtest with QMP and qtest
run_pass            complete one memdedup pass and return query-memdedup
complete_pass       the same over any QMP transport (libvirt's, say)
"""

import base64
import contextlib
import os
import threading
import time

import qmp

PAGE = 4096
MiB = 1 << 20
TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# The QEMU the tests and the bench run: MEMDEDUP_QEMU, or the build's.
QEMU = os.environ.get("MEMDEDUP_QEMU", os.path.join(
    TOP, "build", "qemu-src", "build", "qemu-system-x86_64"))


qmp._qemu_python()
from qemu.machine.qtest import QEMUQtestProtocol  # noqa: E402


class QTest(QEMUQtestProtocol):
    """QEMU's qtest client, listening on a unix socket QEMU connects to,
    with guest-memory helpers on top."""

    def __init__(self, path):
        super().__init__(path, server=True)
        self.path = path
        self.settimeout(30)             # QEMU must connect within 30 s

    def accept(self):
        super().accept()
        self.settimeout(120)            # one command (a 4 MiB read)
        return self

    def command(self, text):
        """Run a command; return what follows its OK (interrupt lines,
        which the qtest accelerator sends unasked, are skipped)."""
        line = self.cmd(text)
        while line.startswith("IRQ"):
            line = self._sockfile.readline()
        if not line:
            raise EOFError("qtest connection closed")
        if not line.startswith("OK"):
            raise RuntimeError("qtest: %s -> %s" % (text[:40], line.strip()))
        return line[3:].rstrip("\n")

    def pipeline(self, lines, batch=2048):
        """Run commands in batches without waiting for each reply."""
        for i in range(0, len(lines), batch):
            part = lines[i:i + batch]
            self._sock.sendall(("\n".join(part) + "\n").encode())
            self._replies(part)

    def send_joined(self, data, count):
        """Run @count commands given joined, a line each, as bytes: a
        thread sends them all while this one reads the replies (QEMU
        stops reading once a few hundred replies lie unread: each takes
        a socket buffer of its own)."""
        failed = []

        def send():
            try:
                self._sock.sendall(data)
            except OSError as e:
                failed.append(e)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            self._replies(["command %d of %d" % (i + 1, count)
                           for i in range(count)])
        finally:
            sender.join()
        if failed:
            raise failed[0]

    def _replies(self, sent):
        for text in sent:
            line = self._sockfile.readline()
            while line.startswith("IRQ"):
                line = self._sockfile.readline()
            if not line.startswith("OK"):
                raise RuntimeError("qtest: %s -> %s"
                                   % (text[:40], line.strip()))

    def write(self, addr, data):
        for off in range(0, len(data), 4 * MiB):
            chunk = data[off:off + 4 * MiB]
            self.command("b64write 0x%x 0x%x %s" % (
                addr + off, len(chunk), base64.b64encode(chunk).decode()))

    def memset(self, addr, size, value):
        self.command("memset 0x%x 0x%x 0x%02x" % (addr, size, value))

    def read(self, addr, size):
        out = bytearray()
        for off in range(0, size, 4 * MiB):
            n = min(4 * MiB, size - off)
            out += base64.b64decode(self.command(
                "b64read 0x%x 0x%x" % (addr + off, n)))
        return bytes(out)

    def close(self):
        super().close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def start_qtest_vm(qemu, workdir, name, extra_args, wrapper=()):
    """QEMU (the binary @qemu) under -accel qtest with a QMP socket;
    returns (vm, qtest).  wrapper: a command QEMU runs under (e.g.
    setpriv and its options)."""
    qt = QTest(os.path.join(workdir, name + ".qtest"))
    argv = list(wrapper[1:]) + ([qemu] if wrapper else [])
    vm = qmp.Qemu(wrapper[0] if wrapper else qemu,
                  argv + ["-accel", "qtest", "-qtest", "unix:" + qt.path,
                          "-nodefaults"] + extra_args, workdir, name)
    try:
        # QEMU connects to our listening socket while it starts.
        vm.start()
        qt.accept()
    except BaseException:
        vm.stop()
        qt.close()
        raise
    return vm, qt


def complete_pass(cmd, timeout=120):
    """Complete one pass that starts after everything done so far, over
    @cmd (a QMP command runner: cmd(name) returns its 'return'); return
    query-memdedup as it stands then."""
    info = cmd("query-memdedup")
    target = info["passes-completed"] + (2 if info["state"] == "scanning"
                                         else 1)
    cmd("memdedup-scan")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = cmd("query-memdedup")
        if info["passes-completed"] >= target:
            return info
        time.sleep(0.02)
    raise AssertionError("no memdedup pass completed in %d s" % timeout)


def run_pass(vm, timeout=120):
    """complete_pass over @vm's QMP socket."""
    return complete_pass(vm.qmp.cmd, timeout)
