#!/bin/sh
# make bench: memdedup against stock QEMU + KSM, side by side, in one run
# (bench/run.py; see --help).  Needs root: it borrows the host's KSM knobs
# and THP mode and restores them on every exit path.
#
#   scripts/memdedup/bench.sh                 the default suite (~105 min,
#                                             --dry-run prints the plan)
#   scripts/memdedup/bench.sh --no-cow        without bench/cow.py
#   scripts/memdedup/bench.sh --no-fill       without bench/fill.py
#   scripts/memdedup/bench.sh --fill-only     only bench/fill.py (~9 min;
#                                             --fill-thp, --fill-period,
#                                             --fill-vm-mib, --fill-rate,
#                                             --fill-seconds)
#   scripts/memdedup/bench.sh --quick         a short one (~16 min)
#   scripts/memdedup/bench.sh --workloads mixed --thp off --rates 1000/20
#   MEMDEDUP_BENCH_SECONDS=30 scripts/memdedup/bench.sh ...
#   scripts/memdedup/bench.sh --thp-legacy    also bench/thp.py (512 MiB
#                                             VMs, manage-thp on/off)
#
# Results: bench/results/runs/<date>/ (results.json, table.txt, PNGs).
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
# Debian's interpreter: python3-matplotlib and python3-numpy live there.
py=/usr/bin/python3
[ -x "$py" ] || py=python3

legacy=0 dry=0
for a in "$@"; do
    case $a in
    --thp-legacy) legacy=1 ;;
    --dry-run|--help|-h) dry=1 ;;
    esac
done
if [ "$legacy" = 1 ]; then
    # Drop our own flag before handing the rest to run.py.
    n=$#
    i=0
    while [ "$i" -lt "$n" ]; do
        a=$1
        shift
        [ "$a" = --thp-legacy ] || set -- "$@" "$a"
        i=$((i + 1))
    done
fi

"$py" "$top/bench/run.py" "$@"
if [ "$legacy" = 1 ] && [ "$dry" = 0 ]; then
    echo "bench: bench/thp.py (manage-thp on/off vs stock, 512 MiB VMs)"
    flock /tmp/memdedup-cpu.lock "$py" "$top/bench/thp.py"
fi
