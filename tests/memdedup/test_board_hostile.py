#!/usr/bin/env python3
"""A hostile process against two honest QEMUs on one board.

The attacker runs as the QEMUs' user, so it can reach the board
directory, and in some attacks holds the key (a co-domain VM gone bad).
In turn it: sends filters whose every size field or memfd property is
wrong, and tries to change the filters it received; sends malformed,
oversized, partial and out-of-order messages and bad proofs; connects
and never speaks; connects hundreds of times; republishes as fast as it
can; publishes an all-ones and an empty filter alternately; litters the
directory.  After each attack both QEMUs answer, their guest memory is
byte-identical, the CPU of their memdedup threads per second stays
within 2x of the quiet case, and their registration did not change
(sampled every second during the attack).
"""

import errno
import hashlib
import mmap
import os
import random
import socket
import sys
import threading
import time

from harness import (MiB, PAGE, backend, check, run_tests, start_qtest_vm,
                     wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)
import boardpeer as bp
from test_board import KEY, OTHER_KEY, board_info, board_path

SIZE = 256 * MiB
CROSS = (64 * MiB, 32 * MiB)      # the same in both VMs
UNIQUE = (128 * MiB, 64 * MiB)    # different in each
ATTACK_SECONDS = 10
QUIET_SECONDS = 10
# board-size of the honest QEMUs: the largest filter they accept.
BOARD_SIZE = 16 * MiB


def start(workdir, name, board):
    args = ["-name", "%s,debug-threads=on" % name,
            "-machine", "pc,memory-backend=m0", "-m", "%dM" % (SIZE // MiB),
            "-object", "secret,id=bk,data=%s" % KEY,
            "-object", "memdedup,id=engine,rescan-interval=1000,"
            "rescan-backoff=1,board=%s,board-key=bk,board-size=%d"
            % (board, BOARD_SIZE),
            "-object", "memory-backend-ksm,id=m0,size=%dM" % (SIZE // MiB)]
    return start_qtest_vm(workdir, name, args)


class Honest:
    """The two honest QEMUs, their content and what they look like."""

    def __init__(self, workdir):
        self.board = board_path(workdir)
        self.vms = []
        self.content = {}
        self.qmp_lock = threading.Lock()
        for i, name in enumerate(("a", "b")):
            vm, qt = start(workdir, name, self.board)
            self.vms.append((vm, qt))
            # The registration sampler and the attacks both ask QMP.
            vm.qmp.cmd = self.locked(vm.qmp.cmd)
            cross = random.Random(1234).randbytes(CROSS[1])
            unique = random.Random(i + 1).randbytes(UNIQUE[1])
            qt.write(CROSS[0], cross)
            qt.write(UNIQUE[0], unique)
            self.content[name] = hashlib.sha256(cross + unique).hexdigest()

    def locked(self, cmd):
        def run(*args, **kw):
            with self.qmp_lock:
                return cmd(*args, **kw)
        return run

    def close(self):
        for vm, qt in self.vms:
            vm.stop()
            qt.close()
        bp.remove_board(self.board)

    def state(self):
        """What must not move: registration and cross-VM regions."""
        out = []
        for vm, _ in self.vms:
            m = backend(vm, "m0")
            out.append((m["registered-bytes"], m["cross-vm-regions"]))
        return out

    def cpu(self):
        """CPU (ns) of each QEMU's memdedup threads, board work included,
        and the engine's own scanner-cpu-time."""
        return [(host.thread_cpu_ns(vm.pid, "memdedup"),
                 vm.qmp.cmd("query-memdedup")["scanner-cpu-time"])
                for vm, _ in self.vms]

    def digests(self):
        out = {}
        for vm, qt in self.vms:
            data = qt.read(CROSS[0], CROSS[1]) + qt.read(UNIQUE[0],
                                                         UNIQUE[1])
            out[vm.name] = hashlib.sha256(data).hexdigest()
        return out

    def sockets(self):
        return bp.vm_sockets(self.board)

    def counters(self, field):
        return [board_info(vm)[field] for vm, _ in self.vms]


def proven(path, key=KEY):
    """A connection to @path that proved @key."""
    peer = bp.Peer(path, key)
    check(peer.handshake(), "the QEMU at %s did not prove the key" % path)
    return peer


def closed_by_qemu(peer, timeout=8):
    """Wait until the QEMU hung up on @peer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not peer.drain():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------
# The attacks: each runs for about ATTACK_SECONDS against both QEMUs.
# ---------------------------------------------------------------------

def attack_geometry(h, deadline):
    """Filters whose sizes, counts or memfds are wrong, one per
    connection (a new peer's first filter is checked at once); and the
    filters we were given, which we try to change."""
    data, bits = bp.random_filter(2000)
    bad = [
        dict(bits=bits + 8, pages=2000),                  # not whole lines
        dict(bits=BOARD_SIZE * 8 * 2, pages=2000),        # over board-size
        dict(bits=bits, pages=10 ** 9),                   # count impossible
        dict(bits=bits, pages=2000, reserved=1),
        dict(bits=bits * 2, pages=2000),                  # larger than said
        dict(bits=bits, pages=2000, size=bits // 8 // 2),  # memfd smaller
        dict(bits=bits, pages=2000, seals=0),             # not sealed
        dict(bits=bits, pages=2000,                       # writable
             seals=bp.SEALS_ALL & ~bp.fcntl.F_SEAL_WRITE),
        dict(bits=bits * 64, pages=2000 * 64, data=b"\0" * 64,
             size=bits * 8),                              # sparse
        dict(bits=0, pages=2000),                         # nothing, but pages
    ]
    before = sum(h.counters("rejected-updates"))
    tried = 0
    for case in bad:
        for path in h.sockets():
            peer = proven(path)
            # What the QEMU gave us cannot be changed or shrunk.
            wait_for("a filter from the QEMU", lambda: peer.drain() and
                     peer.filters, 10)
            (pages, fbits, _, _), fd = peer.filters[-1]
            for what, fn in (
                    ("ftruncate", lambda: os.ftruncate(fd, 4096)),
                    ("write", lambda: os.pwrite(fd, b"\xff" * 64, 0)),
                    ("mmap", lambda: mmap.mmap(fd, fbits // 8,
                                               mmap.MAP_SHARED,
                                               mmap.PROT_WRITE))):
                try:
                    fn()
                    raise AssertionError("could %s a peer's filter" % what)
                except OSError as e:
                    check(e.errno in (errno.EPERM, errno.EACCES),
                          "%s: %s" % (what, e))
            case = dict(case)
            payload = case.pop("data", data)
            peer.send_filter(payload, **case)
            time.sleep(1.5)
            peer.close()
            tried += 1
    wait_for("every bad filter to be refused", lambda: sum(
        h.counters("rejected-updates")) >= before + tried, 10)


def attack_malformed(h, deadline):
    """Malformed, oversized, partial and out-of-order messages, and bad
    proofs: each connection is closed by the QEMU."""
    cases = {
        "short": lambda p: p.send(bp.message(bp.HELLO, p.nonce)[:10]),
        "oversized": lambda p: p.send(bp.message(bp.HELLO, p.nonce) +
                                      b"x" * 100),
        "magic": lambda p: p.send(bp.message(bp.HELLO, p.nonce, magic=1)),
        "version": lambda p: p.send(bp.message(bp.HELLO, p.nonce,
                                               version=2)),
        "fds": lambda p: p.send(bp.message(bp.HELLO, p.nonce),
                                [os.open("/dev/null", os.O_RDONLY)] * 4),
        "proof-first": lambda p: p.send(bp.message(bp.PROOF, b"\0" * 32)),
        "filter-first": lambda p: p.send(bp.message(
            bp.FILTER, bp.geometry(1, 512))),
        "type": lambda p: p.send(bp.message(77, p.nonce)),
        "wrong-key": lambda p: check(
            not p.handshake(OTHER_KEY) and not p.got_proof,
            "a QEMU proved its key to a connection without it"),
        "empty": lambda p: p.send(b""),
    }
    before = sum(h.counters("rejected-peers"))
    for name, send in cases.items():
        for path in h.sockets():
            peer = bp.Peer(path, KEY.encode())
            try:
                send(peer)
            except OSError:
                pass
            check(closed_by_qemu(peer), "%s: the QEMU kept the connection"
                  % name)
            peer.close()
    wait_for("the bad connections to be counted", lambda: sum(
        h.counters("rejected-peers")) >= before + (len(cases) - 1) * 2, 10)


def attack_silent(h, deadline):
    """Connections that never speak, more than may wait at once."""
    socks = []
    for path in h.sockets():
        socks += [bp.raw_connect(path) for _ in range(20)]
    time.sleep(max(0, deadline - time.monotonic()))
    refused = h.counters("refused-connections")
    check(all(n > 0 for n in refused), "no connection refused: %s" % refused)
    check(all(n > 0 for n in h.counters("rejected-peers")),
          "silent connections were not timed out")
    for s in socks:
        s.close()


def attack_hundreds(h, deadline):
    """Hundreds of connections as fast as we can make them."""
    n = 0
    while time.monotonic() < deadline and n < 2000:
        for path in h.sockets():
            bp.raw_connect(path).close()
            n += 1
    print("  %d connections" % n)


def attack_republish(h, deadline):
    """A co-domain peer republishing honest-looking filters as fast as
    its socket takes them."""
    peers = [proven(p) for p in h.sockets()]
    rnd = random.Random(3)
    filters = [bp.random_filter(4000, rnd) for _ in range(4)]
    sent = 0
    while time.monotonic() < deadline:
        for peer in peers:
            data, bits = filters[sent % len(filters)]
            try:
                peer.send_filter(data, bits, 4000)
                sent += 1
            except OSError:
                pass
            peer.drain()
    print("  %d filters sent" % sent)
    for peer in peers:
        peer.close()


def attack_alternate(h, deadline):
    """All-ones and empty filters, alternately: the full ones are
    refused, and a peer that keeps sending them is dropped."""
    bits = 64 * 1024 * 8
    ones = b"\xff" * (bits // 8)
    sent = {}
    peers = {}
    while time.monotonic() < deadline:
        for path in h.sockets():
            peer = peers.get(path)
            if peer is None or not peer.drain():
                if peer:
                    peer.close()
                # A new peer's first filter is checked at once: full.
                peer = peers[path] = proven(path)
                sent[path] = 0
            try:
                if sent[path] % 2 == 0:
                    peer.send_filter(ones, bits, bits // 16)
                else:
                    peer.send(bp.message(bp.FILTER, bp.geometry(0, 0)))
                sent[path] += 1
            except OSError:
                pass
        time.sleep(0.2)
    for peer in peers.values():
        peer.close()
    check(all(n > 0 for n in h.counters("rejected-updates")),
          "an all-ones filter was not refused")


def attack_directory(h, deadline):
    """Junk in the board directory: files named like sockets, a symlink,
    a socket that accepts and never speaks, under names before and after
    the QEMUs'."""
    junk = []
    for i in range(500):
        name = os.path.join(h.board, "vm-%016x" % random.getrandbits(64))
        with open(name, "wb") as f:
            f.write(b"junk")
        junk.append(name)
    for i in range(50):
        name = os.path.join(h.board, "junk-%d" % i)
        open(name, "wb").close()
        junk.append(name)
    link = os.path.join(h.board, "vm-%016x" % 0x5)
    os.symlink("/etc/passwd", link)
    junk.append(link)
    mutes = []
    for name in ("vm-0000000000000001", "vm-fffffffffffffff0"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        path = os.path.join(h.board, name)
        s.bind(path)
        s.listen(64)
        mutes.append((s, path))
    time.sleep(max(0, deadline - time.monotonic()))
    for s, path in mutes:
        s.close()
        os.unlink(path)
    for name in junk:
        os.unlink(name)


ATTACKS = [
    ("geometry", attack_geometry),
    ("malformed", attack_malformed),
    ("silent", attack_silent),
    ("hundreds", attack_hundreds),
    ("republish", attack_republish),
    ("alternate", attack_alternate),
    ("directory", attack_directory),
]


def cpu_rate(h, seconds, during=None):
    """Per QEMU: memdedup threads' CPU seconds per second (and the
    scanner's), over @seconds, running @during(h, deadline) meanwhile
    and sampling the registration each second."""
    states = []
    done = threading.Event()

    def sample():
        while not done.wait(1.0):
            states.append(h.state())

    t0 = time.monotonic()
    c0 = h.cpu()
    deadline = t0 + seconds
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        if during:
            during(h, deadline)
        time.sleep(max(0, deadline - time.monotonic()))
    finally:
        done.set()
        sampler.join()
    states.append(h.state())
    dt = time.monotonic() - t0
    c1 = h.cpu()
    rates = [((a[0] - b[0]) / 1e9 / dt, (a[1] - b[1]) / 1e9 / dt)
             for a, b in zip(c1, c0)]
    return rates, states


def test_hostile_peer(workdir):
    h = Honest(workdir)
    try:
        a, b = h.vms[0][0], h.vms[1][0]
        wait_for("a and b to pair", lambda: all(
            board_info(vm)["peers"] == 1 for vm, _ in h.vms), 15)
        wait_for("the cross-VM block", lambda: all(
            backend(vm, "m0")["cross-vm-regions"] == CROSS[1] // (2 * MiB)
            for vm in (a, b)), 60)
        # Let registration settle (THP collapse and the like).
        wait_for("registration to settle", lambda: (
            h.state() == (time.sleep(3) or h.state())), 60)
        quiet, states = cpu_rate(h, QUIET_SECONDS)
        baseline = states[-1]
        check(len(set(map(tuple, states))) == 1,
              "registration moved while quiet: %s" % states)
        print("  quiet: CPU per second %s; registration %s" % (
            ["%.4f/%.4f" % r for r in quiet], baseline))
        for name, attack in ATTACKS:
            rates, states = cpu_rate(h, ATTACK_SECONDS, attack)
            print("  %s: CPU per second %s; registration %s; board %s" % (
                name, ["%.4f/%.4f" % r for r in rates], states[-1],
                [{k: board_info(vm)[k] for k in (
                    "peers", "rejected-peers", "rejected-updates",
                    "refused-connections")} for vm in (a, b)]))
            for vm, _ in h.vms:
                check(vm.alive(), "%s died in %s" % (vm.name, name))
            moved = [s for s in states if s != baseline]
            check(not moved, "%s: registration moved: %s -> %s" % (
                name, baseline, moved))
            for (cpu, _), (quiet_cpu, _) in zip(rates, quiet):
                check(cpu <= 2 * quiet_cpu,
                      "%s: memdedup threads used %.4f s/s, quiet %.4f"
                      % (name, cpu, quiet_cpu))
            check(h.digests() == h.content, "%s: guest memory changed"
                  % name)
            wait_for("the honest pair to stay paired", lambda: all(
                board_info(vm)["peers"] >= 1 for vm in (a, b)), 15)
        check(all(board_info(vm)["peers"] == 1 for vm in (a, b)),
              "hostile peers linger")
    finally:
        h.close()


if __name__ == "__main__":
    sys.exit(run_tests([("board/hostile-peer", test_hostile_peer)]))
