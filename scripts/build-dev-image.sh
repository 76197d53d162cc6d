#!/usr/bin/env bash
# Builds Paddock's dev node image from Debian's packages: the cloud kernel,
# an initramfs with busybox (ping, nc, httpd), openssl, qemu-guest-agent and
# the virtio modules, and an /init that takes the overlay address from the
# kernel command line (paddock.ip=, paddock.gw=, paddock.mtu=,
# paddock.hostname=) or from the NoCloud seed's network-config, and writes
# the seed user-data's write_files. Boots to a guest agent in a few seconds
# under TCG.
#
# Stand-ins, until real Kubernetes images boot here: a node given an API
# server certificate serves TLS on 6443 with it (fake-kube-apiserver:
# `openssl s_server`, not Kubernetes), and every node answers HTTP on the
# ingress node port 30080 with its name.
#
# Usage: scripts/build-dev-image.sh [OUT_DIR]   (default ${PADDOCK_CACHE:-/var/cache/paddock}/dev-image)
# Prints OUT_DIR. Idempotent: does nothing when OUT_DIR holds an image of the same inputs.
set -euo pipefail

out=${1:-${PADDOCK_CACHE:-/var/cache/paddock}/dev-image}
export DEBIAN_FRONTEND=noninteractive

need=(busybox-static cpio kmod gzip openssl libglib2.0-0 libnuma1 liburing2 libudev1 libpcre2-8-0)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "build-dev-image: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
stamp="$kpkg $(apt-cache policy qemu-guest-agent | awk '/Candidate/{print $2}') $(dpkg-query -W -f='${Version}' openssl) v6"
if [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$kpkg" qemu-guest-agent busybox-static 2>/dev/null)
for d in "$work"/*.deb; do dpkg-deb -x "$d" "$work/pkgs"; done
kver=${kpkg#linux-image-}

root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,seed,lib64,lib/x86_64-linux-gnu}
cp "$work/pkgs/bin/busybox" "$root/bin/busybox"
cp "$work/pkgs/usr/sbin/qemu-ga" "$root/usr/sbin/qemu-ga"
cp /usr/bin/openssl "$root/usr/bin/openssl"
# Their libraries, resolved against this (Debian 12) machine.
{ ldd "$root/usr/sbin/qemu-ga"; ldd /usr/bin/openssl; } | awk '/=>/{print $3} /ld-linux/{print $1}' | sort -u | while read -r lib; do
  [ -f "$lib" ] || continue
  case "$lib" in
    /lib64/*) cp -L "$lib" "$root/lib64/" ;;
    *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
  esac
done

mods=(virtio_pci virtio_net virtio_console virtio_blk vfat nls_cp437 nls_ascii nls_iso8859_1 nls_utf8)
kmods=$work/pkgs/lib/modules/$kver
depmod -b "$work/pkgs" "$kver"
for m in "${mods[@]}"; do
  for f in $(modprobe -S "$kver" -d "$work/pkgs" --show-depends "$m" 2>/dev/null | awk '/^insmod/{print $2}'); do
    rel=${f#"$work/pkgs"}
    mkdir -p "$root$(dirname "$rel")"
    cp "$f" "$root$rel"
  done
done
cp "$kmods"/modules.order "$kmods"/modules.builtin* "$root/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$root" "$kver"

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_pci virtio_net virtio_console virtio_blk vfat nls_cp437 nls_ascii nls_iso8859_1 nls_utf8; do modprobe "$m" 2>/dev/null; done
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n1; }
ip_addr=$(arg paddock.ip); gw=$(arg paddock.gw); mtu=$(arg paddock.mtu); name=$(arg paddock.hostname)
# The NoCloud seed (label cidata): the command line's values win.
for dev in /dev/vd?; do
    if mount -t vfat -o ro "$dev" /seed 2>/dev/null; then
      if [ -f /seed/network-config ] && [ -z "$ip_addr" ]; then
        ip_addr=$(sed -n 's/.*addresses: *\[\([^]]*\)\].*/\1/p' /seed/network-config | head -n1 | tr -d ' "')
        [ -n "$gw" ] || gw=$(sed -n 's/.*via: *\([0-9.]*\).*/\1/p' /seed/network-config | head -n1)
        [ -n "$mtu" ] || mtu=$(sed -n 's/.*mtu: *\([0-9]*\).*/\1/p' /seed/network-config | head -n1)
      fi
      [ -n "$name" ] || name=$(sed -n 's/^local-hostname: *//p' /seed/meta-data 2>/dev/null | tr -d '"')
      [ -f /seed/user-data ] && cp /seed/user-data /seed-user-data
      umount /seed
      break
    fi
done
# The user-data's write_files (as Paddock renders them: base64 content).
if [ -f /seed-user-data ]; then
  awk '
    /^write_files:/ { wf = 1; next }
    wf && /^[^ -]/ { wf = 0 }
    !wf { next }
    /^- / { if (path != "") print path, content; path = ""; content = ""; c = 0; sub(/^- /, "  ") }
    /^  content:/ { c = 1; v = $0; sub(/^  content: *(>-|[|]-|>|[|])? */, "", v); gsub(/[ "]/, "", v); content = v; next }
    /^    / { if (c) { v = $0; gsub(/[ "]/, "", v); content = content v }; next }
    /^  [a-z_]+:/ { c = 0 }
    /^  path:/ { v = $0; sub(/^  path: */, "", v); gsub(/"/, "", v); path = v }
    END { if (path != "") print path, content }
  ' /seed-user-data | while read -r path b64; do
    mkdir -p "$(dirname "$path")"
    echo "$b64" | base64 -d >"$path"
  done
fi
hostname "${name:-paddock-dev}"
ip link set lo up
if [ -n "$mtu" ]; then ip link set eth0 mtu "$mtu"; fi
ip link set eth0 up
if [ -n "$ip_addr" ]; then ip addr add "$ip_addr" dev eth0; fi
if [ -n "$gw" ]; then ip route add default via "$gw" 2>/dev/null; fi
echo "paddock-dev: $(hostname) eth0 ${ip_addr:-unconfigured}" >/dev/console
# Test services: TCP 7000 answers with the hostname.
(while true; do nc -l -p 7000 -e /bin/hostname; done) >/dev/null 2>&1 &
# Ingress stand-in: HTTP on the ingress node port names this VM.
mkdir -p /www && echo "paddock-dev ingress: $(hostname)" >/www/index.html
httpd -p 30080 -h /www
# API server stand-in (fake-kube-apiserver, not Kubernetes): TLS on 6443 with
# the certificate Paddock issued to this node.
if [ -f /etc/kubernetes/pki/apiserver.crt ]; then
  (while true; do
    openssl s_server -quiet -www -accept 6443 \
      -cert /etc/kubernetes/pki/apiserver.crt -key /etc/kubernetes/pki/apiserver.key
    sleep 1
  done) >/dev/null 2>&1 &
  echo "paddock-dev: fake-kube-apiserver on :6443" >/dev/console
fi
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
  (while true; do /usr/sbin/qemu-ga -m virtio-serial -t /run -p "/dev/$(basename "$p")"; sleep 1; done) &
done
echo "paddock-dev: ready" >/dev/console
while true; do sleep 3600; done
INIT
chmod +x "$root/init"

mkdir -p "$out"
cp "$work/pkgs/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -6) >"$out/initrd.img.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
(cd "$out" && sha256sum vmlinuz initrd.img >SHA256SUMS)
echo "$stamp" >"$out/STAMP"
echo "$out"
