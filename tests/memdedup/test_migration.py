#!/usr/bin/env python3
"""Live migration: the engine pauses on the source while a migration runs
and resumes if it fails or is cancelled; a destination scans nothing until
the incoming migration completes, then registers at once; optional hints,
sent when the migration starts, carry the source's registration so the
destination registers it while RAM arrives.  Two QEMUs under -accel qtest, guest
memory written through qtest, migration over a unix socket.
"""

import os
import random
import signal
import sys
import time

from harness import (KNOWN_CANDIDATES, KNOWN_ZERO, MiB, PAGE, Skip, backend,
                     check, digest_known, expected_registration, fill_known,
                     host_address, kernel_residency, known_candidate,
                     known_registered_regions, mergeable_vmas, qmp,
                     run_pass, run_tests,
                     start_qtest_vm, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

SIZE = 256 * MiB
ZERO = KNOWN_ZERO
# What the source registers after its pass on the known content.
REGISTERED = KNOWN_CANDIDATES


def vm_args(backend_opts="", engine_opts="", incoming=None,
            backend_type="memory-backend-ksm"):
    args = ["-machine", "pc,memory-backend=m0,mem-merge=off",
            "-m", "%dM" % (SIZE // MiB)]
    if backend_type == "memory-backend-ksm":
        args += ["-object", "memdedup,id=engine,rescan-interval=3600000" +
                 engine_opts]
    # dump=off: a VMA flag no neighbour has, so host_address() finds
    # the RAM as one mapping.
    args += ["-object", "%s,id=m0,size=%dM,dump=off%s"
             % (backend_type, SIZE // MiB, backend_opts)]
    if incoming:
        args += ["-incoming", "unix:" + incoming]
    return args


class Pair:
    """A source filled with content and a destination waiting for it."""

    def __init__(self, workdir, src_engine="", dst_backend="",
                 dst_engine="", dst_type="memory-backend-ksm"):
        self.sock = os.path.join(workdir, "migrate.sock")
        self.src = self.dst = self.src_qt = self.dst_qt = None
        try:
            self.src, self.src_qt = start_qtest_vm(
                workdir, "src", vm_args(engine_opts=src_engine))
            # Looked up before the first registration splits the mapping.
            self.src_base = host_address(self.src.pid, SIZE)
            fill_known(self.src_qt, random.Random(11))
            run_pass(self.src)
            self.dst, self.dst_qt = start_qtest_vm(
                workdir, "dst", vm_args(dst_backend, dst_engine, self.sock,
                                        dst_type))
            self.dst_base = host_address(self.dst.pid, SIZE)
        except BaseException:
            # Whatever started is stopped: the caller has no Pair to close.
            self.close()
            raise

    def migrate(self, bandwidth=None, postcopy=False, return_path=False):
        if return_path:
            for vm in (self.src, self.dst):
                vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "return-path", "state": True}])
        if bandwidth:
            self.src.qmp.cmd("migrate-set-parameters",
                             **{"max-bandwidth": bandwidth})
        if postcopy:
            for vm in (self.src, self.dst):
                vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "postcopy-ram", "state": True}])
        self.src.qmp.cmd("migrate", uri="unix:" + self.sock)

    def status(self):
        return self.src.qmp.cmd("query-migrate").get("status")

    def wait(self, timeout=120, during=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st in ("completed", "failed", "cancelled"):
                return st
            if during:
                during(st)
            time.sleep(0.05)
        raise AssertionError("migration did not end in %d s" % timeout)

    def expected(self, vm, kept=()):
        """What @vm (src or dst) registers by the kernel's residency of
        its RAM now.  Whether migration leaves never-written memory
        resident depends on the kernel: where a read fault maps the zero
        page, a zero page read (the source sending it, the destination
        checking it is zero) costs nothing; where it allocates a
        zero-filled page, every page read becomes resident zero memory,
        and the engine rightly registers it.  None without PFNs."""
        res = kernel_residency(vm.pid, self.src_base if vm is self.src
                               else self.dst_base, SIZE)
        if res is None:
            return None
        return expected_registration(res, known_candidate, kept=kept)

    def wait_registered(self, vm, what, kept=()):
        """Wait until @vm registers what its residency says; return it."""
        last = {}

        def done():
            want = self.expected(vm, kept)
            got = backend(vm, "m0")["registered-bytes"]
            last.update(want=want, got=got)
            if want is None:            # PFNs hidden: the content alone
                return got >= REGISTERED - ZERO[1] and got
            return got == want and got
        try:
            return wait_for(what, done)
        except AssertionError:
            raise AssertionError("%s: registered %s, the kernel's "
                                 "residency says %s"
                                 % (what, last.get("got"), last.get("want")))

    def close(self):
        for vm, qt in ((self.dst, self.dst_qt), (self.src, self.src_qt)):
            if vm:
                vm.stop()
            if qt:
                qt.close()


def engine(vm):
    return vm.qmp.cmd("query-memdedup")


def passes(info):
    """Passes of any kind: full ones and the residency watch's."""
    return info["passes-completed"] + info["partial-passes"]


def events(vm, name):
    return [e for e in vm.qmp.events if e.get("event") == name]


def test_precopy(workdir):
    with host.KsmKnobs(run=1, pages_to_scan=2000, sleep_millisecs=10,
                      use_zero_pages=0) as ksm:
        p = Pair(workdir)
        try:
            src_merged = 0
            if ksm.active:
                src_merged = wait_for("merging on the source", lambda: (
                    lambda m: m if m >= 0.9 * REGISTERED // PAGE else 0)(
                        backend(p.src, "m0").get("kernel-merged-pages", 0)),
                    60)
            d = engine(p.dst)
            check(d["state"] == "paused" and
                  d["paused-reason"] == "incoming migration",
                  "destination before migration: %s" % d["state"])
            check(passes(d) == 0, "destination scanned early")
            before = digest_known(p.src_qt)

            seen = {"src-paused": False}

            def during(st):
                if st == "active":
                    e = engine(p.src)
                    if e["state"] == "paused" and \
                       e["paused-reason"] == "outgoing migration":
                        seen["src-paused"] = True
                    check(passes(engine(p.dst)) == 0,
                          "destination scanned during the migration")
            p.migrate(bandwidth=48 * MiB)
            check(p.wait(during=during) == "completed", "migration failed")
            check(seen["src-paused"], "source never seen paused")
            check(any(e["data"]["state"] == "paused" for e in
                      events(p.src, "MEMDEDUP_STATE_CHANGED")),
                  "no MEMDEDUP_STATE_CHANGED paused event on the source")
            check(engine(p.src)["state"] == "paused", "source resumed")

            # The destination registers as soon as it is complete.
            p.wait_registered(p.dst, "registration on the destination")
            check(engine(p.dst)["passes-completed"] >= 1, "no pass")
            check(digest_known(p.dst_qt) == before, "guest memory differs")
            if ksm.active:
                # The source's merged zero pages may never be allocated
                # on the destination (where a read maps the zero page):
                # compare the rest.
                goal = 0.9 * (src_merged - ZERO[1] // PAGE)
                merged = wait_for("merging on the destination", lambda: (
                    lambda m: m if m >= goal else 0)(
                        backend(p.dst, "m0").get("kernel-merged-pages", 0)),
                    60)
                print("  source merged %d, destination %d pages"
                      % (src_merged, merged))
            # A completed source that is continued after all scans again.
            p.src.qmp.cmd("cont")
            wait_for("the continued source to resume",
                     lambda: engine(p.src)["state"] != "paused")
        finally:
            p.close()


def test_postcopy(workdir):
    if not os.path.exists("/proc/sys/vm/unprivileged_userfaultfd") and \
       os.geteuid() != 0:
        raise Skip("userfaultfd not available")
    p = Pair(workdir)
    try:
        before = digest_known(p.src_qt)
        p.migrate(bandwidth=32 * MiB, postcopy=True)
        # Postcopy starts while precopy runs (256 MiB at 32 MiB/s: 8 s).
        wait_for("precopy to run", lambda: p.status() == "active")
        p.src.qmp.cmd("migrate-start-postcopy")
        observed = {"postcopy": False}

        def during(st):
            if st.startswith("postcopy"):
                observed["postcopy"] = True
                check(passes(engine(p.dst)) == 0,
                      "destination scanned during postcopy")
        check(p.wait(during=during) == "completed", "postcopy failed")
        check(observed["postcopy"], "never saw postcopy-active")
        p.wait_registered(p.dst, "registration after postcopy")
        check(digest_known(p.dst_qt) == before, "guest memory differs")
    finally:
        p.close()


def check_source_resumed(p):
    """After a migration that did not complete, the source scans again and
    still has its registration."""
    wait_for("the source to resume",
             lambda: engine(p.src)["state"] != "paused")
    passes = engine(p.src)["passes-completed"]
    run_pass(p.src)
    check(engine(p.src)["passes-completed"] > passes, "no pass after")
    # Everything registered before (the known candidates) and whatever
    # the migration's reads made resident since.
    got = p.wait_registered(p.src, "registration after resuming",
                            kept=known_registered_regions())
    check(got >= REGISTERED, "registration lost: %d bytes" % got)


def test_cancel_resumes(workdir):
    p = Pair(workdir)
    try:
        p.migrate(bandwidth=4 * MiB)
        wait_for("the source to pause",
                 lambda: engine(p.src)["state"] == "paused")
        p.src.qmp.cmd("migrate_cancel")
        check(p.wait() == "cancelled", "not cancelled")
        check_source_resumed(p)
        check(any(e["data"]["state"] != "paused" and "cancel" in
                  e["data"]["reason"] for e in
                  events(p.src, "MEMDEDUP_STATE_CHANGED")), "no resume event")
    finally:
        p.close()


def test_failed_resumes(workdir):
    p = Pair(workdir)
    try:
        p.migrate(bandwidth=4 * MiB)
        wait_for("the source to pause",
                 lambda: engine(p.src)["state"] == "paused")
        os.kill(p.dst.pid, signal.SIGKILL)
        check(p.wait() == "failed", "migration did not fail")
        check_source_resumed(p)
    finally:
        p.close()


def start_source(workdir):
    """One VM with the known content and a completed pass, to migrate to
    a file (no destination)."""
    vm, qt = start_qtest_vm(workdir, "src", vm_args())
    try:
        fill_known(qt, random.Random(12))
        run_pass(vm)
    except BaseException:
        vm.stop()
        qt.close()
        raise
    return vm, qt


def migrate_to_nowhere(vm):
    """Migrate @vm into /dev/null; return when the migration completed
    (query-migrate says so: the cleanup may still be pending)."""
    vm.qmp.cmd("migrate", uri="exec:cat > /dev/null")
    st = wait_for("the migration to end", lambda: (
        lambda s: s if s in ("completed", "failed", "cancelled") else None)(
            vm.qmp.cmd("query-migrate").get("status")), 120)
    check(st == "completed", "migration %s" % st)


def check_engine_goes_on(vm, what):
    """The engine is not paused, stays so, and completes passes."""
    wait_for(what, lambda: engine(vm)["state"] != "paused", 10)
    time.sleep(1)       # a late completion notifier must not pause it
    info = engine(vm)
    check(info["state"] != "paused", "%s: paused again (%s)"
          % (what, info.get("paused-reason")))
    before = info["passes-completed"]
    check(run_pass(vm)["passes-completed"] > before, "no pass after " + what)


def test_background_snapshot(workdir):
    """A background snapshot restarts the guest before it completes: the
    engine pauses while it is written and goes on once it completed."""
    vm, qt = start_source(workdir)
    try:
        try:
            vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "background-snapshot", "state": True}])
        except qmp.QMPError as e:
            raise Skip("no background snapshot here: %s" % e)
        migrate_to_nowhere(vm)
        check(vm.qmp.cmd("query-status")["status"] == "running",
              "the guest does not run after the snapshot")
        check(any(e["data"]["state"] == "paused" for e in
                  events(vm, "MEMDEDUP_STATE_CHANGED")),
              "the engine never paused for the snapshot")
        check_engine_goes_on(vm, "the background snapshot")
    finally:
        vm.stop()
        qt.close()


def test_cont_right_after_completion(workdir):
    """cont as soon as the migration reports completion, which may come
    before the migration's cleanup tells the engine it completed."""
    vm, qt = start_source(workdir)
    try:
        migrate_to_nowhere(vm)
        vm.qmp.cmd("cont")
        check_engine_goes_on(vm, "cont right after completion")
    finally:
        vm.stop()
        qt.close()


def hinted_migration(workdir, hints, dst_backend=""):
    """Migrate to a destination whose first pass is slow (1 MiB/s);
    return its backend info 3 s after completion, its stderr, and what
    the kernel then has: (the known candidate regions the destination
    has mergeable, what its residency would have a full pass register),
    or None without PFNs."""
    p = Pair(workdir, src_engine=",migrate-hints=on" if hints else "",
             dst_backend=dst_backend, dst_engine=",scan-rate=1M")
    try:
        p.migrate()
        check(p.wait() == "completed", "migration failed")
        time.sleep(3)
        b = backend(p.dst, "m0")
        covered = set()
        for s, e in mergeable_vmas(p.dst.pid):
            first = max(s, p.dst_base) - p.dst_base
            last = min(e, p.dst_base + SIZE) - p.dst_base
            covered.update(range(first // (2 * MiB), last // (2 * MiB)))
        return b, p.dst.stderr(), (
            covered & known_registered_regions(), p.expected(p.dst))
    finally:
        p.close()


def test_hints(workdir):
    # The hinted regions are registered at once; the slow first pass may
    # have registered a few more by now (on a kernel that allocates a
    # page on a read fault, migration made never-written memory
    # resident zero memory, and the pass registers it as it goes), but
    # never more than what a full pass would.
    b, _, (covered, full) = hinted_migration(workdir, hints=True)
    known = known_registered_regions()
    check(covered == known, "with hints: known regions not mergeable: %s"
          % sorted(known - covered))
    check(b["hinted-regions"] == REGISTERED // (2 * MiB),
          "hinted regions %d" % b["hinted-regions"])
    check(REGISTERED <= b["registered-bytes"] <= max(full or 0, REGISTERED),
          "with hints: registered %d, the known regions %d, a full pass "
          "%s" % (b["registered-bytes"], REGISTERED, full))
    b, _, _ = hinted_migration(workdir, hints=False)
    check(b["registered-bytes"] < REGISTERED // 2,
          "without hints, registered %d before the first pass"
          % b["registered-bytes"])
    check(b["hinted-regions"] == 0, "hints without hints")


def test_hints_before_ram(workdir):
    # The hints travel in the migration's setup stage: the destination
    # registers the source's regions while RAM is still arriving, without
    # scanning anything.
    p = Pair(workdir, src_engine=",migrate-hints=on")
    try:
        before = digest_known(p.src_qt)
        seen = {}

        def during(st):
            if st != "active" or seen:
                return
            d, b = engine(p.dst), backend(p.dst, "m0")
            if b["registered-bytes"] == REGISTERED:
                check(d["state"] == "paused" and passes(d) == 0,
                      "destination scanned during the migration")
                seen["registered"] = b["hinted-regions"]
                p.src.qmp.cmd("migrate-set-parameters",
                              **{"max-bandwidth": 1024 * MiB})
        p.migrate(bandwidth=8 * MiB)
        check(p.wait(during=during) == "completed", "migration failed")
        check(seen.get("registered") == REGISTERED // (2 * MiB),
              "hinted regions not registered while RAM arrived: %s" % seen)
        check(digest_known(p.dst_qt) == before, "guest memory differs")
    finally:
        p.close()


def test_hints_mismatch(workdir):
    b, err, _ = hinted_migration(workdir, hints=True,
                                 dst_backend=",region-size=4M")
    check(b["hinted-regions"] == 0, "mismatched hints applied")
    check("ignoring migration hints for 'm0'" in err,
          "no warning:\n" + err)


def test_hints_need_memdedup_destination(workdir):
    # Without hints a destination without memdedup works ...
    p = Pair(workdir, dst_type="memory-backend-ram")
    try:
        p.migrate()
        check(p.wait() == "completed", "plain migration failed")
    finally:
        p.close()
    # ... with hints it fails cleanly: the destination rejects the
    # unknown section, and with the return path the source learns it and
    # carries on.
    p = Pair(workdir, src_engine=",migrate-hints=on",
             dst_type="memory-backend-ram")
    try:
        p.migrate(return_path=True)
        check(p.wait() == "failed", "migration with hints did not fail")
        check("memdedup-hints" in p.dst.stderr(),
              "destination did not name the section:\n" + p.dst.stderr())
        check_source_resumed(p)
    finally:
        p.close()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("migration/precopy", test_precopy),
        ("migration/postcopy", test_postcopy),
        ("migration/cancel-resumes", test_cancel_resumes),
        ("migration/failed-resumes", test_failed_resumes),
        ("migration/background-snapshot", test_background_snapshot),
        ("migration/cont-right-after-completion",
         test_cont_right_after_completion),
        ("migration/hints", test_hints),
        ("migration/hints-before-ram", test_hints_before_ram),
        ("migration/hints-mismatch", test_hints_mismatch),
        ("migration/hints-need-memdedup-destination",
         test_hints_need_memdedup_destination),
    ]))
