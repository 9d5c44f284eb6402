#!/usr/bin/env python3
"""make run, as an operator runs it (scripts/memdedup/demo.sh).

demo/compare   two guests on stock QEMU (merge=on), then on memdedup, at
               a given ksmd rate: both save memory (the host's
               pages_sharing), the comparison's words match the numbers
               of the runs' last rows, the picture it names is a PNG, the
               KSM knobs are as before and no guest is left running
"""

import os
import re
import subprocess
import sys

from harness import (TOP, Skip, check, need_ksm_root, run_tests)
import host  # noqa: E402  (scripts/memdedup/host.py, on harness's path)

DEMO = os.path.join(TOP, "scripts", "memdedup", "demo.sh")
ROW = re.compile(r"^\s*(\d+)s\s+(stock|memdedup)\s+([\d.]+)\s+([\d.]+)\s+"
                 r"([\d.]+)\s+(\S+)\s*$")


def demo_processes():
    """PIDs of QEMUs the demo names memdedup-demo-*."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if b"memdedup-demo-" in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def test_compare(workdir):
    need_ksm_root()
    if not os.path.exists(os.path.join(TOP, "build", "guest", "vmlinuz")):
        raise Skip("no guest image (make guest)")
    knobs = {k: host.ksm_read(k) for k in host.KsmKnobs.KNOBS}
    r = subprocess.run([DEMO, "--mem", "384", "--duration", "20",
                        "--interval", "2", "--ksm-rate", "1000/20",
                        "--workdir", workdir], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=900)
    print("\n".join("  | " + line for line in r.stdout.splitlines()
                    if "ready after" not in line and not ROW.match(line)))
    check(r.returncode == 0, "demo exited %d" % r.returncode)
    last = {}
    for line in r.stdout.splitlines():
        m = ROW.match(line)
        if m:
            last[m.group(2)] = float(m.group(3))
    check(set(last) == {"stock", "memdedup"}, "rows: %r" % last)
    for label in ("stock", "memdedup"):
        check(last[label] > 0, "%s saved nothing" % label)
    said = {}
    for label, what in (("stock", r"stock QEMU \(merge=on\)"),
                        ("memdedup", r"memdedup")):
        m = re.search(r"^  %s\s+saved ([\d.]+) MiB" % what, r.stdout, re.M)
        check(m, "no summary for %s" % label)
        said[label] = float(m.group(1))
        check(said[label] == last[label], "%s: summary %.1f, last row %.1f"
              % (label, said[label], last[label]))
    m = re.search(r"memdedup saved ([\d.]+)x what stock QEMU saved", r.stdout)
    ratio = said["memdedup"] / said["stock"]
    check(m and abs(float(m.group(1)) - ratio) <= 0.01 + 0.01 * ratio,
          "ratio words: %r, summaries %.3f" % (m and m.group(0), ratio))
    m = re.search(r"saving over time, both runs: (\S+\.png)", r.stdout)
    check(m, "no picture named")
    with open(m.group(1), "rb") as f:
        check(f.read(8) == b"\x89PNG\r\n\x1a\n", "not a PNG")
    check({k: host.ksm_read(k) for k in knobs} == knobs,
          "KSM knobs changed: %r" % knobs)
    check(not demo_processes(), "guests left: %r" % demo_processes())


if __name__ == "__main__":
    sys.exit(run_tests([("demo/compare", test_compare)]))
