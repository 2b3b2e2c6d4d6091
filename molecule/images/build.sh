#!/usr/bin/env bash
# Build the local systemd image the Molecule scenarios boot, without pulling anything:
# debootstrap a minimal Debian into a temporary root, then `docker import` it.
#
#   molecule/images/build.sh                  build fleetproxy/debian12-systemd:latest if missing
#   molecule/images/build.sh --force          rebuild even if the tag exists
#   FLEETPROXY_MOLECULE_IMAGE=NAME:TAG molecule/images/build.sh   another tag
#
# Users with a registry do not need this script: set FLEETPROXY_MOLECULE_IMAGE to an
# image that boots systemd as PID 1 (see README.md, "Images").
# Needs root, debootstrap and a Docker engine; takes about a minute.
set -euo pipefail

image="${FLEETPROXY_MOLECULE_IMAGE:-fleetproxy/debian12-systemd:latest}"
suite="${FLEETPROXY_IMAGE_SUITE:-bookworm}"
mirror="${FLEETPROXY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What a minimal server has, plus what Ansible and the scenarios need on a host:
# python3 for Ansible, systemd as PID 1, iproute2/procps (ip, sysctl), sudo (become).
packages="python3,systemd,systemd-sysv,dbus,iproute2,procps,sudo,ca-certificates"

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "image $image exists (use --force to rebuild)"
    exit 0
fi
case "$image" in
    fleetproxy/*) ;;
    *) echo "refusing to build $image: only fleetproxy/* tags are built locally;" \
            "pull other images from your registry" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

rootfs="$(mktemp -d /tmp/fleetproxy-rootfs.XXXXXX)"
trap 'rm -rf --one-file-system "$rootfs"' EXIT

echo "debootstrap $suite into $rootfs (from $mirror)"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    > "$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# Make systemd at home in a container: no gettys, no udev, no remounting of a root it
# does not own; an empty machine-id is filled in at boot.
for unit in getty@tty1.service console-getty.service systemd-udevd.service \
            systemd-udev-trigger.service systemd-remount-fs.service \
            systemd-firstboot.service sys-kernel-config.mount sys-kernel-debug.mount; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
: > "$rootfs/etc/machine-id"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

echo "importing as $image"
tar -C "$rootfs" -c . | docker import \
    -c 'CMD ["/lib/systemd/systemd"]' \
    -c 'ENV container=docker' \
    - "$image" >/dev/null
docker image inspect --format '{{.Id}} {{.Size}}' "$image"
