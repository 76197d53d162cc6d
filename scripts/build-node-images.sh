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
[ -x "$busybox" ] || { echo "build-node-images: needs $busybox (Debian's busybox-static; scripts/deps.sh installs it)" >&2; exit 1; }
inputs=$( (sha256sum "$bin"/kube "$bin"/etcd "$bin"/coredns "$bin"/pause "$bin"/ocitool "$busybox" "$0") | sha256sum | cut -c1-16)
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
n=0
while read -r ref; do
  [ -n "$ref" ] || continue
  base=${ref##*/}
  file="$out/${base%%:*}.tar"
  case "$base" in
    kube-apiserver:* | kube-controller-manager:* | kube-scheduler:* | kube-proxy:*)
      oci -o "$file" -ref "$ref" "${kube_layer[@]}" ;;
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
