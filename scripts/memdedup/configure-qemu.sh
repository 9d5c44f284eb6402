#!/bin/sh
# Configure a lean x86_64-softmmu build of the prepared QEMU tree in
# $src/build, using ccache.  Debian's firmware packages provide the ROMs.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
src=${1:-$top/build/qemu-src}
bld=${2:-$src/build}            # e.g. $src/build-asan for make check-asan
extra=${MEMDEDUP_CONFIGURE_EXTRA:-}

# Debian's python3 and meson, not a user-installed interpreter.
export PATH=/usr/bin:/bin:$PATH

mkdir -p "$bld"
cd "$bld"
# shellcheck disable=SC2086
"$src/configure" \
    --cc="ccache gcc" --cxx="ccache g++" \
    --target-list=x86_64-softmmu \
    --enable-kvm --enable-tcg --enable-numa --enable-slirp \
    --enable-docs --disable-tools --disable-guest-agent \
    --disable-user --disable-linux-user --disable-bsd-user \
    --disable-gtk --disable-sdl --disable-vnc --disable-opengl \
    --disable-spice --disable-xen --disable-curses --disable-alsa \
    --disable-pa --disable-jack --disable-oss --disable-libusb \
    --disable-usb-redir --disable-smartcard --disable-virglrenderer \
    --disable-capstone --disable-rbd --disable-glusterfs \
    --disable-libiscsi --disable-libnfs --disable-libssh \
    --disable-curl --disable-gnutls --disable-nettle --disable-gcrypt \
    --disable-vde --disable-netmap --disable-brlapi --disable-bpf \
    --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
    $extra
