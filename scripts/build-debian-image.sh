#!/usr/bin/env bash
# Builds Paddock's Debian node image: a real Debian 12 (bookworm) made with
# debootstrap, with systemd, the cloud kernel, qemu-guest-agent and
# cloud-init (NoCloud only; network-config v2 handed to netplan, which
# renders it for systemd-networkd).
# No loop mounts: the root file system is made with `mkfs.ext4 -d`.
#
# Output in OUT_DIR: vmlinuz, initrd.img (virtio_pci/virtio_blk; ext4 is
# built into the kernel), rootfs.qcow2 (ext4, no partition table), SHA256SUMS.
# Boot it by direct kernel boot, rootfs first (vda), NoCloud seed second (vdb):
#   -kernel vmlinuz -initrd initrd.img -append "root=/dev/vda rw console=ttyS0"
#
# Usage: scripts/build-debian-image.sh [OUT_DIR]   (default ${PADDOCK_CACHE:-/var/cache/paddock}/debian-image)
# Prints OUT_DIR. Idempotent: does nothing when OUT_DIR holds an image of the same inputs.
# Environment: PADDOCK_DEBIAN_MIRROR (http://deb.debian.org/debian),
# PADDOCK_ROOTFS_SIZE (virtual size of the root file system, 4G).
set -euo pipefail

out=${1:-${PADDOCK_CACHE:-/var/cache/paddock}/debian-image}
mirror=${PADDOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mirror=${mirror%/}
security=${mirror%/debian}/debian-security
size=${PADDOCK_ROOTFS_SIZE:-4G}
suite=bookworm
# What goes into the image (besides debootstrap's minbase), never recommends.
pkgs=(systemd-sysv udev dbus linux-image-cloud-amd64 initramfs-tools cloud-init
  netplan.io qemu-guest-agent iproute2 e2fsprogs)
# Images built on this one (scripts/build-kube-node-image.sh) add packages
# and a tree of files copied over the root (PADDOCK_IMAGE_OVERLAY).
read -r -a extra <<<"${PADDOCK_IMAGE_PACKAGES:-}"
pkgs+=("${extra[@]}")
overlay=${PADDOCK_IMAGE_OVERLAY:-}
# ... and a command run on the finished tree (its path the argument).
hook=${PADDOCK_IMAGE_HOOK:-}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# Build host tools, installed only when missing.
need=(debootstrap debian-archive-keyring e2fsprogs qemu-utils)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The stamp: the versions the image would get now, its settings and this script.
ver() { apt-cache policy "$1" | awk '/Candidate/{print $2; exit}'; }
kdep() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
kpkg=$(kdep)
[ -n "$kpkg" ] || { apt-get update -qq && kpkg=$(kdep); }
[ -n "$kpkg" ] || { echo "build-debian-image: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
stamp="$suite $kpkg=$(ver "$kpkg") cloud-init=$(ver cloud-init) qemu-guest-agent=$(ver qemu-guest-agent)"
stamp+=" systemd=$(ver systemd) $mirror $size $(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
for p in "${extra[@]}"; do stamp+=" $p=$(ver "$p")"; done
if [ -n "$overlay" ]; then
  stamp+=" overlay=$(cd "$overlay" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
fi
if [ -n "$hook" ]; then
  stamp+=" hook=$(sha256sum "$hook" | cut -c1-16)"
fi
if [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$stamp" ] &&
  [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/rootfs.qcow2" ]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/paddock-debian-image.XXXXXX")
root=$work/root
log=$work/build.log
exec 3>&2 # the cleanup reports here even when it runs inside a redirection
cleanup() {
  rc=$?
  # Unmount whatever is still mounted under the work dir (deepest first).
  findmnt -rn -o TARGET | awk -v w="$work/" 'index($0, w) == 1' | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ] && [ -f "$log" ]; then
    echo "build-debian-image: failed; last lines of the build log:" >&3
    tail -n 40 "$log" >&3
  fi
  rm -rf --one-file-system "$work"
  rm -f "$out"/*.tmp
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
logged() { "$@" >>"$log" 2>&1; }

echo "build-debian-image: debootstrap $suite ($kpkg), log in $log" >&2
logged debootstrap --variant=minbase "$suite" "$root" "$mirror"

# apt and dpkg: no recommends, no docs/man pages/translations, the three suites.
cat >"$root/etc/apt/apt.conf.d/90paddock" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
cat >"$root/etc/dpkg/dpkg.cfg.d/90paddock-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# No daemons start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
rm -f "$root/etc/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"

# A small initramfs, set before the kernel comes in: only what mounts
# root=/dev/vda (ext4 and crc32c are built into the cloud kernel). Leaving
# virtio_net out also keeps udev in the initramfs from renaming eth0.
mkdir -p "$root/etc/initramfs-tools/conf.d"
# FSTYPE: the fsck hook can't probe /dev/vda in the chroot; with it the
# initramfs carries fsck.ext4 and checks the root before mounting it.
printf 'MODULES=list\nFSTYPE=ext4\n' >"$root/etc/initramfs-tools/conf.d/90paddock"
printf '%s\n' virtio_pci virtio_blk ext4 >>"$root/etc/initramfs-tools/modules"
echo "/dev/vda / ext4 rw,relatime,errors=remount-ro 0 1" >"$root/etc/fstab"

mount -t proc proc "$root/proc"
logged in_root apt-get update
logged in_root apt-get -y dist-upgrade
logged in_root apt-get -y install "${pkgs[@]}"

# Files the dpkg excludes above came too late for (debootstrap's base).
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*

# cloud-init: NoCloud only (no waiting for metadata services), no locale
# generation, Debian's module lists less what this image lacks (ssh server,
# grub, snap, byobu, config management agents). Debian's default user
# (debian, locked, as in Debian's cloud images) stays.
# Network: bookworm's cloud-init (22.4) fails its whole init-local stage on
# a v2 route `to: default` when it parses v2 itself (the eni and networkd
# renderers); with netplan it passes the v2 config through untouched to
# netplan (0.106), which renders it for systemd-networkd (address, mtu,
# default route, set-name).
cat >"$root/etc/cloud/cloud.cfg.d/90_paddock.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
system_info:
  network:
    renderers: [ netplan ]
locale: C.UTF-8
cloud_init_modules: [ migrator, seed_random, bootcmd, write-files, growpart, resizefs,
  disk_setup, mounts, set_hostname, update_hostname, update_etc_hosts, ca-certs,
  rsyslog, users-groups ]
cloud_config_modules: [ keyboard, locale, set-passwords, apt-pipelining, apt-configure,
  ntp, timezone, disable-ec2-metadata, runcmd ]
cloud_final_modules: [ package-update-upgrade-install, write-files-deferred,
  scripts-vendor, scripts-per-once, scripts-per-boot, scripts-per-instance,
  scripts-user, install-hotplug, phone-home, final-message, power-state-change ]
EOF
echo "LANG=C.UTF-8" >"$root/etc/default/locale"

# Interfaces keep their kernel names (eth0): no predictable renaming.
mkdir -p "$root/etc/systemd/network"
ln -sf /dev/null "$root/etc/systemd/network/99-default.link"
# Don't hold the boot for minutes when a link never gets configured.
mkdir -p "$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$root/etc/systemd/system/systemd-networkd-wait-online.service.d/paddock.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF
logged in_root systemctl enable systemd-networkd.service
# Units useless in a short-lived VM; only the serial console gets a getty.
logged in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
  apt-daily-upgrade.service dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer getty@tty1.service modprobe@drm.service modprobe@efi_pstore.service
# qemu-guest-agent has no [Install]: udev starts it when its virtio port
# appears (60-qemu-guest-agent.rules, SYSTEMD_WANTS), hence udev above. Let
# it answer as soon as the file systems are up instead of after sysinit,
# which waits for cloud-init's init stage (a minute under TCG).
mkdir -p "$root/etc/systemd/system/qemu-guest-agent.service.d"
cat >"$root/etc/systemd/system/qemu-guest-agent.service.d/paddock.conf" <<'EOF'
[Unit]
DefaultDependencies=no
After=local-fs.target
Before=shutdown.target
Conflicts=shutdown.target
EOF

if [ -n "$overlay" ]; then
  cp -a "$overlay/." "$root/"
  # Units the overlay brings that want to be enabled.
  for u in "$overlay"/etc/systemd/system/*.service; do
    if [ -e "$u" ] && grep -q '^\[Install\]' "$u"; then
      logged in_root systemctl enable "$(basename "$u")"
    fi
  done
fi

if [ -n "$hook" ]; then
  logged "$hook" "$root"
fi

echo "localhost" >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
logged in_root passwd -d root # serial console login without password

# The boot files, then a clean tree: no caches, logs, ids or host files.
kver=${kpkg#linux-image-}
mkdir -p "$out"
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img.tmp"
mods=$(in_root lsinitramfs "/boot/initrd.img-$kver")
for m in virtio_pci virtio_blk; do
  grep -q "/$m.ko" <<<"$mods" || { echo "build-debian-image: $m missing from the initramfs" >&2; exit 1; }
done
logged in_root apt-get clean
umount "$root/proc"
rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/*.bin "${root:?}"/var/cache/debconf/*-old \
  "${root:?}"/var/lib/dpkg/*-old "${root:?}"/tmp/* "${root:?}"/var/tmp/* \
  "${root:?}"/var/lib/cloud/* "${root:?}/usr/sbin/policy-rc.d" \
  "${root:?}/etc/resolv.conf" "${root:?}/var/lib/dbus/machine-id"
# /boot keeps only the kernel's config (kubeadm's preflight reads it; the
# kernel and initramfs boot from outside the image).
find "$root/boot" -mindepth 1 ! -name "config-$kver" -exec rm -rf {} +
find "$root/var/log" -type f -delete
: >"$root/etc/machine-id"   # empty: each VM makes its own

# The root file system: ext4 straight from the tree, then a compressed qcow2
# (a third of the size; VMs boot from overlays on it just as fast).
truncate -s "$size" "$work/rootfs.raw"
logged mkfs.ext4 -q -F -L paddock-root -d "$root" "$work/rootfs.raw"
qemu-img convert -c -f raw -O qcow2 "$work/rootfs.raw" "$out/rootfs.qcow2.tmp"
rm -f "$out/STAMP"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/rootfs.qcow2.tmp" "$out/rootfs.qcow2"
(cd "$out" && sha256sum vmlinuz initrd.img rootfs.qcow2 >SHA256SUMS)
echo "$stamp" >"$out/STAMP"
echo "$out"
