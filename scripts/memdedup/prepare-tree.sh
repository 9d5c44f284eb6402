#!/bin/sh
# Prepare QEMU's source tree for building memdedup:
#   1. apply our glue patches (once; a stamp records it),
#   2. overlay our files by symbolic link, so that editing one of them
#      rebuilds only what depends on it.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
src=${1:-$top/build/qemu-src}

if [ ! -f "$src/.memdedup-patched" ]; then
    for p in "$top"/patches/qemu/*.patch; do
        patch -d "$src" -p1 --forward --quiet < "$p"
    done
    touch "$src/.memdedup-patched"
fi

# The overlaid tree: every file under these directories of ours has the
# same relative path in QEMU's tree.
cd "$top"
find hw include qapi monitor tests/unit tests/qtest docs/system docs/devel \
     -type f 2>/dev/null | while read -r f; do
    dst=$src/$f
    if [ -L "$dst" ] && [ "$(readlink "$dst")" = "$top/$f" ]; then
        continue
    fi
    if [ -e "$dst" ] && [ ! -L "$dst" ]; then
        echo "prepare-tree: $f would replace a QEMU file" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$dst")"
    ln -sfn "$top/$f" "$dst"
done
