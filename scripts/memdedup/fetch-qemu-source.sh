#!/bin/sh
# Fetch and unpack Debian's QEMU source package into $1 (default
# build/qemu-src), with Debian's patches applied.
#
# The system's apt configuration is left alone: a private apt tree under
# build/apt carries deb-src entries derived from the archive URIs already
# configured on this machine, and apt checks the downloaded files against
# the signed index.  The .dsc and tarballs are cached in build/apt/src.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:-$top/build/qemu-src}
aptdir=$top/build/apt
srcdir=$aptdir/src

if [ -f "$dest/.memdedup-unpacked" ]; then
    exit 0
fi

mkdir -p "$aptdir/sources.list.d" "$aptdir/lists/partial" \
         "$aptdir/cache/archives/partial" "$srcdir"

# Derive deb-src entries from the configured Debian archive.
: > "$aptdir/sources.list.d/memdedup-src.sources"
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    grep -q '^URIs:.*debian' "$f" || continue
    sed -e 's/^Types:.*/Types: deb-src/' "$f" \
        >> "$aptdir/sources.list.d/memdedup-src.sources"
    echo >> "$aptdir/sources.list.d/memdedup-src.sources"
done
if [ -f /etc/apt/sources.list ]; then
    grep -E '^deb[[:space:]].*debian' /etc/apt/sources.list |
        sed -e 's/^deb[[:space:]]/deb-src /' \
        > "$aptdir/sources.list.d/memdedup-src.list" || true
fi

aptopts="-o Dir::Etc::SourceList=/dev/null
 -o Dir::Etc::SourceParts=$aptdir/sources.list.d
 -o Dir::State::Lists=$aptdir/lists
 -o Dir::Cache=$aptdir/cache
 -o APT::Sandbox::User=root"

if ! ls "$srcdir"/qemu_*.dsc >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    apt-get -qq $aptopts update
    # shellcheck disable=SC2086
    (cd "$srcdir" && apt-get -qq $aptopts source --download-only qemu)
fi

dsc=$(ls "$srcdir"/qemu_*.dsc | sort -V | tail -n 1)
rm -rf "$dest.tmp"
dpkg-source -x "$dsc" "$dest.tmp" >/dev/null
rm -rf "$dest"
mv "$dest.tmp" "$dest"
basename "$dsc" > "$dest/.memdedup-unpacked"
echo "fetch-qemu-source: unpacked $(basename "$dsc") into $dest"
