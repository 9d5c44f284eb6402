#!/usr/bin/env python3
"""THP handling: how fast does KSM merge what memdedup registers, with the
backend's RAM on small pages (manage-thp=on, the default) or left to
QEMU's usual THP advice (manage-thp=off)?  Stock QEMU (memory-backend-ram,
merge=on, THP) runs in the same invocation for reference.

Two QEMUs under -accel qtest, 512 MiB each, filled through qtest with the
mixed workload: 48 MiB zero, a 48 MiB block written twice (intra-VM
duplicates), 48 MiB identical in both VMs (cross-VM duplicates) and
304 MiB random.  ksmd runs at pages_to_scan=1000, sleep_millisecs=20
(restored afterwards).  Prints, per setup, the pages merged over time,
the time to reach 90 % of its final saving, and ksmd CPU.
"""

import functools
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts", "memdedup"))
import host  # noqa: E402  (scripts/memdedup/)
from host import smaps_merged_pages  # noqa: E402
from qtestvm import MiB, PAGE, run_pass  # noqa: E402
import qtestvm  # noqa: E402

start_qtest_vm = functools.partial(qtestvm.start_qtest_vm, qtestvm.QEMU)

SIZE = 512
DURATION = int(os.environ.get("MEMDEDUP_BENCH_SECONDS", "60"))


def ksmd_cpu():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/stat" % pid) as f:
                    fields = f.read().split()
            except OSError:
                continue
            if fields[1] == "(ksmd)":
                return (int(fields[13]) + int(fields[14])) / os.sysconf(
                    "SC_CLK_TCK")
    return 0.0


def fill(qt, vm_index):
    own = random.Random(100 + vm_index)
    shared = random.Random(7)
    qt.memset(16 * MiB, 48 * MiB, 0)
    block = own.randbytes(48 * MiB)
    qt.write(64 * MiB, block)
    qt.write(112 * MiB, block)
    qt.write(160 * MiB, shared.randbytes(48 * MiB))
    qt.write(208 * MiB, os.urandom(288 * MiB))


def run_setup(workdir, name, backend_args):
    vms = []
    try:
        for i in range(2):
            vm, qt = start_qtest_vm(workdir, "%s%d" % (name, i), [
                "-machine", "pc,memory-backend=m0", "-m", "%dM" % SIZE,
                "-object", "memdedup,id=e,rescan-interval=5000",
                "-object", backend_args % SIZE])
            vms.append((vm, qt))
            fill(qt, i)
        with host.KsmKnobs(run=1, pages_to_scan=1000, sleep_millisecs=20):
            cpu0 = ksmd_cpu()
            t0 = time.monotonic()
            for vm, _ in vms:
                if "memory-backend-ksm" in backend_args:
                    run_pass(vm)
            samples = []
            while time.monotonic() - t0 < DURATION:
                merged = sum(smaps_merged_pages(vm.pid) for vm, _ in vms)
                samples.append((time.monotonic() - t0, merged))
                time.sleep(1)
            cpu = ksmd_cpu() - cpu0
            final = samples[-1][1]
            t90 = next((t for t, m in samples if m >= 0.9 * final), None)
            for vm, _ in vms:
                vm.stop()
        return final, t90, cpu
    finally:
        for vm, qt in vms:
            vm.stop()
            qt.close()


def main():
    import tempfile
    setups = [
        ("memdedup manage-thp=on",
         "memory-backend-ksm,id=m0,size=%dM,manage-thp=on"),
        ("memdedup manage-thp=off",
         "memory-backend-ksm,id=m0,size=%dM,manage-thp=off"),
        ("stock merge=on (THP)",
         "memory-backend-ram,id=m0,size=%dM,merge=on"),
    ]
    print("%-26s %12s %10s %10s" % ("setup", "merged MiB", "t90 s",
                                    "ksmd CPU s"))
    for label, args in setups:
        with tempfile.TemporaryDirectory(prefix="memdedup-bench-") as d:
            final, t90, cpu = run_setup(d, "b", args)
        print("%-26s %12.1f %10s %10.2f" % (
            label, final * PAGE / MiB,
            "%.0f" % t90 if t90 is not None else "-", cpu), flush=True)


if __name__ == "__main__":
    main()
