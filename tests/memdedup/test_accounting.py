#!/usr/bin/env python3
"""Savings that add up: each backend's attributed-saving, by the rule of
the manual (a KSM page mapped N times saves N - 1 pages, each mapping
is attributed (N - 1) / N of a page).

accounting/attributed  three QEMUs under -accel qtest, real ksmd:
                       content shared by all three, by two of them,
                       and twice within one.  Each QEMU's
                       attributed-saving is the rule's value for that
                       content (exact, through /proc/kpagecount), and
                       the three add up to what the host's
                       pages_sharing grew by, within 1 %
accounting/unprivileged  the same QEMUs as nobody: the figure is an
                       upper bound, said so, and equals actual-saving
"""

import sys
import time

from harness import (AS_NOBODY, MiB, PAGE, backend, borrowed_ksm, check,
                     need_ksm_root, nobody_workdir, open_umask, run_pass,
                     run_tests, start_qtest_vm, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

SIZE = 64 * MiB
BLOCK = 512                   # pages: one 2 MiB region
THREE_AT, TWO_AT, OWN_AT, UNIQUE_AT = 4 * MiB, 8 * MiB, 12 * MiB, 20 * MiB
UNIQUE = 256                  # pages no one else has
MERGE_BOUND = 120


def tagged(first, pages):
    body = b"\x5a" * (PAGE - 8)
    return b"".join((first + i).to_bytes(8, "little") + body
                    for i in range(pages))


def content(name):
    """[(guest address, bytes)] of VM @name ("a", "b" or "c")."""
    out = [(THREE_AT, tagged(1, BLOCK))]                 # in all three
    if name in "ab":
        out.append((TWO_AT, tagged(10000, BLOCK)))       # in a and b
    else:
        own = tagged(20000, BLOCK)                       # twice in c
        out += [(OWN_AT, own), (OWN_AT + BLOCK * PAGE, own)]
    out.append((UNIQUE_AT, tagged((ord(name) << 32) + 1, UNIQUE)))
    return out


# The rule's value, in pages: the three-way block saves 2 pages per page
# (2/3 each), the two-way block 1 (1/2 each to a and b), c's own block
# 1 per page (both mappings are c's).
EXPECTED = {"a": BLOCK * (2 / 3 + 1 / 2), "b": BLOCK * (2 / 3 + 1 / 2),
            "c": BLOCK * (2 / 3 + 1)}
MERGED = {"a": 2 * BLOCK, "b": 2 * BLOCK, "c": 3 * BLOCK}


def merging(pid):
    with open("/proc/%d/ksm_merging_pages" % pid) as f:
        return int(f.read())


def start_vms(workdir, wrapper=()):
    vms = {}
    try:
        for name in "abc":
            # policy all: the cross-VM content needs no board here.
            vm, qt = start_qtest_vm(workdir, "acct-" + name, [
                "-machine", "pc,memory-backend=m0,mem-merge=off",
                "-m", "%dM" % (SIZE // MiB),
                "-object", "memdedup,id=engine,rescan-interval=3600000",
                "-object", "memory-backend-ksm,id=m0,size=%dM,"
                           "dedup-policy=all" % (SIZE // MiB)], wrapper)
            vms[name] = (vm, qt)
            for addr, data in content(name):
                qt.write(addr, data)
    except BaseException:
        stop_vms(vms)
        raise
    return vms


def stop_vms(vms):
    for vm, qt in vms.values():
        try:
            vm.stop()
        finally:
            qt.close()


def settle(ksm):
    """pages_sharing once ksmd has dropped what exited processes left:
    the same for a second (ksmd, at 4000 pages per 10 ms, has gone over
    everything registered many times by then)."""
    last, same = None, 0
    deadline = time.monotonic() + 30
    while same < 5 and time.monotonic() < deadline:
        now = host.ksm_read("pages_sharing")
        same = same + 1 if now == last else 0
        last = now
        time.sleep(0.2)
    return last


def start_vms_quiet(ksm, workdir, wrapper=()):
    """start_vms with ksmd stopped, then running again: it sees every
    copy of a content first in the same full scan.  With smart_scan,
    copies first seen long apart may never merge (tests/memdedup/
    test_smart_scan.py); without a board, nothing tells the engine that
    a page it holds once is held by another QEMU, so it cannot help."""
    ksm.set("run", 0)
    try:
        if wrapper:
            with open_umask():      # its sockets, for QEMU as nobody
                return start_vms(workdir, wrapper)
        return start_vms(workdir)
    finally:
        ksm.set("run", 1)


def merge_all(vms):
    for vm, _ in vms.values():
        run_pass(vm)
    for name, (vm, _) in vms.items():
        wait_for("ksmd merging %s" % name,
                 lambda: merging(vm.pid) >= MERGED[name], MERGE_BOUND)


def test_attributed(workdir):
    with borrowed_ksm(run=1, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        base = settle(ksm)
        vms = start_vms_quiet(ksm, workdir)
        try:
            merge_all(vms)
            ksm.set("run", 0)         # nothing moves while we count
            grown = host.ksm_read("pages_sharing") - base
            total = 0.0
            for name, (vm, _) in vms.items():
                run_pass(vm)
                b = backend(vm, "m0")
                check(b.get("attributed-saving-accuracy") == "exact",
                      "%s: %r" % (name, b.get("attributed-saving-accuracy")))
                got = b["attributed-saving"] / PAGE
                print("  %s: attributed %.1f pages (rule: %.1f), merged %d, "
                      "actual-saving %d pages" % (
                          name, got, EXPECTED[name],
                          b["kernel-merged-pages"],
                          b["actual-saving"] // PAGE))
                check(abs(got - EXPECTED[name]) <= 0.01 * EXPECTED[name],
                      "%s: attributed %.1f pages, rule %.1f"
                      % (name, got, EXPECTED[name]))
                check(b["kernel-merged-pages"] == MERGED[name],
                      "%s merged %d" % (name, b["kernel-merged-pages"]))
                total += got
            print("  sum %.1f pages, host pages_sharing grew by %d; "
                  "actual-saving would sum to %d" % (
                      total, grown, sum(MERGED.values())))
            check(abs(total - grown) <= 0.01 * grown,
                  "attributed sum %.1f, pages_sharing grew by %d"
                  % (total, grown))
            info = vms["a"][0].qmp.cmd("human-monitor-command",
                                       **{"command-line": "info memdedup"})
            check("attributed saving" in info and "(exact)" in info, info)
        finally:
            stop_vms(vms)


def test_unprivileged(workdir):
    need_ksm_root()
    shared = nobody_workdir(workdir)
    with borrowed_ksm(run=1, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        vms = start_vms_quiet(ksm, shared, wrapper=AS_NOBODY)
        try:
            merge_all(vms)
            ksm.set("run", 0)
            for name, (vm, _) in vms.items():
                run_pass(vm)
                b = backend(vm, "m0")
                print("  %s as nobody: attributed %s (%s), actual %s" % (
                    name, b.get("attributed-saving"),
                    b.get("attributed-saving-accuracy"),
                    b.get("actual-saving")))
                check(b.get("attributed-saving-accuracy") == "upper-bound",
                      "%s: %r" % (name, b))
                check(b["attributed-saving"] == b["actual-saving"] ==
                      MERGED[name] * PAGE, "%s: %r" % (name, b))
                k = vm.qmp.cmd("query-memdedup")["kernel"]
                check(not k["kpagecount"], "kpagecount as nobody")
        finally:
            stop_vms(vms)


if __name__ == "__main__":
    sys.exit(run_tests([("accounting/attributed", test_attributed),
                        ("accounting/unprivileged", test_unprivileged)]))
