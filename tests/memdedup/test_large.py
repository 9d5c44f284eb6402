#!/usr/bin/env python3
"""Large guests: metadata within 8 bytes per page, false duplicates rare,
and an index that cannot get its memory costs a warning, not QEMU.

- sparse-64g: a 64 GiB guest (memory-backend-ksm, reserve=off) under
  -accel qtest with 1.6 GiB of it resident, known content above and
  below 4 GiB: unique pages, whole regions of duplicates.  One pass
  counts exactly what is resident, finds every duplicate and (almost)
  no unique page among them, registers exactly the duplicate regions,
  and keeps at most 8 bytes of metadata per guest page
  (MEMDEDUP_METADATA_PER_PAGE); QEMU's RSS is the resident guest memory
  plus the metadata and QEMU's own.  The figures are printed: pass time,
  engine CPU, metadata per page, false duplicates against what 32-bit
  fingerprints would give.
- index-no-memory: the transient index refused (x-index-memory, the
  test's stand-in for an allocation failing; the unit test
  /memdedup/dupset-no-memory fails a real one): the pass goes on with
  the last index, index-failures counts each such pass, one warning and
  one MEMDEDUP_INDEX_SKIPPED until an index is built again, and then the
  counts are exact again.
"""

import random
import sys

from harness import (KNOWN_CANDIDATES, KNOWN_DUP_AT, KNOWN_DUP_BLOCK, MiB,
                     PAGE, Skip, backend, check, fill_known, rss_bytes,
                     run_pass, run_tests, start_qtest_vm)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

GiB = 1 << 30
SPARSE = 64 * GiB
REGION = 2 * MiB
# (guest physical address, bytes, kind); the pc machine puts the first
# 3 GiB of a large guest below 4 GiB, the rest from 4 GiB on.
SPARSE_CONTENT = [
    (1 * GiB, 1 * GiB, "unique"),
    (2 * GiB, 256 * MiB, "regions"),      # each region its own byte
    (40 * GiB, 256 * MiB, "unique"),
    (60 * GiB, 64 * MiB, "same"),         # one byte throughout
]


def fill_unique(qt, addr, size, salt):
    """A distinct non-zero qword at the start of each page, the rest
    zero: every page different from every other."""
    per = 64 * MiB // PAGE
    first = addr // PAGE
    for start in range(0, size // PAGE, per):
        qt.pipeline(["writeq 0x%x 0x%x" % (
            (first + p) * PAGE,
            ((first + p) * 0x9E3779B97F4A7C15 + salt) % (1 << 64) | 1)
            for p in range(start, min(start + per, size // PAGE))])


def fill_sparse(qt):
    for addr, size, kind in SPARSE_CONTENT:
        if kind == "unique":
            fill_unique(qt, addr, size, 0)
        elif kind == "regions":
            for r in range(size // REGION):
                qt.memset(addr + r * REGION, REGION, r % 255 + 1)
        else:
            qt.memset(addr, size, 0x77)


def test_sparse_64g(workdir):
    if host.meminfo("MemAvailable") < 6 * GiB:
        raise Skip("needs 6 GiB available")
    vm, qt = start_qtest_vm(workdir, "sparse", [
        "-machine", "pc,memory-backend=m0,mem-merge=off", "-m", "64G",
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        "-object", "memory-backend-ksm,id=m0,size=64G,reserve=off"])
    try:
        fill_sparse(qt)
        rss_before = rss_bytes(vm.pid)
        cpu = vm.qmp.cmd("query-memdedup")["scanner-cpu-time"]
        info = run_pass(vm, timeout=600)
        cpu = (info["scanner-cpu-time"] - cpu) / 1e9
        b = backend(vm, "m0")
        pages = SPARSE // PAGE
        resident = sum(size for _, size, _ in SPARSE_CONTENT) // PAGE
        dups = sum(size for _, size, kind in SPARSE_CONTENT
                   if kind != "unique") // PAGE
        unique = resident - dups
        false = b["duplicate-pages"] - dups
        meta = info["metadata-bytes"]
        print("  64 GiB guest, %d MiB resident: pass %.2f s, engine CPU "
              "%.2f s, metadata %.1f MiB (%.2f B/page)"
              % (resident * PAGE // MiB, info["last-pass-duration"] / 1e9,
                 cpu, meta / MiB, meta / pages))
        print("  duplicates %d (known %d): %d of %d unique pages look "
              "duplicated; 32-bit fingerprints would make it about %.0f"
              % (b["duplicate-pages"], dups, false, unique,
                 unique * resident / 2.0 ** 32))
        check(b["resident-pages"] == resident,
              "resident %d, wrote %d" % (b["resident-pages"], resident))
        check(b["zero-pages"] == 0, "zero pages %d" % b["zero-pages"])
        check(0 <= false <= unique // 1000,
              "%d false duplicates among %d unique pages" % (false, unique))
        check(b["registered-bytes"] == dups * PAGE,
              "registered %d MiB, duplicate regions %d MiB"
              % (b["registered-bytes"] // MiB, dups * PAGE // MiB))
        check(meta <= 8 * pages, "metadata %.2f B/page" % (meta / pages))
        # Fingerprints (5 B) and nodes (1 B) of every page are in it.
        check(meta >= 6 * pages, "metadata %d bytes leaves out per-page "
              "state" % meta)
        check(info["index-dropped"] == 0 and info["index-failures"] == 0,
              "index dropped %d, failed %d" % (info["index-dropped"],
                                              info["index-failures"]))
        # No transient memory of the pass stays, nothing per page beyond
        # the metadata: RSS grew by at most the metadata and 64 MiB.
        rss = rss_bytes(vm.pid)
        print("  QEMU RSS %d MiB before the pass, %d MiB after"
              % (rss_before // MiB, rss // MiB))
        check(rss - rss_before <= meta + 64 * MiB,
              "RSS grew by %d MiB in the pass" % ((rss - rss_before) // MiB))
    finally:
        vm.stop()
        qt.close()


def skipped_events(vm):
    vm.qmp.cmd("query-status")          # takes in the events sent so far
    return [e for e in vm.qmp.events
            if e.get("event") == "MEMDEDUP_INDEX_SKIPPED"]


def warnings(vm):
    return vm.stderr().count("no memory for the duplicate index")


def test_index_no_memory(workdir):
    vm, qt = start_qtest_vm(workdir, "nomem", [
        "-machine", "pc,memory-backend=m0,mem-merge=off", "-m", "256M",
        "-object", "memdedup,id=engine,rescan-interval=3600000",
        "-object", "memory-backend-ksm,id=m0,size=256M"])
    try:
        rnd = random.Random(5)
        fill_known(qt, rnd)
        info = run_pass(vm)
        dups = backend(vm, "m0")["duplicate-pages"]
        check(dups == 4 * KNOWN_DUP_BLOCK // PAGE,
              "duplicates %d" % dups)
        check(info["index-failures"] == 0, "index failed")

        # Refused: the duplicate block rewritten (new fingerprints) is
        # judged by the last index, in which it is not.
        vm.qmp.cmd("qom-set", path="/objects/engine",
                   property="x-index-memory", value=4096)
        dup = rnd.randbytes(KNOWN_DUP_BLOCK)
        for i in range(4):
            qt.write(KNOWN_DUP_AT + i * KNOWN_DUP_BLOCK, dup)
        for n in (1, 2):
            info = run_pass(vm)
            check(info["index-failures"] == n,
                  "index-failures %d after %d refused" %
                  (info["index-failures"], n))
            check(vm.alive(), "QEMU exited")
        events = skipped_events(vm)
        check(len(events) == 1 and events[0]["data"]["bytes"] > 4096,
              "MEMDEDUP_INDEX_SKIPPED: %s" % events)
        check(warnings(vm) == 1, "not warned once:\n" + vm.stderr())
        hmp = vm.qmp.cmd("human-monitor-command",
                         **{"command-line": "info memdedup"})
        check("2 passes without memory for it" in hmp, "HMP:\n" + hmp)

        # Memory again: the index is rebuilt, the counts exact.
        vm.qmp.cmd("qom-set", path="/objects/engine",
                   property="x-index-memory", value=0)
        info = run_pass(vm)
        b = backend(vm, "m0")
        check(b["duplicate-pages"] == dups, "duplicates %d after the "
              "index came back, %d before" % (b["duplicate-pages"], dups))
        check(b["registered-bytes"] == KNOWN_CANDIDATES,
              "registered %d" % b["registered-bytes"])
        check(info["index-failures"] == 2, "index-failures %d"
              % info["index-failures"])

        # Refused again after an index was built: said again, once.
        vm.qmp.cmd("qom-set", path="/objects/engine",
                   property="x-index-memory", value=4096)
        qt.write(KNOWN_DUP_AT, rnd.randbytes(PAGE))
        run_pass(vm)
        check(len(skipped_events(vm)) == 2 and warnings(vm) == 2,
              "after the second refusal: %d events, %d warnings"
              % (len(skipped_events(vm)), warnings(vm)))
        print("  index refused 3 times: %d events, %d warnings; counts "
              "exact once it was built" % (len(skipped_events(vm)),
                                           warnings(vm)))
    finally:
        vm.stop()
        qt.close()


if __name__ == "__main__":
    sys.exit(run_tests([
        ("large/sparse-64g", test_sparse_64g),
        ("large/index-no-memory", test_index_no_memory),
    ]))
