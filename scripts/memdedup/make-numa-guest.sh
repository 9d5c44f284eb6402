#!/bin/sh
# Build the two-node test guest: build/guest-numa/vmlinuz and
# build/guest-numa/initramfs.cpio.gz.  It is the test guest of
# make-guest.sh (same kernel, same busybox and /init, which runs shell
# commands sent on ttyS1), minus its data file, plus what running our
# QEMU inside it takes: qemu-system-x86_64 (stripped), the shared
# libraries ldd lists for it, SeaBIOS (the pc machine's firmware) in
# /qemu, and two helpers:
#   qmp JSON   send one QMP command to the QEMU started with
#              -qmp pipe:/tmp/qmp and print "QMP-REPLY <its reply>"
#   qt         send the qtest commands read from stdin to the QEMU
#              started with -qtest pipe:/tmp/qt; print "QT-OK <count>"
# Does nothing when the initramfs is newer than QEMU, the test guest
# and this script.
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

cat > "$root/bin/qmp" <<'EOF'
#!/bin/sh
# qmp JSON: one QMP command to the QEMU listening on -qmp pipe:/tmp/qmp;
# skips the greeting and events, prints the reply line.
exec 5>/tmp/qmp.in 6</tmp/qmp.out
echo "$1" >&5
while read -r line <&6; do
    case $line in
        '{"return"'*|'{"error"'*) echo "QMP-REPLY $line"; exit 0 ;;
    esac
done
exit 1
EOF
cat > "$root/bin/qt" <<'EOF'
#!/bin/sh
# qt < COMMANDS: qtest commands to the QEMU on -qtest pipe:/tmp/qt, sent
# at once; waits for every reply and prints how many were OK.
cat > /tmp/qt.cmds
n=$(wc -l < /tmp/qt.cmds)
exec 3>/tmp/qt.in 4</tmp/qt.out
cat /tmp/qt.cmds >&3
echo "QT-OK $(head -n "$n" <&4 | grep -c '^OK') of $n"
EOF
chmod 755 "$root/bin/qmp" "$root/bin/qt"

# Reproducible archive, as make-guest.sh makes it.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible) |
    gzip -n -6 > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
cp "$guest/vmlinuz" "$out/vmlinuz"
echo "make-numa-guest: $initrd ($(du -k "$initrd" | cut -f1) KiB)"
