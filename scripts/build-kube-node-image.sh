#!/usr/bin/env bash
# Builds the Kubernetes node image: the Debian node image
# (scripts/build-debian-image.sh) plus containerd, runc and the CNI plugins
# from Debian, the Kubernetes components, etcd and CoreDNS built from
# upstream and the pod network (scripts/build-node-binaries.sh) and every container image they
# need (scripts/build-node-images.sh), already in containerd's store in the
# image (scripts/preload-node-images.sh): nothing is pulled or imported, at
# build time or at boot.
# Usage: scripts/build-kube-node-image.sh [OUT_DIR]   (default /var/cache/paddock/kube-node-image)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${PADDOCK_CACHE:-/var/cache/paddock}
out=${1:-$cache/kube-node-image}
bin=${PADDOCK_NODE_BIN:-$cache/node-bin}
images=${PADDOCK_NODE_IMAGES:-$cache/node-images}
scripts/build-node-binaries.sh "$bin" >&2
scripts/build-node-images.sh "$bin" "$images" >&2
version=$("$bin/kubeadm" version -o short)
files=images/kube-node

tree=$(mktemp -d "${TMPDIR:-/var/tmp}/paddock-kube-node.XXXXXX")
trap 'rm -rf "$tree"' EXIT
cp -a "$files/." "$tree/"
mkdir -p "$tree/usr/local/bin" "$tree/etc/paddock"
cp "$bin/kube" "$tree/usr/local/bin/kube"
cp "$bin/podnet" "$tree/usr/local/bin/paddock-podnet"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubeadm kubectl; do
  ln -s kube "$tree/usr/local/bin/$c"
done
# The container images go into containerd's store in the image
# (scripts/preload-node-images.sh, run on the finished tree); what they
# are made of is part of the image's cache stamp.
cp "$images/.inputs" "$tree/etc/paddock/images.inputs"
echo "$version" >"$tree/etc/paddock/kubernetes-version"
# containerd's sandbox image is the pause image kubeadm names.
pause=$("$bin/kubeadm" config images list --kubernetes-version "$version" | grep '/pause:')
sed -i "s|@PAUSE@|$pause|" "$tree/etc/containerd/config.toml"

PADDOCK_IMAGE_PACKAGES="containerd runc containernetworking-plugins conntrack iptables ethtool socat ebtables kmod" \
  PADDOCK_IMAGE_OVERLAY="$tree" PADDOCK_ROOTFS_SIZE=${PADDOCK_ROOTFS_SIZE:-8G} \
  PADDOCK_IMAGE_HOOK=$PWD/scripts/preload-node-images.sh PADDOCK_NODE_IMAGES="$images" \
  scripts/build-debian-image.sh "$out" >/dev/null
echo "$version" >"$out/KUBERNETES_VERSION"
echo "$out"
