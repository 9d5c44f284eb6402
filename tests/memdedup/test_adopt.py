#!/usr/bin/env python3
"""Adoption without libvirt: the memdedup object's adopt and adopt-ram
properties put memory-backend-ram objects (QEMU's own pc.ram too) under
the engine, as under libvirt, whose backends these are.

- what adopt and adopt-ram take, and the errors for backends that
  cannot be adopted (missing, not a memory backend, a
  memory-backend-ksm, share=on); neither can change once the object
  exists; an adopted backend's merge stays off (qom-set refused), while
  a backend not adopted keeps QEMU's own setter;
- a migration between two QEMUs that adopt the same backend (as libvirt
  starts the destination with the source's arguments): hints carry the
  source's registration over, and guest memory arrives intact.
"""

import os
import random
import subprocess
import sys

from harness import (KNOWN_CANDIDATES, MiB, QEMU, backend, check,
                     digest_known, fill_known, qmp, start_qtest_vm, wait_for)
from harness import run_pass as run_qmp_pass
from harness import run_tests
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)


def check_merge_setter(vm):
    """'extra' is adopted, pc.ram is not: qom-set of merge=on is refused
    on the first and registers nothing; the second keeps QEMU's setter,
    which registers (and unregisters) all of it."""
    def mergeable():
        return sum(e - s for s, e in host.mergeable_vmas(vm.pid))

    before = mergeable()
    try:
        vm.qmp.cmd("qom-set", path="/objects/extra", property="merge",
                   value=True)
        raise AssertionError("merge=on accepted on an adopted backend")
    except qmp.QMPError as e:
        check("property 'merge' must stay off while memdedup manages this "
              "backend" in str(e), str(e))
    vm.qmp.cmd("qom-set", path="/objects/extra", property="merge",
               value=False)
    check(vm.qmp.cmd("qom-get", path="/objects/extra",
                     property="merge") is False, "extra's merge is on")
    check(mergeable() == before, "mergeable %d bytes, was %d"
          % (mergeable(), before))
    # pc.ram follows mem-merge (on): QEMU's setter unregisters it, and
    # registers it again.
    vm.qmp.cmd("qom-set", path="/objects/pc.ram", property="merge",
               value=False)
    check(mergeable() == before - 64 * MiB, "pc.ram merge=off: %d, was %d"
          % (mergeable(), before))
    vm.qmp.cmd("qom-set", path="/objects/pc.ram", property="merge",
               value=True)
    check(mergeable() == before, "pc.ram merge=on: %d, was %d"
          % (mergeable(), before))


def test_adopt_cli(workdir):
    """adopt and adopt-ram without libvirt: what is adopted, and the
    errors for backends that cannot be."""
    base = [QEMU, "-accel", "qtest", "-display", "none", "-nodefaults",
            "-m", "64M",
            "-object", "memory-backend-ram,id=shared,size=32M,share=on",
            "-object", "memory-backend-ram,id=extra,size=32M",
            "-object", "memory-backend-ksm,id=ksm0,size=32M"]
    for prop, error in (
            ("adopt=nope", "property 'adopt' of memdedup: no object with id "
                           "'nope'"),
            ("adopt=md", "property 'adopt' of memdedup: object 'md' is a "
                         "memdedup, not a memory backend"),
            ("adopt=ksm0", "property 'adopt' of memdedup: object 'ksm0' is a "
                           "memory-backend-ksm, not a memory-backend-ram"),
            ("adopt=shared", "property 'adopt' of memdedup: backend 'shared' "
                             "has share=on; KSM merges only private "
                             "anonymous memory")):
        r = subprocess.run(base + ["-object", "memdedup,id=md," + prop],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=60)
        check(r.returncode == 1 and error in r.stderr,
              "%s: rc %d: %s" % (prop, r.returncode, r.stderr))
    # QEMU's own pc.ram (plain -m) and a named backend; adopt-ram takes
    # every private memory-backend-ram.
    for prop, want in (("adopt=pc.ram,adopt=extra", ["ksm0", "pc.ram",
                                                      "extra"]),
                       ("adopt-ram=on", ["ksm0", "pc.ram", "extra"]),
                       ("adopt=extra", ["ksm0", "extra"])):
        vm = qmp.Qemu(QEMU, base[1:] + ["-object", "memdedup,id=md," + prop],
                      workdir, "adopt").start()
        try:
            ids = [b["id"] for b in vm.qmp.cmd("query-memdedup")["backends"]]
            check(sorted(ids) == sorted(want), "%s: %s" % (prop, ids))
            try:
                vm.qmp.cmd("qom-set", path="/objects/md",
                           property="adopt-ram", value=False)
                raise AssertionError("adopt-ram changed after creation")
            except qmp.QMPError as e:
                check("after it is created" in str(e), str(e))
            if prop == "adopt=extra":
                check_merge_setter(vm)
        finally:
            vm.stop()


def test_adopt_migration(workdir):
    """What libvirt does on migration, by hand: the destination starts
    with the same arguments, so it adopts the same backend, and hints
    carry the source's registration over to it."""
    size = 256
    args = ["-machine", "pc,memory-backend=pc.ram,mem-merge=off",
            "-m", "%dM" % size,
            "-object", "memory-backend-ram,id=pc.ram,size=%dM" % size,
            "-object", "memdedup,id=memdedup,adopt=pc.ram,migrate-hints=on,"
                       "rescan-interval=3600000"]
    sock = os.path.join(workdir, "migrate.sock")
    src = dst = src_qt = dst_qt = None
    try:
        src, src_qt = start_qtest_vm(workdir, "src", args)
        fill_known(src_qt, random.Random(6))
        run_qmp_pass(src)
        before = backend(src, "pc.ram")
        check(before["registered-bytes"] == KNOWN_CANDIDATES,
              "source registered %d" % before["registered-bytes"])
        dst, dst_qt = start_qtest_vm(workdir, "dst",
                                     args + ["-incoming", "unix:" + sock])
        src.qmp.cmd("migrate", uri="unix:" + sock)
        wait_for("the migration", lambda: src.qmp.cmd("query-migrate").get(
            "status") in ("completed", "failed", "cancelled"), 120)
        check(src.qmp.cmd("query-migrate")["status"] == "completed",
              "migration failed")
        after = wait_for("the destination to register the hints", lambda: (
            lambda b: b if b["hinted-regions"] else None)(
                backend(dst, "pc.ram")), 30)
        check(after["hinted-regions"] == KNOWN_CANDIDATES // (2 * MiB),
              "hinted regions %d" % after["hinted-regions"])
        check(digest_known(dst_qt) == digest_known(src_qt),
              "guest memory differs after migration")
    finally:
        for vm, qt in ((dst, dst_qt), (src, src_qt)):
            if vm:
                vm.stop()
            if qt:
                qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([("adopt/cli", test_adopt_cli),
                        ("adopt/migration", test_adopt_migration)]))
