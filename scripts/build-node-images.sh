#!/usr/bin/env bash
# Writes the container images a Kubernetes node needs, as archives that
# `ctr images import` loads, so that nothing is ever pulled: every image
# `kubeadm config images list` names for the node image's Kubernetes
# (control plane, etcd, CoreDNS, pause), plus a small workload image
# (paddock.local/busybox:1, Debian's busybox-static). Built from the
# binaries of scripts/build-node-binaries.sh; cached by their hashes.
# Usage: scripts/build-node-images.sh [BIN_DIR] [OUT_DIR]
#   (defaults /var/cache/paddock/node-bin and /var/cache/paddock/node-images)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-/var/cache/paddock/node-bin}
out=${2:-/var/cache/paddock/node-images}
busybox=/bin/busybox
[ -x "$bin/ocitool" ] || { echo "build-node-images: $bin/ocitool is missing: run scripts/build-node-binaries.sh" >&2; exit 1; }
xtables=/usr/sbin/xtables-nft-multi
[ -x "$xtables" ] || { echo "build-node-images: needs $xtables (Debian's iptables; scripts/deps.sh installs it)" >&2; exit 1; }
[ -x "$busybox" ] || { echo "build-node-images: needs $busybox (Debian's busybox-static; scripts/deps.sh installs it)" >&2; exit 1; }
inputs=$( (sha256sum "$bin"/kube "$bin"/etcd "$bin"/coredns "$bin"/pause "$bin"/ocitool "$busybox" "$xtables" "$0") | sha256sum | cut -c1-16)
if [ "$(cat "$out/.inputs" 2>/dev/null)" = "$inputs" ]; then
  echo "build-node-images: cached in $out"
  exit 0
fi
mkdir -p "$out"
rm -f "$out"/*.tar
oci() { "$bin/ocitool" "$@"; }
# One layer for every Kubernetes component image: the same digest, stored once.
kube_layer=(-file "/usr/local/bin/kube=$bin/kube")
for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl; do
  kube_layer+=(-link "/usr/local/bin/$c=kube")
done
# kube-proxy programs the node's packet filter through iptables (nft
# backend, as on the node): its image carries this machine's iptables, its
# extensions and the libraries they load.
proxy_layer=("${kube_layer[@]}")
xt_ext=/usr/lib/x86_64-linux-gnu/xtables
[ -d "$xt_ext" ] || { echo "build-node-images: no iptables extensions in $xt_ext" >&2; exit 1; }
for f in "$xtables" "$xt_ext"/*.so $(ldd "$xtables" "$xt_ext"/*.so | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\// && $i !~ /:$/) print $i}' | sort -u); do
  proxy_layer+=(-file "$f=$(readlink -f "$f")")
done
[ -f /etc/protocols ] && proxy_layer+=(-file "/etc/protocols=/etc/protocols")
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  proxy_layer+=(-link "/usr/sbin/$t=xtables-nft-multi")
done
n=0
while read -r ref; do
  [ -n "$ref" ] || continue
  base=${ref##*/}
  file="$out/${base%%:*}.tar"
  case "$base" in
    kube-apiserver:* | kube-controller-manager:* | kube-scheduler:*)
      oci -o "$file" -ref "$ref" "${kube_layer[@]}" ;;
    kube-proxy:*) oci -o "$file" -ref "$ref" -path /usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${proxy_layer[@]}" ;;
    etcd:*) oci -o "$file" -ref "$ref" -file "/usr/local/bin/etcd=$bin/etcd" ;;
    coredns:*) oci -o "$file" -ref "$ref" -entrypoint /coredns -file "/coredns=$bin/coredns" ;;
    pause:*) oci -o "$file" -ref "$ref" -entrypoint /pause -file "/pause=$bin/pause" ;;
    *) echo "build-node-images: no recipe for $ref" >&2; exit 1 ;;
  esac
  n=$((n + 1))
done < <("$bin/kubeadm" config images list --kubernetes-version "$("$bin/kubeadm" version -o short)")
applets=()
for a in $("$busybox" --list); do [ "$a" = busybox ] || applets+=(-link "/bin/$a=busybox"); done
oci -o "$out/busybox.tar" -ref paddock.local/busybox:1 -file "/bin/busybox=$busybox" "${applets[@]}"
echo "$inputs" >"$out/.inputs"
echo "build-node-images: $((n + 1)) images in $out ($(du -sh "$out" | cut -f1))"
