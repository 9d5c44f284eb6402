#!/usr/bin/env python3
"""The cross-VM fingerprint board: several QEMUs (-accel qtest) hold a
block of content that is unique inside each of them but identical across
them.  On one board, with one key, targeted mode registers that block in
each VM and the kernel merges it; a QEMU with another key on the same
board sees nothing.  A peer killed at any moment is dropped at once and
leaves no fingerprint behind; a VM with no room among its peers works
alone and says so; a filter too small publishes a subset; only policies
that register content publish; a board directory that cannot be used
leaves the VM working alone, with the reason.  Hostile peers are in
test_board_hostile.py.
"""

import os
import random
import signal
import stat
import sys

from harness import (AS_NOBODY, MiB, PAGE, QEMU, Skip, backend, check,
                     nobody_workdir, open_umask, qmp, run_pass, run_tests,
                     start_qtest_vm, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)
import boardpeer

SIZE = 256 * MiB
CROSS = (64 * MiB, 32 * MiB)      # the same in every VM
UNIQUE = (128 * MiB, 64 * MiB)    # different in every VM
CROSS_PAGES = CROSS[1] // PAGE


KEY = "domain-one-key-of-32-bytes-long!"
OTHER_KEY = "another-domain-key-32-bytes-long"


def board_path(workdir):
    # /dev/shm is where boards live by default; a private name per run.
    return os.path.join("/dev/shm", "memdedup-test-%d-%s" % (
        os.getpid(), os.path.basename(workdir)))


def board_leftovers(board):
    """What a board directory holds besides sockets (which hold no
    data): must stay empty."""
    if not os.path.isdir(board):
        return []
    return [n for n in os.listdir(board)
            if not stat.S_ISSOCK(os.lstat(os.path.join(board, n)).st_mode)]


def start(workdir, name, board, key, engine_opts="", policy="targeted",
          wrapper=()):
    args = ["-machine", "pc,memory-backend=m0", "-m", "%dM" % (SIZE // MiB),
            "-object", "secret,id=bk,data=%s" % key,
            "-object", "memdedup,id=engine,rescan-interval=3600000,"
            "board=%s,board-key=bk%s" % (board, engine_opts),
            "-object", "memory-backend-ksm,id=m0,size=%dM,dedup-policy=%s"
            % (SIZE // MiB, policy)]
    return start_qtest_vm(workdir, name, args, wrapper)


def fill(qt, seed):
    qt.write(CROSS[0], random.Random(1234).randbytes(CROSS[1]))
    qt.write(UNIQUE[0], random.Random(seed).randbytes(UNIQUE[1]))


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

    def add(self, name, key=KEY, seed=None, fill_it=True, **kw):
        vm, qt = start(self.workdir, name, self.board, key, **kw)
        self.vms.append((vm, qt))
        if fill_it:
            fill(qt, seed if seed is not None else len(self.vms))
        return vm

    def remove(self, vm, kill=False):
        """Stop one QEMU, cleanly or with SIGKILL."""
        for i, (v, qt) in enumerate(self.vms):
            if v is vm:
                if kill:
                    os.kill(v.pid, signal.SIGKILL)
                    v.proc.wait()
                v.stop()
                qt.close()
                del self.vms[i]
                return

    def close(self):
        for vm, qt in self.vms:
            vm.stop()
            qt.close()
        boardpeer.remove_board(self.board)


def test_cross_vm(workdir):
    fleet = Fleet(workdir)
    with host.KsmKnobs(run=1, pages_to_scan=2000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        try:
            a = fleet.add("a")
            b = fleet.add("b")
            c = fleet.add("c", key=OTHER_KEY)
            st = os.lstat(fleet.board)
            check(stat.S_ISDIR(st.st_mode) and
                  stat.S_IMODE(st.st_mode) == 0o700,
                  "board mode %o" % st.st_mode)
            wait_for("a and b to prove the key to each other", lambda: all(
                board_info(vm)["peers"] == 1 for vm in (a, b)))
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
                # 2 bytes per published page, in 64-byte lines.
                check(info["filter-bytes"] <=
                      info["published-pages"] * 2 + 64,
                      "filter of %d bytes for %d pages" % (
                          info["filter-bytes"], info["published-pages"]))
            m = backend(c, "m0")
            check(m["cross-vm-pages"] == 0 and m["registered-bytes"] == 0,
                  "another key saw the others' content: %s" % m)
            check(board_info(c)["peers"] == 0, "another key has peers")
            # c and a, c and b failed their proofs: on the side that
            # accepted each connection (the other sees it closed).
            wait_for("the failed proofs to be counted", lambda: sum(
                board_info(vm)["rejected-peers"] for vm in (a, b, c)) >= 2)
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


def test_killed_peer(workdir):
    """A peer killed with SIGKILL is dropped at once (its connection
    ends), its socket's name is removed by the next QEMU that finds
    it, and once every QEMU is gone no fingerprint remains."""
    fleet = Fleet(workdir)
    try:
        a = fleet.add("a")
        d = fleet.add("d")
        for vm in (a, d, a):
            run_pass(vm)
        wait_cross(a)
        fleet.remove(d, kill=True)
        wait_for("a to drop the killed peer",
                 lambda: board_info(a)["peers"] == 0, 5)
        run_pass(a)
        m = backend(a, "m0")
        check(m["cross-vm-pages"] == 0 and m["registered-bytes"] == 0,
              "a kept the killed peer's fingerprints: %s" % m)
        check(len(os.listdir(fleet.board)) == 2,
              "expected a's socket and d's stale name: %s"
              % os.listdir(fleet.board))
        # A newcomer removes the stale name and finds a.
        e = fleet.add("e")
        wait_for("the stale name to go", lambda: len(
            os.listdir(fleet.board)) == 2 and board_info(e)["peers"] == 1, 15)
        for vm in (e, a, e):
            run_pass(vm)
        wait_cross(e, "cross-VM candidates with the newcomer")
        # Everyone killed: sockets' names (no data) at most, no filter.
        for vm in (a, e):
            fleet.remove(vm, kill=True)
        check(board_leftovers(fleet.board) == [],
              "left in the board: %s" % board_leftovers(fleet.board))
        # A clean exit of the last VM removes the board.
        f = fleet.add("f", fill_it=False)
        wait_for("f to clear the stale names", lambda: len(
            os.listdir(fleet.board)) == 1, 15)
        fleet.remove(f)
        if os.path.exists(fleet.board):
            raise AssertionError("the last VM out left the board: %s"
                                 % os.listdir(fleet.board))
    finally:
        fleet.close()


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
        counts = []
        for _ in range(8):
            run_pass(a)
            counts.append(board_info(a)["publications"])
            if len(counts) >= 4 and len(set(counts[-3:])) == 1:
                break
        print("  publications after each pass: %s" % counts)
        check(len(counts) >= 4 and len(set(counts[-3:])) == 1,
              "quiet passes kept publishing: %s" % counts)
        wait_cross(b)
        # a changes a quarter of its copy of the shared block.
        changed = CROSS[1] // 4
        _, qt = fleet.vms[0]
        qt.write(CROSS[0], random.Random(99).randbytes(changed))
        run_pass(a)
        after = board_info(a)["publications"]
        check(after == counts[-1] + 1,
              "a pass with changes did not publish once (%d)" % after)
        want = CROSS_PAGES - changed // PAGE
        wait_for("b to see a's change", lambda: abs(
            backend(b, "m0")["cross-vm-pages"] - want) <= want // 50)
        print("  after the change b counts %d cross-VM pages (expected %d)"
              % (backend(b, "m0")["cross-vm-pages"], want))
    finally:
        fleet.close()


def test_peer_leaves(workdir):
    """A peer that leaves takes its fingerprints with it: the block it
    shared becomes unique and is unregistered."""
    fleet = Fleet(workdir)
    try:
        a = fleet.add("a")
        b = fleet.add("b")
        for vm in (a, b, a):
            run_pass(vm)
        wait_cross(a)
        check(backend(a, "m0")["registered-bytes"] == CROSS[1],
              "the cross-VM block is not registered")
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
        # Both sides: a counts b once b's proof checked out, b counts a
        # a tick later, when a's proof reaches it (or after b's pass).
        wait_for("a and b to pair", lambda: all(
            board_info(vm)["peers"] == 1 for vm in (a, b)))
        f = fleet.add("f", engine_opts=opts)
        wait_for("f to be told there is no room",
                 lambda: "has no room" in f.stderr(), 15)
        check(board_info(f)["peers"] == 0, "f got room: %s" % board_info(f))
        run_pass(f)
        check(backend(f, "m0")["cross-vm-pages"] == 0, "cross-VM while out")
        check(backend(f, "m0")["resident-pages"] > 0, "f stopped working")
        # b leaves cleanly: f and a pair up when they try again.
        fleet.remove(b)
        wait_for("f to find room", lambda: board_info(f)["peers"] == 1, 30)
        run_pass(a)
        run_pass(f)
        wait_cross(f, "cross-VM candidates after pairing")
    finally:
        fleet.close()


def test_small_filter(workdir):
    # board-size=64K holds 32768 fingerprints; a and b have 40960
    # publishable pages each (extra unique content): 80 % of them, the
    # same part of the fingerprint space in both, is published.
    fleet = Fleet(workdir)
    opts = ",board-size=64K"
    extra = (SIZE - 64 * MiB, 64 * MiB)
    try:
        a = fleet.add("a", engine_opts=opts)
        b = fleet.add("b", engine_opts=opts)
        for i, (_, qt) in enumerate(fleet.vms):
            qt.write(extra[0], random.Random(50 + i).randbytes(extra[1]))
        for vm in (a, b, a):
            run_pass(vm)
        info = board_info(a)
        print("  published %d pages, %d %%, in %d bytes" % (
            info["published-pages"], info["published-fraction"],
            info["filter-bytes"]))
        check(abs(info["published-fraction"] - 80) <= 3,
              "published fraction %d" % info["published-fraction"])
        check(info["filter-bytes"] == 64 * 1024, "filter %s" % info)
        check(info["published-pages"] * 2 <= info["filter-bytes"] * 1.05,
              "more than 2 bytes per page? %s" % info)
        cross = wait_for("some cross-VM candidates", lambda: backend(
            b, "m0")["cross-vm-pages"])
        check(cross <= CROSS_PAGES * info["published-fraction"] / 100 * 1.2,
              "more found than published: %d" % cross)
    finally:
        fleet.close()


def test_policies_publish(workdir):
    """Only policies that register content publish; the others expose
    nothing of their guest to peers."""
    fleet = Fleet(workdir)
    try:
        a = fleet.add("a")
        quiet = [fleet.add(p, policy=p)
                 for p in ("estimate", "zero-only", "off")]
        wait_for("the four to pair", lambda: board_info(a)["peers"] == 3)
        for vm in quiet + [a]:
            run_pass(vm)
        run_pass(a)
        for vm in quiet:
            info = board_info(vm)
            check(info["published-pages"] == 0 and
                  info["filter-bytes"] == 0,
                  "%s published: %s" % (vm.name, info))
        check(backend(a, "m0")["cross-vm-pages"] == 0,
              "a found content of VMs that publish nothing")
        # estimate still looks peers up: it counts a's block.
        wait_for("estimate to count a's block", lambda: backend(
            quiet[0], "m0")["cross-vm-pages"] >= CROSS_PAGES * 0.98)
        # a leaves targeted: its fingerprints go from the board at once,
        # without waiting for a rescan.
        a.qmp.cmd("qom-set", path="/objects/m0", property="dedup-policy",
                  value="estimate")
        wait_for("a to withdraw its filter", lambda: board_info(a)[
            "published-pages"] == 0 and board_info(a)["filter-bytes"] == 0)
        wait_for("the others to forget a's block", lambda: backend(
            quiet[0], "m0")["cross-vm-pages"] == 0, 15)
    finally:
        fleet.close()


def test_unusable_directory(workdir):
    """A board path that is a file, someone else's or open to others
    does not stop QEMU: it works alone and says why, and joins once the
    path is usable."""
    path = board_path(workdir)
    cases = [("file", "not a directory"), ("open", "open to other users")]
    try:
        for kind, why in cases:
            if kind == "file":
                with open(path, "wb") as f:
                    f.write(b"squatted")
            else:
                os.mkdir(path, 0o755)
                os.chmod(path, 0o755)
            vm, qt = start(workdir, kind, path, KEY)
            try:
                info = board_info(vm)
                check(not info["joined"] and why in info.get("reason", ""),
                      "%s: board view %s" % (kind, info))
                check(why in vm.stderr(), "no warning:\n" + vm.stderr())
                fill(qt, 1)
                run_pass(vm)
                check(backend(vm, "m0")["resident-pages"] > 0,
                      "the engine stopped working")
                if kind == "open":
                    os.chmod(path, 0o700)
                    wait_for("the VM to join once it may", lambda: board_info(
                        vm)["joined"], 20)
                    check("joined" in vm.stderr(), "no word of joining")
            finally:
                vm.stop()
                qt.close()
            remove_path(path)
    finally:
        remove_path(path)


def remove_path(path):
    """Remove the board directory, or the file squatting its path."""
    if os.path.isdir(path):
        boardpeer.remove_board(path)
    elif os.path.exists(path):
        os.unlink(path)


def test_non_root(workdir):
    """QEMUs running as an unprivileged user share a board as root's do;
    a QEMU of another user (root) may not use their directory: it works
    alone and says why."""
    if os.geteuid() != 0:
        raise Skip("not root: cannot run QEMU as another user")
    fleet = Fleet(nobody_workdir(workdir))
    try:
        with open_umask():
            a = fleet.add("a", wrapper=AS_NOBODY)
            b = fleet.add("b", wrapper=AS_NOBODY)
        st = os.lstat(fleet.board)
        check(st.st_uid != 0 and stat.S_IMODE(st.st_mode) == 0o700,
              "board uid %d mode %o" % (st.st_uid, st.st_mode))
        wait_for("the unprivileged QEMUs to pair", lambda: all(
            board_info(vm)["peers"] == 1 for vm in (a, b)), 15)
        for vm in (a, b, a):
            run_pass(vm)
        for vm in (a, b):
            wait_cross(vm)
        r = fleet.add("r")
        info = board_info(r)
        check(not info["joined"] and "belongs to uid" in info.get(
            "reason", ""), "root's QEMU on nobody's board: %s" % info)
        run_pass(r)
        check(backend(r, "m0")["cross-vm-pages"] == 0,
              "root's QEMU found the others' content")
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
        ("board=%s,board-key=bk,board-size=2G" % path, "board-size"),
        ("board=%s,board-key=bk,board-timeout=5" % path, "board-timeout"),
        ("board=,board-key=bk", "must not be empty"),
        ("board=%s,board-key=short" % path, "at least 16 bytes"),
    ]
    for opts, want in cases:
        secret = "short" if "key=short" in opts else "bk"
        args = ["-accel", "qtest", "-nodefaults", "-machine", "none",
                "-object", "secret,id=%s,data=%s" % (
                    secret, "fifteen-bytes.." if secret == "short" else KEY),
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
        check(not os.path.exists(path), "left a board behind: " + opts)


if __name__ == "__main__":
    sys.exit(run_tests([
        ("board/cross-vm", test_cross_vm),
        ("board/killed-peer", test_killed_peer),
        ("board/quiet-publication", test_quiet_publication),
        ("board/peer-leaves", test_peer_leaves),
        ("board/full", test_board_full),
        ("board/small-filter", test_small_filter),
        ("board/policies-publish", test_policies_publish),
        ("board/unusable-directory", test_unusable_directory),
        ("board/non-root", test_non_root),
        ("board/bad-input", test_bad_input),
    ]))
