"""QEMU under -accel qtest, for the tests and the bench alike
(scripts/memdedup/ is on both's path).

QTest               the text protocol of QEMU's qtest accelerator: write
                    and read guest memory from the test
start_qtest_vm      start a QEMU under -accel qtest with QMP and qtest
run_pass            complete one memdedup pass and return query-memdedup
smaps_merged_pages  the pages of a process the kernel merged (KSM:)
"""

import base64
import os
import socket
import time

import qmp

PAGE = 4096
MiB = 1 << 20
TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# The QEMU the tests and the bench run: MEMDEDUP_QEMU, or the build's.
QEMU = os.environ.get("MEMDEDUP_QEMU", os.path.join(
    TOP, "build", "qemu-src", "build", "qemu-system-x86_64"))


class QTest:
    """Client of QEMU's qtest protocol over a unix socket we listen on."""

    def __init__(self, path):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(30)
        self.sock = None
        self.buf = b""

    def accept(self):
        self.sock, _ = self.listener.accept()
        self.sock.settimeout(120)
        return self

    def _line(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("qtest connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def command(self, text):
        self.sock.sendall(text.encode() + b"\n")
        while True:
            line = self._line()
            if line.startswith("IRQ"):
                continue
            if not line.startswith("OK"):
                raise RuntimeError("qtest: %s -> %s" % (text[:40], line))
            return line[3:]

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
        for s in (self.sock, self.listener):
            if s:
                s.close()
        if os.path.exists(self.path):
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


def run_pass(vm, timeout=120):
    """Complete one pass that starts after everything done so far; return
    query-memdedup as it stands then."""
    info = vm.qmp.cmd("query-memdedup")
    target = info["passes-completed"] + (2 if info["state"] == "scanning"
                                         else 1)
    vm.qmp.cmd("memdedup-scan")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = vm.qmp.cmd("query-memdedup")
        if info["passes-completed"] >= target:
            return info
        time.sleep(0.02)
    raise AssertionError("no memdedup pass completed in %d s" % timeout)


def smaps_merged_pages(pid):
    """Pages of a process mapped to KSM pages (the smaps KSM: lines)."""
    total = 0
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            if line.startswith("KSM:"):
                total += int(line.split()[1]) * 1024 // PAGE
    return total
