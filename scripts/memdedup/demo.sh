#!/bin/sh
# make run: boot two TCG guests on memory-backend-ksm and watch memdedup
# and ksmd deduplicate them.  Options go to demo.py (--duration, --guests,
# --mem, ...; see --help).  Run as root to let the demo enable ksmd.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
"$top/scripts/memdedup/make-guest.sh"      # no-op when the guest is built
# Debian's interpreter: python3-matplotlib (the picture) lives there.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
exec "$py" "$top/scripts/memdedup/demo.py" "$@"
