#!/usr/bin/env python3
"""memdedup demo: boot a few TCG guests on memory-backend-ksm, let the
engine and ksmd deduplicate them, and show what happens live.

Each guest fills a tmpfs with copies of the same data file (duplicates
within and across guests), zeroes and random data (see make-guest.sh).
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
from host import (KsmKnobs, cpu_seconds, ksm_read, ksmd_pid,  # noqa: E402
                  shielded)
from qmp import Qemu, QMPError  # noqa: E402

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MIB = 1 << 20
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=60,
                    help="seconds to watch after the guests are ready (60)")
    ap.add_argument("--guests", type=int, default=2, help="guests (2)")
    ap.add_argument("--mem", type=int, default=768, help="MiB per guest (768)")
    ap.add_argument("--interval", type=float, default=2.0,
                    help="seconds between table rows (2)")
    ap.add_argument("--boot-timeout", type=int, default=600,
                    help="seconds to wait for the guests to be ready (600)")
    ap.add_argument("--backend", default="memory-backend-ksm",
                    help="memory backend type; memory-backend-ram shows "
                         "stock QEMU with KSM on all guest RAM")
    ap.add_argument("--append", default="",
                    help="extra guest kernel options, e.g. memdedup.copies=3")
    ap.add_argument("--qemu", default=os.path.join(
        TOP, "build/qemu-src/build/qemu-system-x86_64"))
    ap.add_argument("--guest-dir", default=os.path.join(TOP, "build/guest"))
    ap.add_argument("--workdir", default=os.path.join(TOP, "build/demo"),
                    help="QMP sockets and serial logs (build/demo)")
    a = ap.parse_args()

    kernel = os.path.join(a.guest_dir, "vmlinuz")
    initrd = os.path.join(a.guest_dir, "initramfs.cpio.gz")
    for f in (a.qemu, kernel, initrd):
        if not os.path.exists(f):
            sys.exit("demo: %s is missing (run make / make guest)" % f)
    ok, msg = backend_available(a.qemu, a.backend)
    if not ok:
        sys.exit("demo: %s does not provide %s, so the memdedup engine is "
                 "not built into it:\n  %s" % (a.qemu, a.backend, msg))
    os.makedirs(a.workdir, exist_ok=True)

    # SIGTERM/SIGHUP end the demo like Ctrl-C does: through the cleanup.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, f: sys.exit(128 + n))

    append = "console=ttyS0 quiet panic=-1 " + a.append
    vms = []
    knobs = KsmKnobs(run=1, pages_to_scan=1000, sleep_millisecs=20)
    with contextlib.ExitStack() as stack:
        # Exits run in reverse: guests stopped first, then the KSM knobs
        # restored (ksmd then drops the guests' stale KSM pages).
        stack.push(knobs)

        # Quit and reap every QEMU, whatever happens.
        @stack.callback
        def stop_all():
            with shielded():
                for vm in vms:
                    vm.stop()
                if vms:
                    print("demo: %d guest(s) stopped" % len(vms))

        print("demo: booting %d guest(s) under TCG, %d MiB each, on %s"
              % (a.guests, a.mem, a.backend))
        t0 = time.monotonic()
        for i in range(a.guests):
            vm = Qemu(a.qemu, [
                "-accel", "tcg", "-m", "%dM" % a.mem, "-nodefaults",
                "-no-reboot", "-name", "memdedup-demo-vm%d" % i,
                "-object", "%s,id=ram0,size=%dM" % (a.backend, a.mem),
                "-machine", "pc,memory-backend=ram0",
                "-kernel", kernel, "-initrd", initrd, "-append", append,
            ], a.workdir, "vm%d" % i)
            vms.append(vm)
            vm.start()

        boot = {}
        deadline = t0 + a.boot_timeout
        while len(boot) < len(vms):
            for vm in vms:
                if vm.name not in boot and READY in vm.serial():
                    boot[vm.name] = time.monotonic() - t0
                    print("demo: %s ready after %.1f s" % (vm.name,
                                                           boot[vm.name]))
                elif not vm.alive():
                    sys.exit("demo: %s exited; see %s and %s"
                             % (vm.name, vm.serial_log, vm.stderr_log))
            if time.monotonic() > deadline:
                sys.exit("demo: guests not ready after %d s; see %s"
                         % (a.boot_timeout, a.workdir))
            time.sleep(0.5)

        # KSM for the demo only, from now on.
        knobs.__enter__()
        if knobs.active:
            print("demo: ksmd enabled (run=1 pages_to_scan=1000 "
                  "sleep_millisecs=20); host values restored on exit")
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
                  % (vm.name, boot[vm.name], mib(s.get("candidate")),
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
                  % (sharing, d, mib(d * os.sysconf("SC_PAGE_SIZE"))))
        cpu = cpu_seconds(kpid)
        if cpu is not None and cpu0 is not None:
            print("  ksmd CPU time during the demo: %.2f s" % (cpu - cpu0))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("demo: interrupted; guests stopped, KSM knobs restored")
