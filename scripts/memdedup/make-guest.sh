#!/bin/sh
# shellcheck disable=SC2012  # ls | sort -V picks the newest cached .deb
# Build the demo/test guest: build/guest/vmlinuz (Debian bookworm's
# kernel) and build/guest/initramfs.cpio.gz (static busybox, an /init
# that fills a tmpfs with shared, zero and unique data, and a
# deterministic data file /data/shared.bin).  The guest boots with
# -kernel/-initrd and has no disk; the initramfs carries the kernel's
# virtio-pci and virtio-mem modules, and /init takes shell commands on a
# second serial port (ttyS1) when one is connected.
#
# The .debs are fetched with the system's apt configuration and cached
# in build/guest/debs.  Does nothing when both outputs exist and are
# newer than this script.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
out=$top/build/guest
debs=$out/debs
kernel=$out/vmlinuz
initrd=$out/initramfs.cpio.gz
shared_mib=40     # size of /data/shared.bin; keeps the initramfs < 48 MiB

if [ -f "$kernel" ] && [ -n "$(find "$initrd" -newer "$0" 2>/dev/null)" ]; then
    exit 0
fi
mkdir -p "$debs"

# apt-get download into $debs, updating the package lists once if needed.
fetch() {
    if ls "$debs/${1}_"*.deb >/dev/null 2>&1; then
        return 0
    fi
    if ! (cd "$debs" && apt-get download -q=2 -o APT::Sandbox::User=root "$1"); then
        echo "make-guest: updating package lists and retrying $1" >&2
        apt-get update -qq
        (cd "$debs" && apt-get download -q=2 -o APT::Sandbox::User=root "$1")
    fi
}

# The real kernel package behind the linux-image-amd64 metapackage.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
       sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1)
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 |
           sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1)
fi
[ -n "$kpkg" ] || { echo "make-guest: cannot resolve linux-image-amd64" >&2; exit 1; }

tmp=$(mktemp -d "$out/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM HUP

# --- kernel -------------------------------------------------------------
if [ ! -f "$kernel" ]; then
    fetch "$kpkg"
    deb=$(ls "$debs/${kpkg}_"*.deb | sort -V | tail -n 1)
    echo "make-guest: unpacking $(basename "$deb")"
    dpkg -x "$deb" "$tmp/kernel"
    cp "$tmp/kernel/boot/vmlinuz-"* "$kernel.tmp"
    mv "$kernel.tmp" "$kernel"
    rm -rf "$tmp/kernel"
fi

# --- initramfs ----------------------------------------------------------
# The virtio-mem driver and what it needs, in load order, from the same
# kernel package.
modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev
virtio_pci virtio_mem"
fetch "$kpkg"
deb=$(ls "$debs/${kpkg}_"*.deb | sort -V | tail -n 1)
mkdir -p "$tmp/mods"
dpkg --fsys-tarfile "$deb" |
    tar -x -C "$tmp/mods" --wildcards '*/drivers/virtio/*.ko'
fetch busybox-static
deb=$(ls "$debs/busybox-static_"*.deb | sort -V | tail -n 1)
dpkg -x "$deb" "$tmp/bb"
root=$tmp/root
mkdir -p "$root/bin" "$root/sbin" "$root/dev" "$root/proc" "$root/sys" \
         "$root/mnt/fill" "$root/data" "$root/tmp"
cp "$tmp/bb/bin/busybox" "$root/bin/busybox"
mkdir -p "$root/lib/modules"
for m in $modules; do
    ko=$(find "$tmp/mods" -name "$m.ko" | head -n 1)
    [ -n "$ko" ] || { echo "make-guest: $m.ko missing from $kpkg" >&2; exit 1; }
    cp "$ko" "$root/lib/modules/"
done
echo "$modules" | tr '\n' ' ' > "$root/lib/modules/order"
echo "${kpkg#linux-image-}" > "$root/lib/modules/release"
for app in $("$root/bin/busybox" --list); do
    [ "$app" = busybox ] || ln -s busybox "$root/bin/$app"
done

# Deterministic, incompressible, never-zero 4 KiB pages: SHAKE-256 of a
# fixed seed is defined by FIPS 202, hence identical on every machine.
python3 -c '
import hashlib, sys
sys.stdout.buffer.write(hashlib.shake_256(b"memdedup-shared-v1").digest(int(sys.argv[1]) << 20))
' "$shared_mib" > "$root/data/shared.bin"

cat > "$root/init" <<'EOF'
#!/bin/sh
# memdedup guest: fill a tmpfs with shared, zero and unique data, then idle.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o size=95% tmpfs /mnt/fill
# The modules are the packaged kernel's: another kernel (the kernel
# matrix boots this initramfs with several) goes without them.
if [ "$(uname -r)" = "$(cat /lib/modules/release)" ]; then
    for m in $(cat /lib/modules/order); do
        insmod "/lib/modules/$m.ko" || echo "memdedup: insmod $m failed"
    done
fi

# Options from the kernel command line (MiB unless noted; shared is at
# most the size of /data/shared.bin).
shared=32 copies=2 zero=32 unique=64
for opt in $(cat /proc/cmdline); do
    case $opt in
        memdedup.shared=*) shared=${opt#*=} ;;
        memdedup.copies=*) copies=${opt#*=} ;;
        memdedup.zero=*)   zero=${opt#*=} ;;
        memdedup.unique=*) unique=${opt#*=} ;;
    esac
done

fill() {  # fill FILE SOURCE MiB
    dd if="$2" of="/mnt/fill/$1" bs=1M count="$3" iflag=fullblock 2>/dev/null ||
        echo "memdedup: writing /mnt/fill/$1 failed"
}
i=0
while [ "$i" -lt "$copies" ]; do
    fill "shared.$i" /data/shared.bin "$shared"
    i=$((i + 1))
done
fill zero /dev/zero "$zero"
fill unique /dev/urandom "$unique"

echo
echo "memdedup: shared=${shared}MiB copies=$copies zero=${zero}MiB" \
     "unique=${unique}MiB, $(du -sm /mnt/fill | cut -f1) MiB in /mnt/fill"
# Commands from the host, one per line on ttyS1, when it is connected;
# each one's output goes to the console, followed by its exit status.
# The port is open before READY is printed, and stays open: the host
# sends its first command as soon as it sees READY, and bytes that reach
# a closed port are lost when the driver opens it (it clears the UART).
if stty -F /dev/ttyS1 raw -echo 2>/dev/null; then
    exec 3</dev/ttyS1
    echo MEMDEDUP-GUEST-READY
    while read -r cmd <&3; do
        sh -c "$cmd" 3<&-
        echo "MEMDEDUP-CMD-DONE $?"
    done
else
    echo MEMDEDUP-GUEST-READY
fi
while :; do sleep 3600; done
EOF
chmod 755 "$root/init"

# Reproducible archive: fixed mtimes, sorted names, no gzip timestamp.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible) |
    gzip -n -6 > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
echo "make-guest: $initrd ($(du -k "$initrd" | cut -f1) KiB), kernel from $kpkg"
