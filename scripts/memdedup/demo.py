#!/usr/bin/env python3
"""memdedup demo: boot a few TCG guests, let ksmd (and memdedup's
engine) deduplicate them, and show what happens live.

Each guest fills a tmpfs with copies of the same data file (duplicates
within and across guests), zeroes and random data (see make-guest.sh).
By default the same guests run twice, from a ksmd reset each time, at
the host's ksmd rate: first on stock QEMU's memory-backend-ram with
merge=on (all guest RAM handed to KSM), then on memory-backend-ksm; the
demo ends with a comparison (saved, time to 90 % of stock's saving,
ksmd and engine CPU) and a picture of the saving over time (a PNG it
names).  --no-compare runs once, on --backend, and shows each guest.
KSM is enabled for the demo only; the host's knobs are restored on every
exit path, and every QEMU started is quit and reaped.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import (KsmKnobs, cpu_seconds, ksm_read, ksm_reset,  # noqa: E402
                  ksm_set, ksmd_pid, shielded, thread_cpu_ns)
from qmp import Qemu, QMPError  # noqa: E402

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
READY = "MEMDEDUP-GUEST-READY"


def backend_available(qemu, backend):
    """Does this QEMU know the backend type?  Returns (ok, message)."""
    r = subprocess.run([qemu, "-object", backend + ",help"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True)
    return r.returncode == 0, r.stdout.strip()


def stats(vm):
    """Per-guest numbers in bytes from query-memdedup (None = unknown)."""
    info = vm.qmp.cmd("query-memdedup")
    s = dict(scanned=0, candidate=0, registered=0, merged=None, saved=None)
    for b in info["backends"]:
        ps = b["page-size"]
        s["scanned"] += b["scanned-pages"] * ps
        s["candidate"] += (b["zero-pages"] + b["duplicate-pages"]) * ps
        s["registered"] += b["registered-bytes"]
        if "kernel-merged-pages" in b:
            s["merged"] = (s["merged"] or 0) + b["kernel-merged-pages"] * ps
        if "actual-saving" in b:
            s["saved"] = (s["saved"] or 0) + b["actual-saving"]
    s["warning"] = info.get("warning")
    return s


def mib(v):
    return "-" if v is None else "%.1f" % (v / MIB)


COLS = "%6s  %-5s %9s %10s %11s %9s %9s %10s %14s"


def header():
    print(COLS % ("time", "guest", "scanned", "candidate", "registered",
                  "merged", "saved", "ksmd-cpu", "pages_sharing"))
    print(COLS % ("", "", "MiB", "MiB", "MiB", "MiB", "MiB", "s", ""))


def show(t, vms, rows, ksmd_cpu, sharing):
    for i, (vm, s) in enumerate(zip(vms, rows)):
        host = ("-" if ksmd_cpu is None else "%.2f" % ksmd_cpu,
                "-" if sharing is None else str(sharing)) if i == 0 else ("", "")
        print(COLS % (("%ds" % t if i == 0 else "", vm.name,
                       mib(s.get("scanned")), mib(s.get("candidate")),
                       mib(s.get("registered")), mib(s.get("merged")),
                       mib(s.get("saved"))) + host))
    sys.stdout.flush()


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=None,
                    help="seconds to watch after the guests are ready "
                         "(120 per run when comparing, else 60)")
    ap.add_argument("--guests", type=int, default=2, help="guests (2)")
    ap.add_argument("--mem", type=int, default=768, help="MiB per guest (768)")
    ap.add_argument("--interval", type=float, default=2.0,
                    help="seconds between table rows (2)")
    ap.add_argument("--boot-timeout", type=int, default=600,
                    help="seconds to wait for the guests to be ready (600)")
    ap.add_argument("--no-compare", action="store_true",
                    help="run once, on --backend, instead of stock QEMU "
                         "and then memdedup")
    ap.add_argument("--backend", default="memory-backend-ksm",
                    help="with --no-compare: the memory backend type; "
                         "memory-backend-ram shows stock QEMU with KSM on "
                         "all guest RAM")
    ap.add_argument("--ksm-rate", metavar="PAGES/MS",
                    help="ksmd's pages_to_scan/sleep_millisecs for the demo "
                         "(default: the host's own)")
    ap.add_argument("--append", default="",
                    help="extra guest kernel options, e.g. memdedup.copies=3")
    ap.add_argument("--qemu", default=os.path.join(
        TOP, "build/qemu-src/build/qemu-system-x86_64"))
    ap.add_argument("--guest-dir", default=os.path.join(TOP, "build/guest"))
    ap.add_argument("--workdir", default=os.path.join(TOP, "build/demo"),
                    help="QMP sockets, serial logs and the picture "
                         "(build/demo)")
    a = ap.parse_args()
    if a.duration is None:
        a.duration = 60 if a.no_compare else 120
    if a.ksm_rate:
        try:
            pages, ms = (int(x) for x in a.ksm_rate.split("/"))
            if pages < 1 or ms < 0:
                raise ValueError
        except ValueError:
            ap.error("--ksm-rate wants PAGES/MS, e.g. 1000/20, not %r"
                     % a.ksm_rate)
        a.ksm = {"pages_to_scan": pages, "sleep_millisecs": ms}
    else:
        a.ksm = {}
    return a


def boot(a, backend, label, vms):
    """Start the guests on @backend (appended to @vms as they start) and
    wait until each is ready; returns their boot times."""
    kernel = os.path.join(a.guest_dir, "vmlinuz")
    initrd = os.path.join(a.guest_dir, "initramfs.cpio.gz")
    append = "console=ttyS0 quiet panic=-1 " + a.append
    print("demo: booting %d guest(s) under TCG, %d MiB each, on %s"
          % (a.guests, a.mem, backend))
    t0 = time.monotonic()
    for i in range(a.guests):
        vm = Qemu(a.qemu, [
            "-accel", "tcg", "-m", "%dM" % a.mem, "-nodefaults",
            "-no-reboot",
            "-name", "memdedup-demo-%s%d,debug-threads=on" % (label, i),
            "-object", "%s,id=ram0,size=%dM" % (backend, a.mem),
            "-machine", "pc,memory-backend=ram0",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
        ], a.workdir, "%s%d" % (label, i))
        vms.append(vm)
        vm.start()
    ready = {}
    deadline = t0 + a.boot_timeout
    while len(ready) < len(vms):
        for vm in vms:
            if vm.name not in ready and READY in vm.serial():
                ready[vm.name] = time.monotonic() - t0
                print("demo: %s ready after %.1f s" % (vm.name,
                                                       ready[vm.name]))
            elif not vm.alive():
                sys.exit("demo: %s exited; see %s and %s"
                         % (vm.name, vm.serial_log, vm.stderr_log))
        if time.monotonic() > deadline:
            sys.exit("demo: guests not ready after %d s; see %s"
                     % (a.boot_timeout, a.workdir))
        time.sleep(0.5)
    return ready


def stop_guests(vms):
    with shielded():
        for vm in vms:
            vm.stop()
        if vms:
            print("demo: %d guest(s) stopped" % len(vms))
        del vms[:]


def host_saving():
    """Pages the host's KSM saves now: pages_sharing, and pages merged
    with the zero page (use_zero_pages=1)."""
    return (ksm_read("pages_sharing") or 0) + (ksm_read("ksm_zero_pages") or 0)


def engine_cpu(vms):
    return sum(thread_cpu_ns(vm.pid, "memdedup") for vm in vms) / 1e9


def watch_compare(a, vms, label):
    """From ksmd's start (t=0), a sample every --interval: the host's
    saving in pages, ksmd's and the engine's CPU; returns the samples."""
    kpid = ksmd_pid()
    cpu0, saving0, md0 = cpu_seconds(kpid), host_saving(), engine_cpu(vms)
    ksm_set(run=1)
    start = time.monotonic()
    samples = []
    print(COLS_COMPARE % ("time", "run", "saved", "ksmd-cpu", "engine-cpu",
                          "registered"))
    print(COLS_COMPARE % ("", "", "MiB", "s", "s", "MiB"))
    while True:
        t = time.monotonic() - start
        cpu = cpu_seconds(kpid)
        registered = None
        if label == "memdedup":
            with contextlib.suppress(QMPError):
                registered = sum(stats(vm)["registered"] for vm in vms)
        s = {"t": round(t, 1), "saving": host_saving() - saving0,
             "ksmd_cpu": None if cpu is None or cpu0 is None else cpu - cpu0,
             "engine_cpu": engine_cpu(vms) - md0}
        samples.append(s)
        print(COLS_COMPARE % (
            "%ds" % t, label, mib(s["saving"] * PAGE),
            "-" if s["ksmd_cpu"] is None else "%.2f" % s["ksmd_cpu"],
            "%.2f" % s["engine_cpu"], mib(registered)))
        sys.stdout.flush()
        if t >= a.duration:
            return samples
        time.sleep(max(0.0, a.interval - (time.monotonic() - start - t)))


COLS_COMPARE = "%6s  %-9s %9s %9s %11s %11s"
RUNS = (("stock", "memory-backend-ram,merge=on"),
        ("memdedup", "memory-backend-ksm"))


def first_reaching(samples, pages):
    for s in samples:
        if s["saving"] >= pages:
            return s
    return None


def compare(a, runs):
    """The comparison, in words; returns its lines."""
    stock, md = runs["stock"], runs["memdedup"]
    goal = 0.9 * stock[-1]["saving"]
    out = ["", "demo: stock QEMU and memdedup, the same %d guest(s) of %d "
           "MiB, %d s each from ksmd's start:" % (a.guests, a.mem,
                                                  a.duration)]
    for label, samples in (("stock QEMU (merge=on)", stock),
                           ("memdedup", md)):
        last = samples[-1]
        hit = first_reaching(samples, goal) if goal > 0 else None
        out.append("  %-22s saved %s MiB; reached 90 %% of stock's saving "
                   "%s; ksmd CPU %s s%s; engine CPU %.2f s" % (
                       label, mib(last["saving"] * PAGE),
                       "after %.0f s" % hit["t"] if hit else "never",
                       "-" if last["ksmd_cpu"] is None else
                       "%.2f" % last["ksmd_cpu"],
                       "" if not hit or hit["ksmd_cpu"] is None else
                       " (%.2f s to that point)" % hit["ksmd_cpu"],
                       last["engine_cpu"]))
    s_last, m_last = stock[-1], md[-1]
    if s_last["saving"] > 0:
        words = "memdedup saved %.2fx what stock QEMU saved" % (
            m_last["saving"] / s_last["saving"])
        s_hit, m_hit = first_reaching(stock, goal), first_reaching(md, goal)
        if s_hit and m_hit and s_hit["t"] > 0:
            words += ", reached 90 %% of it in %.2fx the time" % (
                m_hit["t"] / s_hit["t"])
        if s_last["ksmd_cpu"] and m_last["ksmd_cpu"] is not None:
            words += (", with %.2fx ksmd's CPU (%.2fx counting the "
                      "engine's own)" % (
                          m_last["ksmd_cpu"] / s_last["ksmd_cpu"],
                          (m_last["ksmd_cpu"] + m_last["engine_cpu"]) /
                          s_last["ksmd_cpu"]))
        out.append("  " + words + ".")
    else:
        out.append("  stock QEMU saved nothing in %d s at this ksmd rate: "
                   "try --duration or --ksm-rate 1000/20" % a.duration)
    return out


def plot(a, runs, path):
    """Saving over time for both runs; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, samples in runs.items():
        ax.plot([s["t"] for s in samples],
                [s["saving"] * PAGE / MIB for s in samples],
                label="stock QEMU (merge=on)" if label == "stock"
                else "memdedup (memory-backend-ksm)")
    ax.set_xlabel("seconds since ksmd started")
    ax.set_ylabel("host memory saved by KSM (MiB)")
    ax.set_title("%d guest(s) x %d MiB, ksmd %s/%s" % (
        a.guests, a.mem, ksm_read("pages_to_scan"),
        ksm_read("sleep_millisecs")))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run_compare(a, knobs, vms):
    if not knobs.active:
        sys.exit("demo: %s: the comparison needs ksmd (run as root, or "
                 "--no-compare)" % knobs.reason)
    for e in knobs.errors:
        print("demo: warning: could not set KSM knob %s" % e)
    print("demo: ksmd at pages_to_scan=%s sleep_millisecs=%s (%s); host "
          "values restored on exit" % (
              ksm_read("pages_to_scan"), ksm_read("sleep_millisecs"),
              "--ksm-rate" if a.ksm else "the host's rate"))
    runs = {}
    for label, backend in RUNS:
        print("demo: %s: ksmd forgets what it merged (run=2) ..." % label)
        ksm_reset()
        boot(a, backend, label, vms)
        runs[label] = watch_compare(a, vms, label)
        ksm_set(run=0)
        stop_guests(vms)
    for line in compare(a, runs):
        print(line)
    path = os.path.join(a.workdir, "memdedup-demo.png")
    if plot(a, runs, path):
        print("demo: saving over time, both runs: %s" % path)
    else:
        print("demo: no picture: python3-matplotlib is missing")
    return 0


def run_single(a, knobs, vms):
    boot_times = boot(a, a.backend, "vm", vms)
    # KSM for the demo only, from now on.
    if knobs.active:
        ksm_set(run=1)
        print("demo: ksmd enabled (run=1 pages_to_scan=%s sleep_millisecs="
              "%s); host values restored on exit"
              % (ksm_read("pages_to_scan"), ksm_read("sleep_millisecs")))
    else:
        print("demo: %s; continuing without enabling ksmd "
              "(run=%s)" % (knobs.reason, ksm_read("run")))
    for e in knobs.errors:
        print("demo: warning: could not set KSM knob %s" % e)

    kpid = ksmd_pid()
    cpu0 = cpu_seconds(kpid)
    sharing0 = ksm_read("pages_sharing")
    warned = set()
    header()
    start = time.monotonic()
    rows = []
    while True:
        t = time.monotonic() - start
        rows = []
        for vm in vms:
            try:
                s = stats(vm)
            except QMPError as e:
                if vm.name not in warned:
                    print("demo: %s: query-memdedup failed: %s"
                          % (vm.name, e))
                    warned.add(vm.name)
                s = {}
            if s.get("warning") and s["warning"] not in warned:
                print("demo: %s: engine warning: %s"
                      % (vm.name, s["warning"]))
                warned.add(s["warning"])
            rows.append(s)
        cpu = cpu_seconds(kpid)
        show(t, vms, rows, None if cpu is None or cpu0 is None
             else cpu - cpu0, ksm_read("pages_sharing"))
        if t >= a.duration:
            break
        time.sleep(max(0.0, a.interval - (time.monotonic() - start - t)))

    # Summary.
    print("\nsummary after %d s:" % a.duration)
    for vm, s in zip(vms, rows):
        print("  %s: ready in %.1f s; %s MiB candidates, %s MiB "
              "registered, %s MiB merged by the kernel, %s MiB saved"
              % (vm.name, boot_times[vm.name], mib(s.get("candidate")),
                 mib(s.get("registered")), mib(s.get("merged")),
                 mib(s.get("saved"))))
    saved = [s.get("saved") for s in rows]
    if rows and all(v is not None for v in saved):
        print("  guests' memory merged by the kernel: %s MiB of %d MiB"
              % (mib(sum(saved)), a.mem * len(vms)))
    sharing = ksm_read("pages_sharing")
    if sharing is not None:
        # Pages sharing a KSM page with another: what the host saved
        # (a page merged in two guests counts once here, twice above).
        d = sharing - (sharing0 or 0)
        print("  host pages_sharing: %d (%+d, %s MiB saved host-wide)"
              % (sharing, d, mib(d * PAGE)))
    cpu = cpu_seconds(kpid)
    if cpu is not None and cpu0 is not None:
        print("  ksmd CPU time during the demo: %.2f s" % (cpu - cpu0))
    return 0


def main():
    a = parse_args()
    kernel = os.path.join(a.guest_dir, "vmlinuz")
    initrd = os.path.join(a.guest_dir, "initramfs.cpio.gz")
    for f in (a.qemu, kernel, initrd):
        if not os.path.exists(f):
            sys.exit("demo: %s is missing (run make / make guest)" % f)
    for backend in (("memory-backend-ksm",) if not a.no_compare
                    else (a.backend,)):
        ok, msg = backend_available(a.qemu, backend)
        if not ok:
            sys.exit("demo: %s does not provide %s, so the memdedup engine "
                     "is not built into it:\n  %s" % (a.qemu, backend, msg))
    os.makedirs(a.workdir, exist_ok=True)

    # SIGTERM/SIGHUP end the demo like Ctrl-C does: through the cleanup.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, f: sys.exit(128 + n))

    vms = []
    with contextlib.ExitStack() as stack:
        # KSM for the demo only: run=0 until the guests are ready (t=0).
        # Exits run in reverse: guests stopped first, then the KSM knobs
        # restored (ksmd then drops the guests' stale KSM pages).
        knobs = stack.enter_context(KsmKnobs(run=0, **a.ksm))
        stack.callback(stop_guests, vms)
        if a.no_compare:
            return run_single(a, knobs, vms)
        return run_compare(a, knobs, vms)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("demo: interrupted; guests stopped, KSM knobs restored")
