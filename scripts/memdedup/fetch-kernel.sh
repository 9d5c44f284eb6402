#!/bin/sh
# shellcheck disable=SC2012  # ls | sort -V picks the newest cached .deb
# fetch-kernel.sh SUITE: Debian SUITE's kernel (the package behind its
# linux-image-amd64) as build/kernels/SUITE/vmlinuz, its release
# (uname -r) in build/kernels/SUITE/release.  The kernel matrix boots the
# test guest with it.
#
# The system's apt configuration is left alone: a private apt tree under
# build/apt-SUITE carries entries derived from the Debian archive URIs
# already configured on this machine, with SUITE as their suite, and
# apt checks what it downloads against the signed index (the system's
# archive keyring).  Does nothing when the kernel is already there.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
suite=${1:?usage: fetch-kernel.sh SUITE}
case $suite in
    *[!a-z0-9-]*) echo "fetch-kernel: bad suite name '$suite'" >&2; exit 2 ;;
esac
out=$top/build/kernels/$suite
aptdir=$top/build/apt-$suite

if [ -f "$out/vmlinuz" ] && [ -f "$out/release" ]; then
    exit 0
fi
mkdir -p "$out" "$aptdir/sources.list.d" "$aptdir/lists/partial" \
         "$aptdir/cache/archives/partial" "$aptdir/debs"

# Entries for the main archive (not the security archive, whose suites
# are named differently), with our suite.
list=$aptdir/sources.list.d/memdedup-$suite.sources
: > "$list"
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
         /(^|\n)URIs:[^\n]*\/debian\/?(\n|$)/ { print }' "$f" |
        sed -e "s/^Suites:.*/Suites: $suite/" >> "$list"
done
if [ -f /etc/apt/sources.list ]; then
    grep -E '^deb[[:space:]]+[^[:space:]]+/debian/?[[:space:]]' \
        /etc/apt/sources.list |
        awk -v s="$suite" '{ $3 = s; print }' \
        > "$aptdir/sources.list.d/memdedup-$suite.list" || true
fi
if ! grep -qs . "$list" "$aptdir/sources.list.d/memdedup-$suite.list"; then
    echo "fetch-kernel: no Debian archive configured in /etc/apt" >&2
    exit 1
fi

aptopts="-o Dir::Etc::SourceList=/dev/null
 -o Dir::Etc::SourceParts=$aptdir/sources.list.d
 -o Dir::State::Lists=$aptdir/lists
 -o Dir::Cache=$aptdir/cache
 -o APT::Sandbox::User=root"

# shellcheck disable=SC2086
apt-get -qq $aptopts update
# shellcheck disable=SC2086
kpkg=$(apt-cache $aptopts depends linux-image-amd64 |
       sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1)
[ -n "$kpkg" ] || { echo "fetch-kernel: no linux-image-amd64 in $suite" >&2; exit 1; }
if ! ls "$aptdir/debs/${kpkg}_"*.deb >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    (cd "$aptdir/debs" && apt-get -q=2 $aptopts download "$kpkg")
fi
deb=$(ls "$aptdir/debs/${kpkg}_"*.deb | sort -V | tail -n 1)
tmp=$(mktemp -d "$out/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM HUP
dpkg --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
cp "$tmp"/boot/vmlinuz-* "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "${kpkg#linux-image-}" > "$out/release"
echo "fetch-kernel: $suite's $(basename "$deb") into $out"
