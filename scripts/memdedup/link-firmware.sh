#!/bin/sh
# Run from a build tree, QEMU looks for firmware under <build>/qemu-bundle
# (its configured --firmwarepath, relocated): point those directories at
# Debian's firmware packages (seabios, qemu-system-data, ipxe-qemu).
set -eu
bld=$1
for d in usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu; do
    mkdir -p "$bld/qemu-bundle/$(dirname "$d")"
    ln -sfn "/$d" "$bld/qemu-bundle/$d"
done
