#!/bin/sh
# Build the guest that carries our QEMU: build/guest-numa/vmlinuz and
# build/guest-numa/initramfs.cpio.gz, for the two-node test and the
# kernel matrix (which boots the same initramfs with other kernels
# too).  It is the test guest of
# make-guest.sh (same kernel, same busybox and /init, which runs shell
# commands sent on ttyS1), minus its data file, plus what running our
# QEMU inside it takes: qemu-system-x86_64 (stripped), the shared
# libraries ldd lists for it, SeaBIOS (the pc machine's firmware) in
# /qemu, the helpers of scripts/memdedup/inner (qmp and qt: QMP and
# qtest commands to the QEMU started with pipes in /tmp), and a user
# nobody.
# Does nothing when the initramfs is newer than QEMU, the test guest,
# the helpers and this script.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
guest=$top/build/guest
out=$top/build/guest-numa
qemu=${MEMDEDUP_QEMU:-$top/build/qemu-src/build/qemu-system-x86_64}
bios=/usr/share/seabios/bios-256k.bin
initrd=$out/initramfs.cpio.gz

"$top/scripts/memdedup/make-guest.sh"
[ -x "$qemu" ] || { echo "make-numa-guest: build QEMU first ($qemu)" >&2; exit 1; }
[ -f "$bios" ] || { echo "make-numa-guest: $bios missing (seabios)" >&2; exit 1; }
if [ -f "$initrd" ] && [ -z "$(find "$qemu" "$guest/initramfs.cpio.gz" "$0" \
                              "$top/scripts/memdedup/inner/qmp" \
                              "$top/scripts/memdedup/inner/qt" \
                              -newer "$initrd" 2>/dev/null)" ]; then
    exit 0
fi
mkdir -p "$out"
tmp=$(mktemp -d "$out/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM HUP

root=$tmp/root
mkdir -p "$root"
(cd "$root" && gzip -dc "$guest/initramfs.cpio.gz" | cpio -id --quiet)
rm -f "$root/data/shared.bin"      # the fill data: not used here

strip -o "$root/bin/qemu-system-x86_64" "$qemu"
for lib in $(ldd "$qemu" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }
                                $1 ~ /^\/.*ld-linux/ { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
mkdir -p "$root/qemu"
cp "$bios" "$root/qemu/"

cp "$top/scripts/memdedup/inner/qmp" "$top/scripts/memdedup/inner/qt" "$root/bin/"
# An unprivileged user for the tests (busybox su runs QEMU as nobody).
mkdir -p "$root/etc"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' \
    > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# Reproducible archive, as make-guest.sh makes it.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible) |
    gzip -n -6 > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
cp "$guest/vmlinuz" "$out/vmlinuz"
echo "make-numa-guest: $initrd ($(du -k "$initrd" | cut -f1) KiB)"
