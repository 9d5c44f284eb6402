#!/usr/bin/env python3
"""The cross-VM fingerprint board: several QEMUs (-accel qtest) hold a
block of content that is unique inside each of them but identical across
them.  On one board, with one key, targeted mode registers that block in
each VM and the kernel merges it; a QEMU with another key on the same
board sees nothing.  A publisher killed in the middle of an update does
not wedge the others and its slot ages out; a full board leaves a VM
working alone, and says so; a slot too small publishes a subset.
"""

import os
import random
import signal
import stat
import struct
import sys

from harness import (MiB, PAGE, QEMU, backend, check, qmp, run_pass,
                     run_tests, start_qtest_vm, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

SIZE = 256 * MiB
CROSS = (64 * MiB, 32 * MiB)      # the same in every VM
UNIQUE = (128 * MiB, 64 * MiB)    # different in every VM
CROSS_PAGES = CROSS[1] // PAGE


def board_path(workdir):
    # /dev/shm is where boards live by default; a private name per run.
    return os.path.join("/dev/shm", "memdedup-test-%d-%s" % (
        os.getpid(), os.path.basename(workdir)))


def start(workdir, name, board, key, engine_opts="", env=None):
    args = ["-machine", "pc,memory-backend=m0", "-m", "%dM" % (SIZE // MiB),
            "-object", "secret,id=bk,data=%s" % key,
            "-object", "memdedup,id=engine,rescan-interval=3600000,"
            "board=%s,board-key=bk%s" % (board, engine_opts),
            "-object", "memory-backend-ksm,id=m0,size=%dM" % (SIZE // MiB)]
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        vm, qt = start_qtest_vm(workdir, name, args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return vm, qt


def fill(qt, seed):
    qt.write(CROSS[0], random.Random(1234).randbytes(CROSS[1]))
    qt.write(UNIQUE[0], random.Random(seed).randbytes(UNIQUE[1]))


def board_slots(path):
    """The slots of a board file, as the engines wrote them: the header
    says how large a slot is; a slot starts with owner, heartbeat, seq,
    domain tag and pid."""
    with open(path, "rb") as f:
        data = f.read()
    nr_slots, slot_bytes = struct.unpack_from("=IQ", data, 12)
    slots = []
    for i in range(nr_slots):
        owner, heartbeat, seq = struct.unpack_from("=QQQ", data,
                                                   4096 + i * slot_bytes)
        pid, = struct.unpack_from("=I", data, 4096 + i * slot_bytes + 40)
        slots.append({"owner": owner, "seq": seq, "pid": pid})
    return slots


def wait_cross(vm, what="cross-VM candidates"):
    """Wait until vm counts (almost) the whole shared block as cross-VM."""
    wait_for(what, lambda: backend(vm, "m0")["cross-vm-pages"] >=
             CROSS_PAGES * 0.98)


def board_info(vm):
    return vm.qmp.cmd("query-memdedup")["board"]


class Fleet:
    """QEMUs sharing a board; stops them all and removes the board."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.board = board_path(workdir)
        self.vms = []

    def add(self, name, key="domain-one-key", seed=None, fill_it=True,
            **kw):
        vm, qt = start(self.workdir, name, self.board, key, **kw)
        self.vms.append((vm, qt))
        if fill_it:
            fill(qt, seed if seed is not None else len(self.vms))
        return vm

    def remove(self, vm):
        """Stop one QEMU cleanly (it gives its slot back)."""
        for i, (v, qt) in enumerate(self.vms):
            if v is vm:
                v.stop()
                qt.close()
                del self.vms[i]
                return

    def close(self):
        for vm, qt in self.vms:
            vm.stop()
            qt.close()
        if os.path.exists(self.board):
            os.unlink(self.board)


def test_cross_vm(workdir):
    fleet = Fleet(workdir)
    with host.KsmKnobs(run=1, pages_to_scan=2000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        try:
            a = fleet.add("a")
            b = fleet.add("b")
            c = fleet.add("c", key="another-domain-key")
            st = os.stat(fleet.board)
            check(stat.S_IMODE(st.st_mode) == 0o600,
                  "board mode %o" % stat.S_IMODE(st.st_mode))
            for vm in (a, b, c, a):
                run_pass(vm)
            # Peers that published after our pass make us look again.
            for vm in (a, b):
                wait_cross(vm)
            for vm in (a, b):
                m = backend(vm, "m0")
                print("  cross-vm-pages %d regions %d registered %d MiB" % (
                    m["cross-vm-pages"], m["cross-vm-regions"],
                    m["registered-bytes"] // MiB))
                check(m["cross-vm-regions"] == CROSS[1] // (2 * MiB),
                      "cross-vm regions %d" % m["cross-vm-regions"])
                check(m["registered-bytes"] == CROSS[1],
                      "registered %d, not the cross-VM block"
                      % m["registered-bytes"])
                check(m["duplicate-pages"] < 64,
                      "the block counted as an in-VM duplicate")
                info = board_info(vm)
                check(info["joined"] and info["peers"] == 1,
                      "board view %s" % info)
                check(info["published-fraction"] == 100, "subset published")
            m = backend(c, "m0")
            check(m["cross-vm-pages"] == 0 and m["registered-bytes"] == 0,
                  "another key saw the others' content: %s" % m)
            check(board_info(c)["peers"] == 0, "another key has peers")
            if ksm.active:
                for vm in (a, b):
                    wait_for("the kernel to merge the cross-VM block",
                             lambda: backend(vm, "m0").get(
                                 "kernel-merged-pages", 0) >=
                             CROSS_PAGES * 0.9, 60)
                run_pass(a)
                merged = backend(a, "m0")
                print("  kernel merged %d pages; board saved %s" % (
                    merged["kernel-merged-pages"],
                    merged.get("cross-vm-merged-pages", "n/a")))
                if "cross-vm-merged-pages" in merged:
                    check(merged["cross-vm-merged-pages"] >=
                          CROSS_PAGES * 0.9, "cross-vm-merged-pages")
        finally:
            fleet.close()


def test_killed_publisher(workdir):
    fleet = Fleet(workdir)
    opts = ",board-slots=2,board-timeout=2000"
    try:
        a = fleet.add("a", engine_opts=opts)
        run_pass(a)
        # d stalls in the middle of its first publication, its slot odd.
        d = fleet.add("d", engine_opts=opts,
                      env={"QEMU_MEMDEDUP_BOARD_TEST": "stall-publish"})
        wait_for("d to be mid-update", lambda: any(
            sl["owner"] and sl["pid"] == d.pid and sl["seq"] % 2
            for sl in board_slots(fleet.board)))
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait()
        # a keeps working, and d's entries age out.
        run_pass(a)
        wait_for("the dead publisher to age out",
                 lambda: board_info(a)["peers"] == 0, 15)
        check(backend(a, "m0")["cross-vm-pages"] == 0,
              "a half-written filter was read")
        # Its slot is free again for a newcomer.
        e = fleet.add("e", engine_opts=opts)
        check(board_info(e)["joined"], "newcomer could not reclaim the slot")
        run_pass(e)
        wait_cross(e, "cross-VM candidates with the newcomer")
    finally:
        fleet.close()


def slot_seq(board, vm):
    seqs = [sl["seq"] for sl in board_slots(board)
            if sl["owner"] and sl["pid"] == vm.pid]
    check(len(seqs) == 1, "vm has %d slots" % len(seqs))
    return seqs[0]


def test_quiet_publication(workdir):
    """A pass in which nothing changed does not publish again (the peers
    would look everything up for nothing); one after a change does, and
    the peers see the change."""
    fleet = Fleet(workdir)
    try:
        a = fleet.add("a")
        b = fleet.add("b")
        run_pass(b)
        # Pages appear (that pass publishes), and so may more when
        # MADV_COLLAPSE fills unique regions with huge pages; each pass
        # with changes, and the quiet one after it, publish.  Then the
        # passes of a guest that does not change must stop publishing.
        seqs = []
        for _ in range(8):
            run_pass(a)
            seqs.append(slot_seq(fleet.board, a))
            if len(seqs) >= 4 and len(set(seqs[-3:])) == 1:
                break
        print("  slot seq after each pass: %s" % seqs)
        check(len(seqs) >= 4 and len(set(seqs[-3:])) == 1,
              "quiet passes kept publishing: seq %s" % seqs)
        seq = seqs[-1]
        wait_cross(b)
        check(backend(b, "m0")["cross-vm-pages"] >= CROSS_PAGES * 0.98,
              "b lost the cross-VM block")
        # a changes a quarter of its copy of the shared block.
        changed = CROSS[1] // 4
        _, qt = fleet.vms[0]
        qt.write(CROSS[0], random.Random(99).randbytes(changed))
        run_pass(a)
        after = slot_seq(fleet.board, a)
        check(after != seq and after % 2 == 0,
              "a pass with changes did not publish (seq %d)" % after)
        want = CROSS_PAGES - changed // PAGE
        wait_for("b to see a's change", lambda: abs(
            backend(b, "m0")["cross-vm-pages"] - want) <= want // 50)
        print("  quiet passes kept seq %d; after the change b counts %d "
              "cross-VM pages (expected %d)" % (
                  seq, backend(b, "m0")["cross-vm-pages"], want))
    finally:
        fleet.close()


def set_slot_seq(board, vm, seq):
    """Write vm's slot sequence number in the board file, as vm itself
    does around a publication (odd: publishing)."""
    slots = board_slots(board)
    i = [k for k, sl in enumerate(slots)
         if sl["owner"] and sl["pid"] == vm.pid][0]
    with open(board, "rb") as f:
        _, slot_bytes = struct.unpack_from("=IQ", f.read(24), 12)
    with open(board, "r+b") as f:
        f.seek(4096 + i * slot_bytes + 16)
        f.write(struct.pack("=Q", seq))


def test_publishing_peer(workdir):
    """A peer caught in the middle of publishing is not read, so its
    fingerprints are not found: on that view no region may lose its
    cross-VM duplicates (unregistering would unmerge them, and the next
    look would register them again).  A complete view still decides:
    once the peer has left, the block is unique and unregistered."""
    fleet = Fleet(workdir)
    try:
        a = fleet.add("a")
        b = fleet.add("b")
        for vm in (a, b, a):
            run_pass(vm)
        wait_cross(a)
        check(backend(a, "m0")["registered-bytes"] == CROSS[1],
              "the cross-VM block is not registered")
        # b is publishing again (its slot odd) while a looks.
        seq = slot_seq(fleet.board, b)
        set_slot_seq(fleet.board, b, seq | 1)
        info = run_pass(a)
        m = backend(a, "m0")
        print("  with b mid-publication: a counts %d cross-VM pages, "
              "registered %d MiB, board view %s" % (
                  m["cross-vm-pages"], m["registered-bytes"] // MiB,
                  info["board"]))
        check(m["cross-vm-pages"] >= CROSS_PAGES * 0.98,
              "a half-seen board took the cross-VM block away: %d pages"
              % m["cross-vm-pages"])
        check(m["registered-bytes"] == CROSS[1],
              "a half-seen board unregistered the cross-VM block: %d"
              % m["registered-bytes"])
        # b's publication ends; a looks again and still finds it.
        set_slot_seq(fleet.board, b, (seq | 1) + 1)
        run_pass(a)
        check(backend(a, "m0")["cross-vm-pages"] >= CROSS_PAGES * 0.98,
              "the complete view lost the cross-VM block")
        # b leaves: a complete view without it makes the block unique.
        fleet.remove(b)
        wait_for("a to see b leave", lambda: board_info(a)["peers"] == 0)
        run_pass(a)
        m = backend(a, "m0")
        check(m["cross-vm-pages"] == 0 and m["registered-bytes"] == 0,
              "b left, yet a keeps the cross-VM block: %s" % m)
    finally:
        fleet.close()


def test_board_full(workdir):
    fleet = Fleet(workdir)
    opts = ",board-slots=2"
    try:
        a = fleet.add("a", engine_opts=opts)
        b = fleet.add("b", engine_opts=opts)
        f = fleet.add("f", engine_opts=opts)
        info = board_info(f)
        check(not info["joined"] and "slot" not in info,
              "joined a full board: %s" % info)
        check("is full" in f.stderr(), "no warning:\n" + f.stderr())
        run_pass(f)
        check(backend(f, "m0")["cross-vm-pages"] == 0, "cross-VM while out")
        check(backend(f, "m0")["resident-pages"] > 0, "f stopped working")
        # b leaves cleanly and gives its slot back: f takes it.
        fleet.remove(b)
        wait_for("f to join", lambda: board_info(f)["joined"], 10)
        run_pass(a)
        run_pass(f)
        wait_cross(f, "cross-VM candidates after joining")
    finally:
        fleet.close()


def test_small_slot(workdir):
    # 64 KiB for 2 slots: about 8k fingerprints each, of 24k publishable;
    # the same third of the fingerprint space is published by every VM.
    fleet = Fleet(workdir)
    opts = ",board-slots=2,board-size=64K"
    try:
        a = fleet.add("a", engine_opts=opts)
        b = fleet.add("b", engine_opts=opts)
        for vm in (a, b, a):
            run_pass(vm)
        info = board_info(a)
        print("  published %d pages, %d %%, %d bytes per slot" % (
            info["published-pages"], info["published-fraction"],
            info["bytes-per-slot"]))
        check(20 <= info["published-fraction"] <= 50,
              "published fraction %d" % info["published-fraction"])
        check(info["published-pages"] * 2 <= info["bytes-per-slot"],
              "more than 2 bytes per page? %s" % info)
        cross = wait_for("some cross-VM candidates", lambda: backend(
            b, "m0")["cross-vm-pages"])
        check(cross <= CROSS_PAGES * info["published-fraction"] / 100 * 1.2,
              "more found than published: %d" % cross)
    finally:
        fleet.close()


def test_bad_input(workdir):
    path = board_path(workdir)
    cases = [
        ("board=%s" % path, "needs 'board-key'"),
        ("board=%s,board-key=nosuch" % path, "nosuch"),
        ("board-key=bk", "needs 'board'"),
        ("board=%s,board-key=bk,board-slots=1" % path, "board-slots"),
        ("board=%s,board-key=bk,board-size=1K" % path, "board-size"),
        ("board=%s,board-key=bk,board-timeout=5" % path, "board-timeout"),
        ("board=,board-key=bk", "must not be empty"),
        ("board=%s,board-key=short" % path, "at least 8 bytes"),
    ]
    with open(path + ".open", "wb") as f:
        f.write(b"\0" * 8192)
    os.chmod(path + ".open", 0o644)
    with open(path + ".junk", "wb") as f:
        f.write(os.urandom(8192))
    os.chmod(path + ".junk", 0o600)
    cases += [("board=%s.open,board-key=bk" % path, "mode 0600"),
              ("board=%s.junk,board-key=bk" % path, "not a memdedup board")]
    try:
        for opts, want in cases:
            secret = "short" if "key=short" in opts else "bk"
            args = ["-accel", "qtest", "-nodefaults", "-machine", "none",
                    "-object", "secret,id=%s,data=%s" % (
                        secret, "1234567" if secret == "short" else
                        "a-long-enough-key"),
                    "-object", "memdedup,id=engine," + opts]
            vm = qmp.Qemu(QEMU, args, workdir, "bad")
            try:
                vm.start()
                raise AssertionError("accepted: " + opts)
            except qmp.QMPError:
                err = vm.stderr()
            finally:
                vm.stop()
            check(want in err, "%s: unclear error:\n%s" % (opts, err))
            check(not os.path.exists(path) or "board-slots" in opts
                  or "board-size" in opts, "left a board behind: " + opts)
    finally:
        for p in (path, path + ".open", path + ".junk"):
            if os.path.exists(p):
                os.unlink(p)


if __name__ == "__main__":
    sys.exit(run_tests([
        ("board/cross-vm", test_cross_vm),
        ("board/killed-publisher", test_killed_publisher),
        ("board/quiet-publication", test_quiet_publication),
        ("board/publishing-peer", test_publishing_peer),
        ("board/full", test_board_full),
        ("board/small-slot", test_small_slot),
        ("board/bad-input", test_bad_input),
    ]))
