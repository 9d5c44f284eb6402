#!/usr/bin/env python3
"""Soak: policy changes, backends coming and going, guest writes and
passes, all at once, for a bounded time (MEMDEDUP_SOAK_SECONDS, 75 s by
default), with ksmd merging (KSM knobs borrowed and restored;
MEMDEDUP_SOAK_KSM=0 leaves ksmd alone).

One QEMU (-accel qtest) with the known content in its 256 MiB
memory-backend-ksm and an engine rescanning every 100 ms.  A seeded
random sequence of operations runs against it: dedup-policy,
duplicate-threshold, force-unmerge, scan-threads and scan-rate changes,
memory-backend-ksm objects added (some preallocated) and deleted, passes
requested, and 64 KiB guest writes mirrored in the test.  At the end:

- QEMU is alive and reported no error;
- every backend added was announced and every deleted one removed
  (events), and only the machine's backend is left;
- after two quiet passes (ksmd stopped) the engine's counts match the
  content exactly, over the pages the kernel has resident (pagemap and
  kpageflags: what was written, less zero subpages the kernel remapped
  to its zero page when ksmd split their huge page, plus what a THP
  fault allocated around a write): zero and resident pages exactly,
  duplicate pages with a tolerance for 32-bit fingerprint collisions;
- what the engine reports registered is what the kernel's smaps shows
  as mergeable, and its merged count is smaps' KSM count;
- guest memory reads back byte-identical to the mirror.
"""

import collections
import contextlib
import hashlib
import os
import random
import sys
import time

from harness import (MiB, PAGE, Skip, check, fill_known,
                     fingerprint_slack, host_address, kernel_residency,
                     mergeable_vmas, qmp, run_pass, run_tests,
                     smaps_merged_pages, start_qtest_vm, wait_for)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

SIZE = 256 * MiB
LOW = 16 * MiB                      # below: legacy holes and ROMs
SECONDS = float(os.environ.get("MEMDEDUP_SOAK_SECONDS", "75"))
POLICIES = ("targeted", "all", "zero-only", "estimate", "off")


class Mirror:
    """What the test wrote to guest memory [LOW, SIZE), page by page."""

    def __init__(self):
        self.data = bytearray(SIZE)
        self.touched = bytearray(SIZE // PAGE)

    def write(self, qt, addr, data):
        qt.write(addr, data)
        self.data[addr:addr + len(data)] = data
        for p in range(addr // PAGE, (addr + len(data)) // PAGE):
            self.touched[p] = 1

    def memset(self, qt, addr, size, value):
        qt.memset(addr, size, value)
        self.data[addr:addr + size] = bytes([value]) * size
        for p in range(addr // PAGE, (addr + size) // PAGE):
            self.touched[p] = 1

    def counts(self, resident_pages):
        """(resident, zero, duplicate + unique, duplicate) as the engine
        should see them: the pages the kernel has resident
        (@resident_pages, one flag per page), with the content written
        here (never written: zero)."""
        zero_page = bytes(PAGE)
        seen = collections.Counter()
        resident = zero = 0
        for p in range(SIZE // PAGE):
            if not resident_pages[p]:
                continue
            resident += 1
            page = self.data[p * PAGE:(p + 1) * PAGE]
            if page == zero_page:
                zero += 1
            else:
                seen[hashlib.sha1(page).digest()] += 1
        nonzero = resident - zero
        dup = sum(n for n in seen.values() if n > 1)
        return resident, zero, nonzero, dup


class RecordingQTest:
    """The qtest client, writing through the mirror."""

    def __init__(self, qt, mirror):
        self.qt, self.mirror = qt, mirror

    def write(self, addr, data):
        self.mirror.write(self.qt, addr, data)

    def memset(self, addr, size, value):
        self.mirror.memset(self.qt, addr, size, value)


def soak_ops(vm, qt, mirror, rnd, deadline):
    """The random operations; returns (added, deleted) backend ids."""
    hot, added, deleted = [], [], []
    ops = collections.Counter()
    n = 0
    while time.monotonic() < deadline:
        op = rnd.choice(("policy", "policy", "threshold", "force", "add",
                         "del", "scan", "scan", "write", "write", "write",
                         "engine"))
        ops[op] += 1
        try:
            if op == "policy":
                vm.qmp.cmd("qom-set", path="/objects/m0",
                           property="dedup-policy", value=rnd.choice(POLICIES))
            elif op == "threshold":
                vm.qmp.cmd("qom-set", path="/objects/m0",
                           property="duplicate-threshold",
                           value=rnd.randint(1, 100))
            elif op == "force":
                vm.qmp.cmd("qom-set", path="/objects/m0",
                           property="force-unmerge", value=rnd.random() < 0.7)
            elif op == "add" and len(hot) < 3:
                n += 1
                bid = "hot%d" % n
                vm.qmp.cmd("object-add", **{
                    "qom-type": "memory-backend-ksm", "id": bid,
                    "size": rnd.choice((16, 32, 64)) * MiB,
                    "prealloc": rnd.random() < 0.5,
                    "dedup-policy": rnd.choice(POLICIES),
                    "region-size": rnd.choice((64 * 1024, 2 * MiB)),
                    "force-unmerge": True})
                hot.append(bid)
                added.append(bid)
            elif op == "del" and hot:
                bid = hot.pop(rnd.randrange(len(hot)))
                vm.qmp.cmd("object-del", id=bid)
                deleted.append(bid)
            elif op == "scan":
                vm.qmp.cmd("memdedup-scan")
            elif op == "write":
                addr = rnd.randrange(LOW // PAGE, SIZE // PAGE - 16) * PAGE
                kind = rnd.random()
                if kind < 0.3:
                    qt.memset(addr, 64 * 1024, 0)
                elif kind < 0.6:
                    # A copy of other guest memory: a new duplicate.
                    src = rnd.randrange(LOW // PAGE, SIZE // PAGE - 16) * PAGE
                    qt.write(addr, bytes(mirror.data[src:src + 64 * 1024]))
                else:
                    qt.write(addr, rnd.randbytes(64 * 1024))
            elif op == "engine":
                vm.qmp.cmd("qom-set", path="/objects/engine",
                           property=rnd.choice(("scan-threads", "scan-rate")),
                           value=rnd.choice((1, 2, 4, 64 * MiB, 1 << 40)))
        except qmp.QMPError as e:
            # Only refusals the engine documents are acceptable.
            msg = str(e)
            check(op == "policy" and "force-unmerge" in msg or
                  op == "engine" and ("must be between" in msg or
                                      "expects uint32" in msg),
                  "%s refused: %s" % (op, msg))
        time.sleep(rnd.random() * 0.05)
    for bid in hot:
        vm.qmp.cmd("object-del", id=bid)
        deleted.append(bid)
    print("  %d operations: %s" % (sum(ops.values()), dict(ops)))
    return added, deleted


def test_soak(workdir):
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        raise Skip("the host has no KSM")
    # ksmd merges during the soak (use_zero_pages=0: merged zero pages
    # stay resident, as counted here); MEMDEDUP_SOAK_KSM=0 leaves it out.
    knobs = {"run": 1, "pages_to_scan": 2000, "sleep_millisecs": 10,
             "use_zero_pages": 0}
    with (host.KsmKnobs(**knobs) if os.environ.get("MEMDEDUP_SOAK_KSM") !=
          "0" else contextlib.nullcontext()) as ksm:
        # Without root ksmd keeps the host's setting: still a soak.
        vm, raw_qt = start_qtest_vm(workdir, "soak", [
            "-machine", "pc,memory-backend=m0,mem-merge=off",
            "-m", "%dM" % (SIZE // MiB),
            "-object", "memdedup,id=engine,rescan-interval=100,scan-threads=2",
            "-object", "memory-backend-ksm,id=m0,size=%dM,force-unmerge=on,"
                       "dedup-policy=estimate,dump=off" % (SIZE // MiB)])
        try:
            # Where the RAM is, before registration splits its mapping
            # (dump=off: a flag no neighbour has, so no VMA merges in).
            base = host_address(vm.pid, SIZE)
            vm.qmp.cmd("qom-set", path="/objects/m0",
                       property="dedup-policy", value="targeted")
            mirror = Mirror()
            qt = RecordingQTest(raw_qt, mirror)
            rnd = random.Random(20261122)
            fill_known(qt, rnd)
            added, deleted = soak_ops(vm, qt, mirror, rnd,
                                      time.monotonic() + SECONDS)
            check(vm.alive(), "QEMU died during the soak")

            # Quiet: ksmd stopped (what it merged stays merged), the
            # default policy, two full passes.
            if ksm is not None:
                ksm.set("run", 0)
            vm.qmp.cmd("qom-set", path="/objects/engine",
                       property="scan-rate", value=1 << 40)
            vm.qmp.cmd("qom-set", path="/objects/m0",
                       property="dedup-policy", value="targeted")
            vm.qmp.cmd("qom-set", path="/objects/m0",
                       property="duplicate-threshold", value=10)
            run_pass(vm)
            info = run_pass(vm)
            ids = [b["id"] for b in info["backends"]]
            check(ids == ["m0"], "backends left: %s" % ids)
            events = collections.Counter(
                (e["event"], e["data"].get("id")) for e in vm.qmp.events)
            for bid in added:
                check(events[("MEMDEDUP_BACKEND_ADDED", bid)] == 1,
                      "%s added %d times" % (
                          bid, events[("MEMDEDUP_BACKEND_ADDED", bid)]))
            for bid in deleted:
                check(events[("MEMDEDUP_BACKEND_REMOVED", bid)] == 1,
                      "%s removed %d times" % (
                          bid, events[("MEMDEDUP_BACKEND_REMOVED", bid)]))
            check(len(deleted) == len(added), "added %d, deleted %d"
                  % (len(added), len(deleted)))

            b = info["backends"][0]
            # Resident as the kernel has it: what was written, less the
            # zero-filled subpages the kernel remapped to its zero page
            # when ksmd split their huge page (Linux >= 6.12), plus what
            # only a write's THP or a read fault allocated, on kernels
            # that allocate there.
            residency = kernel_residency(vm.pid, base, SIZE)
            if residency is None:
                raise Skip("PFNs hidden (not root): no kernel view to "
                           "compare the counts with")
            resident, zero, nonzero, dup = mirror.counts(residency)
            got = (b["resident-pages"], b["zero-pages"],
                   b["duplicate-pages"] + b["unique-pages"],
                   b["duplicate-pages"])
            written = sum(mirror.touched)
            print("  content: resident %d zero %d non-zero %d duplicate %d; "
                  "engine %s" % (resident, zero, nonzero, dup, got))
            print("  pages written %d, resident by the kernel %d"
                  % (written, resident))
            check(got[:3] == (resident, zero, nonzero),
                  "engine counts %s, content %s" % (got[:3],
                                                    (resident, zero, nonzero)))
            # Accidental fingerprint collisions only ever add duplicates.
            check(dup <= got[3] <= dup + fingerprint_slack(nonzero),
                  "duplicate pages %d, content %d" % (got[3], dup))

            # Registration and merging as the kernel has them.
            mg = sum(e - s for s, e in mergeable_vmas(vm.pid))
            check(b["registered-bytes"] == mg, "registered %d, kernel "
                  "mergeable %d" % (b["registered-bytes"], mg))
            if ksm is not None and ksm.active:
                wait_for("the merged count to match smaps", lambda: (
                    (lambda b: b.get("kernel-merged-pages") ==
                     smaps_merged_pages(vm.pid))(
                         vm.qmp.cmd("query-memdedup")["backends"][0])),
                    timeout=30)

            # Byte-identical guest memory.
            got = raw_qt.read(LOW, SIZE - LOW)
            check(got == bytes(mirror.data[LOW:]),
                  "guest memory differs from what was written")
            for bad in ("Assertion", "ERROR", "AddressSanitizer",
                        "runtime error"):
                check(bad not in vm.stderr(), "QEMU said:\n" + vm.stderr())
        finally:
            vm.stop()
            raw_qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("soak/policy-backends-passes", test_soak),
    ]))
