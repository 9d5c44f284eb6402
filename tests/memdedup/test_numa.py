#!/usr/bin/env python3
"""Host NUMA placement and per-node KSM trees.

numa/single-node   two backends on two guest nodes, both bound to host
                   node 0 of this (one-node) host: every resident page is
                   reported on host node 0, duplicates count in one
                   domain, kernel-merged pages per (guest node, host
                   node) match the kernel's own count
numa/knob          merge_across_nodes changed on the host (borrowed and
                   restored) is what the next pass reports
numa/bad-input     host bindings QEMU or the kernel would refuse: clear
                   errors, no QEMU left running
numa/two-node      a real two-node host: the test guest booted under TCG
                   with two guest NUMA nodes runs our QEMU with one
                   backend bound to each of its nodes; with
                   merge_across_nodes=0 duplicates count and register
                   per node and ksmd merges only within a node; with =1
                   the cross-node duplicates become candidates and merge,
                   and the pages that now map the other node's KSM page
                   are reported off their bound node and re-homed.  The
                   guest's KSM knobs are the guest's: nothing to restore
"""

import json
import os
import re
import subprocess
import sys
import time

from harness import (GUEST_BOOT_TIMEOUT, MiB, PAGE, QEMU, TOP, GuestShell,
                     Skip, backend, check, qmp, run_pass, run_tests,
                     start_qtest_vm, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)
from inner import Shell, fill_command

NUMA_GUEST = os.path.join(TOP, "build", "guest-numa")


def tagged_pages(base, first_tag, count):
    """qtest commands making count distinct pages at base: every byte
    0x5a but the first eight, which hold the page's tag."""
    cmds = ["memset 0x%x 0x%x 0x5a" % (base, count * PAGE)]
    cmds += ["writeq 0x%x 0x%x" % (base + i * PAGE, first_tag + i)
             for i in range(count)]
    return cmds


def rows_by_node(info):
    """{(guest node, host node): placement row} of query-memdedup."""
    return {(r.get("guest-node"), r["host-node"]): r
            for r in info["numa"]["placement"]}


# --- one host node --------------------------------------------------------

SINGLE_MEM = 32               # MiB per backend
SHARED, TWINS = 1024, 512     # pages: in both backends / twice in each


def single_node_content(offset, own_tag):
    """Commands for one backend at guest-physical offset: SHARED pages
    that the other backend holds too, then TWINS pages written twice."""
    at = offset + 2 * MiB     # clear of the pc machine's 640K-1M hole
    cmds = tagged_pages(at, 1, SHARED)
    at += SHARED * PAGE
    for _ in range(2):
        cmds += tagged_pages(at, own_tag, TWINS)
        at += TWINS * PAGE
    return cmds


def test_single_node(workdir):
    with host.KsmKnobs(run=1, pages_to_scan=4000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        vm, qt = start_qtest_vm(workdir, "numa1", [
            "-machine", "pc", "-m", "%dM" % (2 * SINGLE_MEM), "-smp", "2",
            "-object", "memdedup,id=engine,rescan-interval=1000",
            "-object", "memory-backend-ksm,id=m0,size=%dM,host-nodes=0,"
                       "policy=bind" % SINGLE_MEM,
            "-object", "memory-backend-ksm,id=m1,size=%dM,host-nodes=0,"
                       "policy=preferred" % SINGLE_MEM,
            "-numa", "node,nodeid=0,cpus=0,memdev=m0",
            "-numa", "node,nodeid=1,cpus=1,memdev=m1"])
        try:
            for cmd in (single_node_content(0, 1000) +
                        single_node_content(SINGLE_MEM * MiB, 2000)):
                qt.command(cmd)
            info = run_pass(vm)
            numa = info["numa"]
            print("  numa: %s" % json.dumps(numa))
            nodes = len(open("/sys/devices/system/node/online").read()
                        .strip().split(","))
            check(numa["host-nodes"] >= 1, "host nodes %r" % numa)
            if numa["host-nodes"] != 1 or nodes != 1:
                raise Skip("the host has more than one NUMA node")
            check(numa["merge-across-nodes"] == (host.ksm_read(
                "merge_across_nodes") == 1), "knob %r" % numa)
            check(not numa["per-node-trees"], "per-node trees on one node")
            check(numa["unplaced-pages"] == 0,
                  "%d pages unplaced" % numa["unplaced-pages"])
            rows = rows_by_node(info)
            # Every resident page is on host node 0.
            check(set(rows) == {(0, 0), (1, 0)}, "rows %r" % list(rows))
            per_backend = SHARED + 2 * TWINS
            for g, bid in ((0, "m0"), (1, "m1")):
                r, b = rows[(g, 0)], backend(vm, bid)
                check(b["guest-node"] == g, "%s guest node %r" % (bid, b))
                check(b["host-nodes"] == [0], "%s host nodes %r" % (bid, b))
                check(b["off-node-pages"] == 0, "%s off node" % bid)
                check(b["rehomed-pages"] == 0, "%s re-homed" % bid)
                check(r["bound"], "row %r not bound" % r)
                check(r["resident-pages"] == b["resident-pages"] ==
                      per_backend, "resident %r / %d" %
                      (r, b["resident-pages"]))
                check(r["duplicate-pages"] == per_backend,
                      "duplicates %r" % r)
                check(r["cross-node-duplicate-pages"] == 0,
                      "cross-node duplicates on one node %r" % r)
            check(backend(vm, "m0")["host-policy"] == "bind" and
                  backend(vm, "m1")["host-policy"] == "preferred",
                  "policies")
            hmp = vm.qmp.hmp("info memdedup")
            check(re.search(r"NUMA: 1 host nodes", hmp) and
                  re.search(r"^1 +0 +yes +8\.0 +8\.0 +0\.0", hmp, re.M),
                  hmp)
            if not ksm.active:
                print("  ksmd not available: %s" % ksm.reason)
                return
            # ksmd merges everything registered; the per-node count of
            # KSM pages (kpageflags) converges to the kernel's per-backend
            # smaps count (refreshed once a second), and both to all of it.
            seen = {}

            def merged():
                i = run_pass(vm)
                rows = rows_by_node(i)
                if "kernel-merged-pages" not in rows[(0, 0)]:
                    raise Skip("kpageflags not readable")
                seen["rows"] = sum(r["kernel-merged-pages"]
                                   for r in rows.values())
                seen["smaps"] = sum(b.get("kernel-merged-pages", -1)
                                    for b in i["backends"])
                return seen["rows"] == seen["smaps"] == 2 * per_backend
            try:
                wait_for("ksmd merging", merged, timeout=60)
            finally:
                print("  kernel merged %s pages per node (smaps %s)" % (
                    seen.get("rows"), seen.get("smaps")))
        finally:
            vm.stop()
            qt.close()


def test_knob(workdir):
    """merge_across_nodes is re-read every pass (borrowed and restored:
    KsmKnobs unmerges everything first when pages are shared)."""
    before = host.ksm_read("merge_across_nodes")
    if before is None:
        raise Skip("no merge_across_nodes (kernel without NUMA)")
    with host.KsmKnobs(merge_across_nodes=1 - before) as ksm:
        if not ksm.active:
            raise Skip(ksm.reason)
        check(not ksm.errors, "KsmKnobs: %s" % ksm.errors)
        vm, qt = start_qtest_vm(workdir, "knob", [
            "-machine", "pc", "-m", "64M",
            "-object", "memory-backend-ksm,id=m0,size=64M",
            "-numa", "node,nodeid=0,memdev=m0"])
        try:
            qt.memset(2 * MiB, 4 * MiB, 0x5a)
            numa = run_pass(vm)["numa"]
            print("  merge_across_nodes %d -> %d: %s" % (
                before, 1 - before, json.dumps(numa)))
            check(numa["merge-across-nodes"] == (before == 0),
                  "knob not re-read: %r" % numa)
            # One host node: one domain whatever the knob says.
            check(not numa["per-node-trees"] and numa["repartitions"] == 0,
                  "partitioned on one node: %r" % numa)
            check(backend(vm, "m0")["duplicate-pages"] == 1024,
                  "duplicates %r" % backend(vm, "m0"))
        finally:
            vm.stop()
            qt.close()
    check(host.ksm_read("merge_across_nodes") == before,
          "merge_across_nodes not restored")


# --- refused bindings -----------------------------------------------------

def test_bad_input(workdir):
    nodes = open("/sys/devices/system/node/online").read().strip()
    missing = 63 if nodes != "0-63" else None
    cases = [
        # Bound to a node the host does not have (mbind would say EINVAL).
        ("host-nodes=%s,policy=bind" % missing,
         "names host node %s, but the host has" % missing),
        # preferred takes one node.
        ("host-nodes=0,host-nodes=%s,policy=preferred" % missing,
         "policy 'preferred' takes one host node, not 2"),
        # QEMU's own checks, kept.
        ("host-nodes=200,policy=bind", "Invalid host-nodes value: 200"),
        ("policy=bind", "host-nodes must be set for policy bind"),
        ("host-nodes=0", "host-nodes must be empty for policy default"),
        ("host-nodes=0,policy=sideways", "sideways"),
    ]
    for props, expect in cases:
        proc = subprocess.run(
            [QEMU, "-machine", "none", "-accel", "qtest", "-nodefaults",
             "-display", "none", "-object",
             "memory-backend-ksm,id=m0,size=16M," + props],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=30)
        print("  %s -> %s" % (props, proc.stderr.strip()))
        check(proc.returncode == 1, "%s: exit %d" % (props,
                                                     proc.returncode))
        check(expect in proc.stderr, "%s: %s" % (props, proc.stderr))
    # A good binding still works.
    proc = subprocess.run(
        [QEMU, "-machine", "none", "-accel", "qtest", "-nodefaults",
         "-display", "none", "-object",
         "memory-backend-ksm,id=m0,size=16M,host-nodes=0,policy=bind",
         "-qmp", "stdio"], input='{"execute":"qmp_capabilities"}\n'
        '{"execute":"quit"}\n', capture_output=True, text=True, timeout=30)
    check(proc.returncode == 0, "host-nodes=0: %s" % proc.stderr)


# --- two host nodes (a guest) ----------------------------------------------

INNER_MEM = 32                # MiB per inner backend (one per guest node)
CROSS, WITHIN = 2048, 1024    # pages: in both backends / twice in each
# mem-merge=off: QEMU's own firmware blocks stay out of KSM, so that the
# guest's KSM counters count the backends alone.
INNER = ("qemu-system-x86_64 -L /qemu -machine pc,mem-merge=off -accel qtest "
         "-qtest pipe:/tmp/qt -qtest-log /dev/null -qmp pipe:/tmp/qmp "
         "-nodefaults -display none -m {mem}M -smp 2 "
         "-object memdedup,id=engine,rescan-interval=1000 "
         "-object memory-backend-ksm,id=m0,size={half}M,host-nodes=0,"
         "policy=bind "
         "-object memory-backend-ksm,id=m1,size={half}M,host-nodes=1,"
         "policy=bind "
         "-numa node,nodeid=0,cpus=0,memdev=m0 "
         "-numa node,nodeid=1,cpus=1,memdev=m1").format(
             mem=2 * INNER_MEM, half=INNER_MEM)


def inner_content():
    """[(address, first tag, pages)]: in each backend (at 2 MiB) CROSS
    pages that the other backend holds too, then WITHIN pages of its own,
    twice."""
    segments = []
    for b in range(2):
        at = b * INNER_MEM * MiB + 2 * MiB
        segments.append((at, 1, CROSS))
        at += CROSS * PAGE
        for _ in range(2):
            segments.append((at, 100000 * (b + 1), WITHIN))
            at += WITHIN * PAGE
    return segments


class Inner(Shell):
    """The guest's shell and the QEMU inside it."""

    name = "two-node guest"

    def __init__(self, vm, shell):
        self.vm, self.shell = vm, shell

    def run(self, cmd, timeout):
        return self.shell.run(self.vm, cmd, timeout)

    def merged_mappings(self):
        """Pages mapped to KSM pages in the guest, by its ksmd's own
        count (pages_shared + pages_sharing); the inner QEMU is the only
        user of KSM there."""
        return self.knob("pages_shared") + self.knob("pages_sharing")

    def hmp_numa(self):
        """The NUMA lines of the inner QEMU's info memdedup."""
        out = self.qmp("human-monitor-command",
                       **{"command-line": "info memdedup"})
        lines = out.splitlines()
        start = next(i for i, l in enumerate(lines) if l.startswith("NUMA"))
        end = next(i for i, l in enumerate(lines) if l.startswith("process"))
        return "\n".join("    " + l for l in lines[start:end])

    def summary(self, info):
        numa = info["numa"]
        rows = ["(%s,%s) res %d dup %d cross %d merged %s bound %s" % (
            r.get("guest-node"), r["host-node"], r["resident-pages"],
            r["duplicate-pages"], r["cross-node-duplicate-pages"],
            r.get("kernel-merged-pages"), r.get("bound"))
            for r in numa["placement"]]
        regs = ["%s reg %d MiB off-node %s rehomed %d" % (
            b["id"], b["registered-bytes"] // MiB, b.get("off-node-pages"),
            b["rehomed-pages"]) for b in info["backends"]]
        return "mak %s trees %s repart %d; %s; %s" % (
            numa.get("merge-across-nodes"), numa["per-node-trees"],
            numa["repartitions"], "; ".join(rows), "; ".join(regs))


def numa_guest_args(shell):
    kernel = os.path.join(NUMA_GUEST, "vmlinuz")
    initrd = os.path.join(NUMA_GUEST, "initramfs.cpio.gz")
    if not (os.path.exists(kernel) and os.path.exists(initrd)):
        raise Skip("no two-node guest: run scripts/memdedup/"
                   "make-numa-guest.sh")
    cmdline = ("console=ttyS0 quiet panic=-1 memdedup.zero=0 "
               "memdedup.shared=0 memdedup.copies=0 memdedup.unique=0")
    return ["-accel", "tcg", "-no-reboot", "-nodefaults", "-kernel", kernel,
            "-initrd", initrd, "-append", cmdline, "-m", "1G", "-smp", "2",
            "-object", "memory-backend-ram,id=g0,size=512M",
            "-object", "memory-backend-ram,id=g1,size=512M",
            "-numa", "node,nodeid=0,cpus=0,memdev=g0",
            "-numa", "node,nodeid=1,cpus=1,memdev=g1"] + shell.args()


def test_two_node(workdir):
    # The guest carries the QEMU just built (quick when up to date).
    made = subprocess.run([os.path.join(TOP, "scripts", "memdedup",
                                        "make-numa-guest.sh")])
    check(made.returncode == 0, "make-numa-guest.sh failed")
    shell = GuestShell(workdir)
    vm = qmp.Qemu(QEMU, numa_guest_args(shell), workdir, "numa-host").start()
    try:
        t0 = time.monotonic()
        check(vm.wait_serial("MEMDEDUP-GUEST-READY", GUEST_BOOT_TIMEOUT),
              "guest did not get ready:\n" + vm.serial()[-2000:])
        print("  guest ready after %.1f s" % (time.monotonic() - t0))
        g = Inner(vm, shell)
        # The guest's /init sets ttyS1 raw just after it says ready: a
        # line sent before that may lose characters.  Sync first.
        for _ in range(5):
            status, out = shell.run(vm, "echo in-sync")
            if status == 0 and "in-sync" in out:
                break
            time.sleep(1)
        online = g.sh("cat /sys/devices/system/node/online").split()[-1]
        check(online == "0-1", "guest nodes %r" % online)
        # The guest is ours: its KSM knobs need no restoring.
        check(g.knob("merge_across_nodes", 0) == 0, "knob")
        g.knob("pages_to_scan", 2000)
        g.knob("sleep_millisecs", 10)
        g.knob("run", 1)

        g.sh("mkfifo /tmp/qt.in /tmp/qt.out /tmp/qmp.in /tmp/qmp.out")
        g.sh("%s >/tmp/qemu.log 2>&1 & echo $! > /tmp/qemu.pid" % INNER)
        pid = int(g.sh("cat /tmp/qemu.pid").split()[-1])
        g.qmp("qmp_capabilities")
        t1 = time.monotonic()
        segments = inner_content()
        count = sum(n + 1 for _, _, n in segments)
        out = g.sh(fill_command(segments), timeout=600)
        check("QT-OK %d of %d" % (count, count) in out, out)
        print("  inner QEMU pid %d filled in %.1f s" % (
            pid, time.monotonic() - t1))

        # merge_across_nodes=0: per-node trees.
        info = g.run_pass()
        print("  mak=0: " + g.summary(info))
        rows = rows_by_node(info)
        per_backend = CROSS + 2 * WITHIN
        check(info["numa"]["host-nodes"] == 2, "host nodes")
        check(info["numa"]["per-node-trees"], "not per-node")
        check(set(rows) == {(0, 0), (1, 1)}, "rows %r" % list(rows))
        for n in (0, 1):
            r = rows[(n, n)]
            check(r["bound"], "row %r" % r)
            check(r["resident-pages"] == per_backend, "resident %r" % r)
            check(r["duplicate-pages"] == 2 * WITHIN, "within %r" % r)
            check(r["cross-node-duplicate-pages"] == CROSS, "cross %r" % r)
        for b in info["backends"]:
            check(b["off-node-pages"] == 0, "off node %r" % b)
            # Only the regions of twins within the node are registered.
            check(b["registered-bytes"] == 2 * WITHIN * PAGE,
                  "registered %r" % b["registered-bytes"])
        # ksmd merges within each node: every WITHIN pair, nothing else.
        def merged_within():
            rows = rows_by_node(g.run_pass())
            got = [rows[(n, n)].get("kernel-merged-pages") for n in (0, 1)]
            return got if got == [2 * WITHIN] * 2 else None
        t2 = time.monotonic()
        wait_for("ksmd merging within nodes", merged_within, timeout=300)
        merging = g.merged_mappings()
        print("  mak=0: merged within nodes after %.1f s, ksmd: %d pages "
              "merged into %d" % (time.monotonic() - t2, merging,
                                  g.knob("pages_shared")))
        check(merging == 4 * WITHIN, "ksmd merged %d pages" % merging)
        check(g.knob("pages_shared") == 2 * WITHIN, "KSM pages")
        print(g.hmp_numa())

        # merge_across_nodes=1: the knob changes only with nothing shared.
        g.knob("run", 2)
        wait_for("unmerging", lambda: g.knob("pages_shared") == 0, 120)
        check(g.knob("merge_across_nodes", 1) == 1, "knob")
        # ksmd stays stopped until the new registration has been checked.
        g.knob("run", 0)
        info = wait_for("repartition", lambda: (lambda i: i if not
                        i["numa"]["per-node-trees"] else None)(g.run_pass()),
                        60)
        print("  mak=1: " + g.summary(info))
        check(info["numa"]["repartitions"] == 1, "repartitions")
        rows = rows_by_node(info)
        for n in (0, 1):
            r = rows[(n, n)]
            check(r["duplicate-pages"] == 2 * WITHIN, "within %r" % r)
            check(r["cross-node-duplicate-pages"] == CROSS, "cross %r" % r)
        for b in info["backends"]:
            # Cross-node twins are candidates now.
            check(b["duplicate-pages"] == per_backend, "dup %r" % b)
            check(b["registered-bytes"] == per_backend * PAGE,
                  "registered %r" % b["registered-bytes"])
        g.knob("run", 1)
        t3 = time.monotonic()

        def merged_all():
            m = g.merged_mappings()
            return m if m == 2 * per_backend else None
        wait_for("ksmd merging across nodes", merged_all, timeout=300)
        info = g.run_pass()
        print("  mak=1: merged across nodes after %.1f s: %s" % (
            time.monotonic() - t3, g.summary(info)))
        # One page of each cross-node pair now maps the other node's KSM
        # page: the guests lost locality, and the report shows it.
        off = sum(b["off-node-pages"] for b in info["backends"])
        moved = sum(b["rehomed-pages"] for b in info["backends"])
        check(off >= CROSS, "off-node pages %d" % off)
        check(moved >= CROSS, "re-homed pages %d" % moved)
        merged = sum(r.get("kernel-merged-pages", 0)
                     for r in info["numa"]["placement"])
        check(merged == 2 * per_backend, "merged %d" % merged)
        print(g.hmp_numa())
        g.sh("kill %d" % pid)
    finally:
        shell.close()
        vm.stop()


if __name__ == "__main__":
    sys.exit(run_tests([("numa/single-node", test_single_node),
                        ("numa/knob", test_knob),
                        ("numa/bad-input", test_bad_input),
                        ("numa/two-node", test_two_node)]))
