#!/bin/sh
# Install the Debian packages memdedup needs to build, test and demo,
# but only those that are missing.  Runs apt-get as root.
set -eu

pkgs="build-essential ccache ninja-build meson pkg-config python3 python3-venv
flex bison libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev libslirp-dev
libxxhash-dev libnuma-dev libcap-ng-dev libattr1-dev
seabios qemu-system-data ipxe-qemu dpkg-dev cpio gzip xz-utils
python3-sphinx python3-sphinx-rtd-theme python3-matplotlib python3-numpy
libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
libjson-c-dev
clang libclang-rt-14-dev
prometheus prometheus-node-exporter"
# The services Debian's prometheus packages would start (prometheus,
# prometheus-node-exporter): the tests start private instances
# on loopback and nothing may stay running on the host.
services="prometheus prometheus-node-exporter"

missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing (run as root to install)" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
# No service starts during the installation: a policy-rc.d that denies
# every start (invoke-rc.d and deb-systemd-invoke ask it), ours only
# while apt runs, unless the host has one already.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# memdedup install-deps: no service starts\nexit 101\n' \
        >"$policy"
    chmod 755 "$policy"
fi
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
# Under systemd the units are still enabled for the next boot.
if [ -d /run/systemd/system ]; then
    for s in $services; do
        systemctl disable --now "$s" >/dev/null 2>&1 || true
    done
fi
