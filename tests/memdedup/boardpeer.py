"""A board peer in Python, for the tests: speaks the board protocol of
hw/mem/memdedup/board.c (version 3) well or badly, as a test asks.

Messages are 48 bytes on a SOCK_SEQPACKET UNIX socket: magic "MDB3",
version 3, a type, and a 40-byte body: a nonce and the sender's socket
number (HELLO), an HMAC-SHA256
proof (PROOF: of both nonces, the sender's role and the socket name
dialled), or a filter's geometry (FILTER: pages, bits, threshold,
reserved) with the filter's sealed memfd passed alongside.
"""

import fcntl
import hashlib
import hmac
import os
import random
import socket
import struct

MAGIC = 0x3342444D
VERSION = 3
HELLO, PROOF, FILTER, FULL = 1, 2, 3, 4
MSG = struct.Struct("=IHH40s")
GEOMETRY = struct.Struct("=QQII")
SEALS_ALL = (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE |
             fcntl.F_SEAL_SEAL)
LINE_BITS = 512
PROBES = 8
MASK64 = (1 << 64) - 1


def derive(key):
    """The fingerprint seed and the proof key of a board key."""
    seed = hmac.new(key, b"memdedup-board-v3 seed", hashlib.sha256).digest()
    proof = hmac.new(key, b"memdedup-board-v3 proof key",
                     hashlib.sha256).digest()
    return struct.unpack("=Q", seed[:8])[0], proof


def message(mtype, body=b"", magic=MAGIC, version=VERSION):
    return MSG.pack(magic, version, mtype, body.ljust(40, b"\0"))


def geometry(pages, bits, threshold=0xFFFFFFFF, reserved=0):
    return GEOMETRY.pack(pages, bits, threshold, reserved)


def _mix(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def bloom_add(filt, bits, fp):
    """bloom.c's memdedup_bloom_add, for filters of 512 bits or more."""
    h = _mix(fp)
    probes = _mix(h)
    base = (((h >> 32) * (bits // LINE_BITS)) >> 32) * LINE_BITS
    for i in range(PROBES):
        pos = base + i * 64 + ((probes >> (6 * i)) & 63)
        filt[pos // 8] |= 1 << (pos % 8)


def memfd(data, seals=SEALS_ALL, size=None):
    """A memfd holding @data (grown or cut to @size), sealed with
    @seals."""
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if size is not None:
        os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def random_filter(pages, rnd=None):
    """An honest-looking filter of @pages random fingerprints."""
    rnd = rnd or random.Random(7)
    bits = max(-(-pages * 16 // LINE_BITS) * LINE_BITS, LINE_BITS)
    filt = bytearray(bits // 8)
    for _ in range(pages):
        bloom_add(filt, bits, rnd.getrandbits(32))
    return bytes(filt), bits


def vm_sockets(board):
    return sorted(os.path.join(board, n) for n in os.listdir(board)
                  if n.startswith("vm-"))


def raw_connect(path):
    """A connection to @path that says nothing (the QEMU's backlog may
    be full: then it is not even made)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.setblocking(False)
    try:
        s.connect(path)
    except OSError:
        pass
    return s


def remove_board(board):
    """Remove a board directory and whatever is left in it."""
    if os.path.isdir(board):
        for n in os.listdir(board):
            os.unlink(os.path.join(board, n))
        os.rmdir(board)


class Peer:
    """One connection to a QEMU's board socket at @path."""

    def __init__(self, path, key=None, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.path = path
        self.key = key.encode() if isinstance(key, str) else key
        self.nonce = os.urandom(32)
        self.filters = []       # (geometry, fd) received
        self.got_proof = False  # the QEMU sent its proof

    def close(self):
        for _, fd in self.filters:
            os.close(fd)
        self.filters = []
        self.sock.close()

    def send(self, data, fds=()):
        if fds:
            return socket.send_fds(self.sock, [data], list(fds))
        return self.sock.send(data)

    def recv(self):
        """One message: (type, body, fds); None on EOF."""
        data, fds, _, _ = socket.recv_fds(self.sock, 64, 4)
        if not data:
            return None
        magic, version, mtype, body = MSG.unpack(data)
        assert magic == MAGIC and version == VERSION, data
        return mtype, body, fds

    def proof(self, proof_key, role, their_nonce):
        """board-link.c's memdedup_board_proof for our side: we are the
        connector, so our nonce comes first, and the name is the one we
        dialled."""
        name = os.path.basename(self.path).encode().ljust(24, b"\0")
        return hmac.new(proof_key, b"memdedup-board-v3 proof" + role +
                        self.nonce + their_nonce + name,
                        hashlib.sha256).digest()

    def handshake(self, key=None):
        """Prove @key (default: the peer's); True if the QEMU proved it
        holds the same."""
        key = key or self.key
        key = key.encode() if isinstance(key, str) else key
        _, proof_key = derive(key)
        self.send(message(HELLO, self.nonce))
        mtype, hello, _ = self.recv()
        assert mtype == HELLO
        their_nonce = hello[:32]
        self.send(message(PROOF, self.proof(proof_key, b"c", their_nonce)))
        got = self.recv()
        if got is None:
            return False        # the QEMU gave no proof: we gave a bad one
        mtype, mac, _ = got
        self.got_proof = mtype == PROOF
        return mtype == PROOF and mac[:32] == self.proof(proof_key, b"a",
                                                         their_nonce)

    def send_filter(self, data, bits, pages, threshold=0xFFFFFFFF,
                    seals=SEALS_ALL, size=None, reserved=0):
        fd = memfd(data, seals, size)
        try:
            self.send(message(FILTER, geometry(pages, bits, threshold,
                                               reserved)), [fd])
        finally:
            os.close(fd)

    def drain(self):
        """Read what the QEMU sent without waiting; False on EOF."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    got = self.recv()
                except (BlockingIOError, InterruptedError):
                    return True
                if got is None:
                    return False
                mtype, body, fds = got
                if mtype == FILTER:
                    self.filters.append((GEOMETRY.unpack(body[:24]),
                                         fds[0] if fds else -1))
                    for fd in fds[1:]:
                        os.close(fd)
                else:
                    for fd in fds:
                        os.close(fd)
        except (ConnectionResetError, BrokenPipeError):
            return False
        finally:
            self.sock.setblocking(True)
