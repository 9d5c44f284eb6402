#!/usr/bin/env python3
"""The kernel matrix: the core real-KSM checks on every kernel memdedup
users run.

kernels/host      the host's own kernel (KSM knobs borrowed, restored)
kernels/debian12  Debian 12's kernel (6.1, linux-image-amd64 of
                  bookworm), booted under TCG with our QEMU inside
kernels/debian13  Debian 13's kernel (6.12, fetched by
                  scripts/memdedup/fetch-kernel.sh trixie), likewise

Each runs the same checks on QEMU under -accel qtest with one
memory-backend-ksm: known content (zero, duplicated and unique pages)
registered exactly; merged by that kernel's ksmd; the unique memory
left unregistered and on huge pages; guest memory byte-identical to
what was written, after merging and after unmerging; the engine's
kernel view (kernel-merged-pages, process and host KSM counters) equal
to what that kernel's own files say, read with ksmd stopped; the
kernel features query-memdedup reports equal to what the kernel has;
and the runtime policy switch with unmerge admission.  Then QEMU runs
as nobody (no PFNs, no page flags): the same registration, and a merged
count that is the kernel's where smaps has KSM: lines and absent where
it has not (6.1).  Each prints its
pass time and engine CPU per GiB of resident memory (inside a guest
these compare the kernels with each other, not with the host).
"""

import hashlib
import os
import re
import sys
import time

from harness import (MiB, PAGE, TOP, Skip, check, fingerprint_slack,
                     need_ksm_root, run_tests, wait_for)
from inner import InGuest, OnHost, fill_command, tagged_bytes
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

SIZE = 128 * MiB
ZERO = (8 * MiB, 8 * MiB)               # written with zeroes
DUP_AT, DUP_PAGES, DUP_COPIES = 16 * MiB, 512, 4    # 2 MiB block, 4 times
UNIQUE = (32 * MiB, 32 * MiB)           # distinct pages
UNIQUE_TAG = 1 << 20
THP = 2 * MiB
MERGE_BOUND = 240                        # s for ksmd to merge (TCG)
VIEW_BOUND = 30                          # s for the kernel view to catch up

QEMU_ARGS = ("-machine pc,memory-backend=m0,mem-merge=off -m %dM "
             "-object memdedup,id=engine,rescan-interval=3600000,scan-rate=64G,"
             "x-meminfo={pipes}/meminfo "
             "-object memory-backend-ksm,id=m0,size=%dM,dump=off"
             % (SIZE // MiB, SIZE // MiB))

NOBODY = 65534

KERNELS = {
    "debian12": os.path.join(TOP, "build", "guest", "vmlinuz"),
    "debian13": os.path.join(TOP, "build", "kernels", "trixie", "vmlinuz"),
}


def segments():
    """(address, first tag, pages) of the tagged content."""
    segs = [(DUP_AT + i * DUP_PAGES * PAGE, 1, DUP_PAGES)
            for i in range(DUP_COPIES)]
    segs.append((UNIQUE[0], UNIQUE_TAG, UNIQUE[1] // PAGE))
    return segs


def expected_digest():
    """sha256 of [ZERO, DUP, UNIQUE] as written (what dump_digest reads)."""
    h = hashlib.sha256()
    h.update(bytes(ZERO[1]))
    for _ in range(DUP_COPIES):
        h.update(tagged_bytes(1, DUP_PAGES))
    h.update(tagged_bytes(UNIQUE_TAG, UNIQUE[1] // PAGE))
    return h.hexdigest()


def dump_digest(t):
    """sha256 of the written ranges as QEMU has them (pmemsave; never
    a page that was not written, whose residency reading would change)."""
    ranges = (ZERO, (DUP_AT, DUP_COPIES * DUP_PAGES * PAGE), UNIQUE)
    d = t.pipes + "/dumps"          # QEMU may run as another user
    t.sh("mkdir -p -m 1777 " + d)
    for i, (addr, size) in enumerate(ranges):
        t.qmp("pmemsave", val=addr, size=size,
              filename="%s/mem%d.bin" % (d, i))
    out = t.sh("cat {0}/mem0.bin {0}/mem1.bin {0}/mem2.bin | sha256sum; "
               "rm -f {0}/mem?.bin".format(d))
    return out.split()[0]


def write_meminfo(t, available_kb):
    """The meminfo QEMU reads (x-meminfo): the kernel's, with
    MemAvailable replaced if given."""
    sub = ("" if available_kb is None else
           "s/^MemAvailable:.*/MemAvailable: %d kB/" % available_kb)
    t.sh("sed -e '%s' /proc/meminfo > {0}/meminfo.tmp && "
         "mv {0}/meminfo.tmp {0}/meminfo".format(t.pipes) % sub)


def backend(t):
    return t.qmp("query-memdedup")["backends"][0]


def ksm_fields(text):
    """{name: value} of a ksm_stat-like file."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"([a-z_0-9]+):?\s+(\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def vmas(t, pid):
    """[(start, end, {field: value})] of QEMU's smaps."""
    found, cur = [], None
    for line in t.read("/proc/%d/smaps" % pid).splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            cur = (int(m.group(1), 16), int(m.group(2), 16), {})
            found.append(cur)
        elif cur and ":" in line:
            k, v = line.split(":", 1)
            cur[2][k] = v.strip()
    return found


def ram_base(t, pid):
    """Host address of the backend's RAM: its only VMA of SIZE bytes,
    looked up before registration splits it."""
    bases = [s for s, e, _ in vmas(t, pid) if e - s == SIZE]
    check(len(bases) == 1, "%d VMAs of %d bytes" % (len(bases), SIZE))
    return bases[0]


def kb(fields, name):
    return int(fields.get(name, "0 kB").split()[0]) * 1024


def check_features(t, info):
    """query-memdedup's kernel features are what the kernel has."""
    k = info["kernel"]
    print("  %s: kernel %s, THP %s, ksm_stat fields %s" % (
        t.name, k["release"], k.get("thp"), " ".join(k["ksm-stat-fields"])))
    print("    has: %s" % ", ".join(
        n for n in ("ksm", "ksm-stat", "merging-pages-file", "ksm-zero-pages",
                    "general-profit", "smart-scan", "advisor",
                    "pagemap-scan", "madv-collapse", "pfns", "kpageflags")
        if k[n]) + "; lacks: %s" % ", ".join(
        n for n in ("ksm", "ksm-stat", "merging-pages-file", "ksm-zero-pages",
                    "general-profit", "smart-scan", "advisor",
                    "pagemap-scan", "madv-collapse", "pfns", "kpageflags")
        if not k[n]))
    print("    read fault maps the zero page: %s, the huge zero page: %s" % (
        k.get("zero-page-on-read"), k.get("huge-zero-page")))
    release = t.sh("uname -r").split()[-1]
    check(k["release"] == release, "release %r, uname %r" % (k["release"],
                                                              release))
    exists = {name: t.run("test -r " + path, 30)[0] == 0 for name, path in (
        ("ksm", "/sys/kernel/mm/ksm/run"),
        ("ksm-stat", "/proc/self/ksm_stat"),
        ("merging-pages-file", "/proc/self/ksm_merging_pages"),
        ("ksm-zero-pages", "/sys/kernel/mm/ksm/ksm_zero_pages"),
        ("general-profit", "/sys/kernel/mm/ksm/general_profit"),
        ("smart-scan", "/sys/kernel/mm/ksm/smart_scan"),
        ("advisor", "/sys/kernel/mm/ksm/advisor_mode"))}
    for name, present in exists.items():
        check(k[name] == present, "%s: reported %s, the kernel %s it" % (
            name, k[name], "has" if present else "lacks"))
    if exists["ksm-stat"]:
        names = list(ksm_fields(t.read("/proc/self/ksm_stat")))
        check(k["ksm-stat-fields"] == names, "ksm_stat fields %r, file %r"
              % (k["ksm-stat-fields"], names))
    thp = re.search(r"\[(\w+)\]", t.read(
        "/sys/kernel/mm/transparent_hugepage/enabled"))
    check(k.get("thp") == thp.group(1), "THP %r" % k.get("thp"))
    # Root reads PFNs and page flags on every kernel.
    check(k["pfns"] and k["kpageflags"], "PFNs/kpageflags as root")
    return k


def check_kernel_view(t, pid, info):
    """With ksmd stopped, what query-memdedup says of the kernel is what
    the kernel's files say (once the engine's view is current)."""
    merging = merging_pages(t, pid)
    wait_for("the kernel view to be current", lambda: backend(t).get(
        "kernel-merged-pages") == merging, VIEW_BOUND)
    info = t.qmp("query-memdedup")
    b = info["backends"][0]
    stat = ksm_fields(t.read("/proc/%d/ksm_stat" % pid)) \
        if info["kernel"]["ksm-stat"] else {}
    pk = info.get("process-ksm", {})
    if "ksm_merging_pages" in stat:
        check(int(stat["ksm_merging_pages"]) == merging, "two counts")
    check(pk.get("merging-pages") == merging, "process-ksm merging-pages "
          "%s, the kernel %d" % (pk.get("merging-pages"), merging))
    for field, name in (("rmap-items", "ksm_rmap_items"),
                        ("zero-pages", "ksm_zero_pages"),
                        ("process-profit", "ksm_process_profit")):
        want = int(stat[name]) if name in stat else None
        check(pk.get(field) == want, "process-ksm %s %s, ksm_stat %s"
              % (field, pk.get(field), want))
    # Only the backend is mergeable (mem-merge=off): its merged pages
    # are the process's.
    check(b["kernel-merged-pages"] == merging, "kernel-merged-pages %d, "
          "the kernel %d" % (b["kernel-merged-pages"], merging))
    exact = b.get("kernel-merged-pages-exact")
    check(exact is None or exact == merging, "exact %s" % exact)
    smaps_ksm = [kb(f, "KSM") for _, _, f in vmas(t, pid) if "KSM" in f]
    print("  %s: smaps %s KSM: lines" % (t.name, "has" if smaps_ksm
                                          else "has no"))
    if smaps_ksm:
        check(sum(smaps_ksm) // PAGE == merging, "smaps KSM %d pages"
              % (sum(smaps_ksm) // PAGE))
    hk = info["host-ksm"]
    for field in ("run", "pages-shared", "pages-sharing", "full-scans",
                  "pages-to-scan", "sleep-millisecs", "use-zero-pages",
                  "merge-across-nodes", "max-page-sharing", "smart-scan",
                  "ksm-zero-pages"):
        path = "/sys/kernel/mm/ksm/" + field.replace("-", "_")
        ok, text = t.run("cat " + path, 30)
        want = int(text.split()[-1]) if ok == 0 else None
        check(hk.get(field) == want, "host-ksm %s %s, %s says %s"
              % (field, hk.get(field), path, want))
    return merging


ZERO_PAGES, DUP_ALL = ZERO[1] // PAGE, DUP_COPIES * DUP_PAGES
REGISTERED = ZERO[1] + DUP_ALL * PAGE   # bytes: the zero and dup regions


def start_filled(t, uid=None):
    """QEMU (as @uid if given) with the content written and one pass
    done, its registration checked; returns (pid, base, digest, info)."""
    pid = t.start_qemu(QEMU_ARGS.format(pipes=t.pipes), uid)
    base = ram_base(t, pid)
    t0 = time.monotonic()
    out = t.sh(fill_command(segments(), ["memset 0x%x 0x%x 0" % ZERO]),
               timeout=600)
    count = 1 + sum(n + 1 for _, _, n in segments())
    check("QT-OK %d of %d" % (count, count) in out, out)
    print("  %s: filled in %.1f s" % (t.name, time.monotonic() - t0))
    written = dump_digest(t)
    check(written == expected_digest(), "guest memory is not what was "
          "written")

    # Registered exactly: the zero and duplicated regions.
    info = t.run_pass()
    b = info["backends"][0]
    check(b["zero-pages"] == ZERO_PAGES, "zero pages %d" % b["zero-pages"])
    extra = b["duplicate-pages"] - DUP_ALL
    check(0 <= extra <= fingerprint_slack(DUP_PAGES + UNIQUE[1] // PAGE),
          "duplicate pages %d, want %d" % (b["duplicate-pages"], DUP_ALL))
    check(b["registered-bytes"] == REGISTERED, "registered %d, want %d"
          % (b["registered-bytes"], REGISTERED))
    mergeable = sum(e - s for s, e, f in vmas(t, pid)
                    if " mg" in " " + f.get("VmFlags", ""))
    check(mergeable == REGISTERED, "the kernel has %d bytes mergeable"
          % mergeable)
    return pid, base, written, info


def merging_pages(t, pid):
    """The kernel's own count of QEMU's merged pages."""
    return int(t.read("/proc/%d/ksm_merging_pages" % pid).split()[-1])


def merge(t, pid, goal):
    """Start ksmd, wait until it merged @goal pages of QEMU's."""
    t.knob("use_zero_pages", 0)
    t.knob("pages_to_scan", 4000)
    t.knob("sleep_millisecs", 10)
    t.knob("run", 1)
    t1 = time.monotonic()
    wait_for("ksmd merging", lambda: merging_pages(t, pid) >= goal,
             MERGE_BOUND)
    print("  %s: ksmd merged %d pages in %.1f s" % (
        t.name, goal, time.monotonic() - t1))


def matrix_checks(t, guest):
    """The checks, on shell @t; @guest: the KSM knobs are the guest's."""
    write_meminfo(t, None)
    pid, base, written, info = start_filled(t)
    features = check_features(t, info)
    want, zero_pages, dup_pages = REGISTERED, ZERO_PAGES, DUP_ALL
    b = info["backends"][0]

    # The same content, three more passes: the per-kernel figures.
    resident = b["resident-pages"] * PAGE
    durations, cpu = [], []
    for _ in range(3):
        before = t.qmp("query-memdedup")["scanner-cpu-time"]
        info = t.run_pass()
        durations.append(info["last-pass-duration"] / 1e9)
        cpu.append((info["scanner-cpu-time"] - before) / 1e9)
    gib = resident / (1 << 30)
    figures = (sorted(durations)[1] / gib, sorted(cpu)[1] / gib)
    print("  %s: pass %.3f s/GiB, engine CPU %.3f s/GiB (%d MiB resident, "
          "median of 3)" % (t.name, figures[0], figures[1], resident // MiB))

    # Merged by this kernel's ksmd.
    goal = dup_pages + zero_pages
    merge(t, pid, goal)

    # Unique memory stays unregistered, and on huge pages: the engine
    # hands it back (MADV_COLLAPSE where the kernel has it) after
    # ksmd's full scans.
    thp = features.get("thp")
    if thp in ("always", "madvise"):
        def huge():
            b = t.run_pass()["backends"][0]
            if b["huge-regions"] < UNIQUE[1] // THP:
                return None
            return sum(kb(f, "AnonHugePages") for s, e, f in vmas(t, pid)
                       if s >= base + UNIQUE[0] and
                       e <= base + UNIQUE[0] + UNIQUE[1]) or None
        got = wait_for("unique regions on huge pages", huge, MERGE_BOUND)
        print("  %s: %d MiB of the unique range on huge pages" % (
            t.name, got // MiB))
        check(got >= 0.9 * UNIQUE[1], "unique range: %d MiB huge"
              % (got // MiB))
    else:
        print("  %s: THP %s: no huge page check" % (t.name, thp))
    check(backend(t)["registered-bytes"] == want, "registration drifted")

    # The kernel's files, with ksmd stopped so that nothing moves.
    t.knob("run", 0)
    info = t.run_pass()
    merged = check_kernel_view(t, pid, info)
    b = info["backends"][0]
    check(b.get("attributed-saving-accuracy") == "exact", "attributed %r"
          % b.get("attributed-saving-accuracy"))
    if guest:
        # QEMU is the guest's only KSM user: its share is all of it.
        sharing = t.knob("pages_sharing")
        check(abs(b["attributed-saving"] / PAGE - sharing) <= 1,
              "attributed %.1f pages, pages_sharing %d"
              % (b["attributed-saving"] / PAGE, sharing))
    check(merged == goal, "merged %d, want %d" % (merged, goal))
    check(dump_digest(t) == written, "guest memory changed by merging")

    # The policy switch, with unmerge admission.  ksmd runs again: the
    # kernel drops a process's merged-page counts only as ksmd goes by.
    t.knob("run", 1)
    write_meminfo(t, 1024)          # 1 MiB available: nothing fits
    reply = t.qmp_reply("qom-set", path="/objects/m0",
                        property="dedup-policy", value="off")
    check("error" in reply and "force-unmerge" in reply["error"]["desc"],
          "policy off with no memory to unmerge: %r" % reply)
    check(backend(t)["policy"] == "targeted", "policy changed anyway")
    t.qmp("qom-set", path="/objects/m0", property="dedup-policy",
          value="zero-only")
    b = wait_for("an unmerge refusal", lambda: (lambda b: b if
                 b["unmerge-refusals"] >= 1 else None)(t.run_pass()
                                                       ["backends"][0]),
                 120)
    check(b["registered-bytes"] == want, "registered %d after a refusal"
          % b["registered-bytes"])
    t.qmp("qom-set", path="/objects/m0", property="force-unmerge",
          value=True)
    wait_for("the duplicate regions to go", lambda: t.run_pass()[
        "backends"][0]["registered-bytes"] == ZERO[1], 120)
    t.qmp("qom-set", path="/objects/m0", property="dedup-policy", value="off")
    wait_for("everything to go", lambda: backend(t)["registered-bytes"] == 0,
             120)
    wait_for("the kernel to count nothing merged",
             lambda: merging_pages(t, pid) == 0, MERGE_BOUND)
    wait_for("the engine to see nothing merged",
             lambda: backend(t)["kernel-merged-pages"] == 0, 30)
    check(dump_digest(t) == written, "guest memory changed by unmerging")
    write_meminfo(t, None)
    t.close_qemu(pid)
    t.knob("run", 0)
    unprivileged_checks(t)
    return figures


def unprivileged_checks(t):
    """QEMU as nobody: no PFNs, no page flags.  The registration is the
    same, and the merged count is the kernel's (from smaps) where smaps
    has KSM: lines, and absent where it has not -- never wrong."""
    pid, _, written, info = start_filled(t, NOBODY)
    k = info["kernel"]
    check(not k["pfns"] and not k["kpageflags"], "PFNs as nobody: %r" % k)
    check("zero-page-on-read" not in k, "zero page guessed without PFNs")
    merge(t, pid, ZERO_PAGES + DUP_ALL)
    t.knob("run", 0)
    t.run_pass()
    merged = merging_pages(t, pid)
    has_lines = any("KSM" in f for _, _, f in vmas(t, pid))

    # The view may be a few seconds old (a query finding it older than
    # 5 s has it read again): wait for it to be current, then it must be
    # the kernel's count, or absent where smaps has no KSM: lines.
    def current():
        b = backend(t)
        if has_lines:
            return b if b.get("kernel-merged-pages") == merged else None
        return b if "kernel-merged-pages" not in b else None
    b = wait_for("the kernel view to be current (as nobody)", current,
                 VIEW_BOUND)
    check("kernel-merged-pages-exact" not in b, "exact count as nobody")
    check(has_lines or "actual-saving" not in b, "as nobody, no KSM: lines: "
          "%r" % b)
    print("  %s: as nobody: kernel-merged-pages %s (the kernel: %d)" % (
        t.name, b.get("kernel-merged-pages", "absent"), merged))
    check(dump_digest(t) == written, "guest memory changed (nobody)")
    t.close_qemu(pid)


def test_host(workdir):
    need_ksm_root()
    with host.KsmKnobs(run=0, pages_to_scan=100, sleep_millisecs=20,
                      use_zero_pages=0) as ksm:
        if not ksm.active:
            raise Skip(ksm.reason)
        t = OnHost(workdir)
        try:
            matrix_checks(t, guest=False)
        finally:
            t.close()


def guest_test(name):
    def test(workdir):
        kernel = KERNELS[name]
        if not os.path.exists(kernel):
            raise Skip("no %s kernel: make guest fetches it" % name)
        t = InGuest(workdir, name, kernel)
        try:
            print("  %s: booted in %.1f s" % (name, t.boot_seconds))
            matrix_checks(t, guest=True)
        finally:
            t.close()
    return test


if __name__ == "__main__":
    sys.exit(run_tests([("kernels/host", test_host),
                        ("kernels/debian12", guest_test("debian12")),
                        ("kernels/debian13", guest_test("debian13"))]))
