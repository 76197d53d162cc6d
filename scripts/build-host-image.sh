#!/usr/bin/env bash
# Builds Paddock's host image: the kernel and an initramfs that a
# bare-metal machine netboots (iPXE fetches both from `paddock server`'s
# netboot endpoint). Made from Debian's packages on this machine: busybox,
# QEMU (with its firmware), qemu-img, nft, mke2fs, their libraries, the
# kernel's network, block and virtio modules, and the given paddock binary
# (stripped). Its /init takes an address by DHCP, puts the agent's state on
# the local disk when there is one (an empty disk is formatted; a disk with
# anything on it is left alone and the state stays in memory), and runs
# `paddock agent --join-cmdline`, which joins with the token on the kernel
# command line and turns the machine into a Ready host. Stateless: what
# the image holds is the same for every host.
#
# Usage: scripts/build-host-image.sh PADDOCK_BINARY [OUT_DIR] [EXTRA_DIR...]
#   OUT_DIR    default ${PADDOCK_CACHE:-/var/cache/paddock}/host-image
#   EXTRA_DIR  copied into the image at the same absolute path (the lab
#              puts the dev image there, which its MachineImage names as a
#              file:// URL; the agent fetches file:// images only)
#   PADDOCK_HOST_KERNEL  kernel package (default linux-image-cloud-amd64,
#              virtio only: the lab's machines; real hardware needs
#              linux-image-amd64 and its NICs' firmware)
# Prints OUT_DIR. Idempotent: does nothing when OUT_DIR holds an image of
# the same inputs.
set -euo pipefail

bin=${1:?usage: build-host-image.sh PADDOCK_BINARY [OUT_DIR] [EXTRA_DIR...]}
out=${2:-${PADDOCK_CACHE:-/var/cache/paddock}/host-image}
shift $(( $# >= 2 ? 2 : 1 ))
extra=("$@")
export DEBIAN_FRONTEND=noninteractive

need=(busybox-static cpio kmod gzip qemu-system-x86 qemu-utils nftables e2fsprogs ipxe-qemu)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

kmeta=${PADDOCK_HOST_KERNEL:-linux-image-cloud-amd64}
kpkg=$(apt-cache depends "$kmeta" | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "build-host-image: cannot resolve $kmeta" >&2; exit 1; }
sum() { sha256sum "$@" | sha256sum | cut -c1-16; }
extra_sum=$(for d in "${extra[@]}"; do find "$d" -type f -print0 | sort -z | xargs -0 -r sha256sum; done | sha256sum | cut -c1-16)
stamp="$kpkg $(dpkg-query -W -f='${Version}' qemu-system-x86) $(sum "$bin") $extra_sum $(sum "$0")"
if [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/paddock-host-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$kpkg" 2>/dev/null)
dpkg-deb -x "$work"/linux-image-*.deb "$work/pkgs"
kver=${kpkg#linux-image-}

root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/share,proc,sys,dev,run,tmp,etc,lib64,lib/x86_64-linux-gnu,var/lib/paddock}
cp /usr/bin/busybox "$root/bin/busybox" 2>/dev/null || cp /bin/busybox "$root/bin/busybox"
progs=(/usr/bin/qemu-system-x86_64 /usr/bin/qemu-img /usr/sbin/nft /usr/sbin/mke2fs)
for p in "${progs[@]}"; do cp "$p" "$root$p"; done
# QEMU's TCG accelerator is a module of its own.
mkdir -p "$root/usr/lib/x86_64-linux-gnu/qemu"
cp /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so "$root/usr/lib/x86_64-linux-gnu/qemu/"
objcopy --strip-all "$bin" "$root/usr/bin/paddock"
# Their libraries, resolved on this (Debian 12) machine.
for p in "${progs[@]}" "$bin"; do ldd "$p"; done | awk '/=>/{print $3} /ld-linux/{print $1}' | sort -u | while read -r lib; do
  [ -f "$lib" ] || continue
  case "$lib" in
    /lib64/*) cp -L "$lib" "$root/lib64/" ;;
    *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
  esac
done
# The system's trusted CAs (TLS clients load them, even when they then
# trust only Paddock's CA).
mkdir -p "$root/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
# QEMU's firmware: SeaBIOS, its option ROMs, iPXE's NIC ROMs.
for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
  mkdir -p "$root$d"
  cp -aL "$d/." "$root$d/"
done

# Modules: networking (bridges, VXLAN, taps, nftables), block and virtio
# devices, ext4; loaded on demand through modprobe (busybox's).
kmods=$work/pkgs/lib/modules/$kver/kernel
mkdir -p "$root/lib/modules/$kver/kernel"
for d in virt net drivers/net drivers/block drivers/virtio drivers/scsi drivers/vhost fs/ext4 fs/jbd2 fs/mbcache.ko lib crypto arch/x86/crypto arch/x86/kvm; do
  [ -e "$kmods/$d" ] || continue
  mkdir -p "$root/lib/modules/$kver/kernel/$(dirname "$d")"
  cp -a "$kmods/$d" "$root/lib/modules/$kver/kernel/$d"
done
cp "$work/pkgs/lib/modules/$kver"/modules.order "$work/pkgs/lib/modules/$kver"/modules.builtin* "$root/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$root" "$kver"

for d in "${extra[@]}"; do
  mkdir -p "$root$d"
  cp -a "$d/." "$root$d/"
done

cat >"$root/etc/udhcpc.script" <<'SCRIPT'
#!/bin/sh
# busybox udhcpc's hook: put the lease on the interface.
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip" >/run/underlay-ip
    ;;
esac
SCRIPT
chmod +x "$root/etc/udhcpc.script"

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -sf /bin/modprobe /sbin/modprobe
echo /sbin/modprobe >/proc/sys/kernel/modprobe
for m in virtio_pci virtio_net virtio_blk virtio_scsi sd_mod ext4 tun bridge vxlan veth nf_tables kvm_intel kvm_amd vhost_net; do
  modprobe "$m" 2>/dev/null
done
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n1; }
name=$(arg paddock.host)
hostname "${name:-paddock-host}"
echo "paddock-host: $(hostname) booting" >/dev/console
ip link set lo up
# The boot NIC: the first Ethernet interface with a carrier.
nic=
for i in 1 2 3 4 5 6 7 8 9 10; do
  for n in /sys/class/net/*; do
    n=${n##*/}
    [ "$n" = lo ] && continue
    ip link set "$n" up 2>/dev/null
    [ "$(cat /sys/class/net/$n/carrier 2>/dev/null)" = 1 ] && { nic=$n; break 2; }
  done
  sleep 1
done
[ -n "$nic" ] || nic=eth0
until udhcpc -i "$nic" -s /etc/udhcpc.script -q -n -t 5 -T 2 >/dev/console 2>&1; do
  echo "paddock-host: no DHCP lease on $nic yet" >/dev/console
  sleep 2
done
ip_addr=$(cat /run/underlay-ip)
echo "paddock-host: $nic $ip_addr" >/dev/console
# The local disk, if there is one: an empty one is formatted; one with
# anything on it is left alone.
state=/var/lib/paddock
for d in /dev/vda /dev/sda /dev/nvme0n1; do
  [ -b "$d" ] || continue
  if mount -t ext4 "$d" "$state" 2>/dev/null; then
    echo "paddock-host: state on $d" >/dev/console
  elif [ -z "$(dd if="$d" bs=65536 count=16 2>/dev/null | tr -d '\0' | head -c 1)" ]; then
    /usr/sbin/mke2fs -q -t ext4 -L paddock-state "$d" && mount -t ext4 "$d" "$state" && echo "paddock-host: state on $d (formatted)" >/dev/console
  else
    echo "paddock-host: $d holds data that is not Paddock's; state in memory" >/dev/console
  fi
  break
done
mkdir -p "$state/agent"
while true; do
  paddock agent --join-cmdline --underlay-ip "$ip_addr" --state-dir "$state/agent" >/dev/console 2>&1
  echo "paddock-host: agent exited ($?); restarting" >/dev/console
  sleep 2
done
INIT
chmod +x "$root/init"

mkdir -p "$out"
cp "$work/pkgs/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
(cd "$out" && sha256sum vmlinuz initrd.img >SHA256SUMS)
echo "$stamp" >"$out/STAMP"
echo "$out"
