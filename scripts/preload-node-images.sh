#!/usr/bin/env bash
# Loads the node images' container images (scripts/build-node-images.sh)
# into containerd's store inside a root file system being built, with this
# machine's containerd (Debian's, the one the node runs): the node boots
# with them unpacked and never imports or pulls — under TCG an import at
# first boot takes minutes.
# Usage: scripts/preload-node-images.sh ROOT   (images from PADDOCK_NODE_IMAGES)
set -euo pipefail
root=$1
images=${PADDOCK_NODE_IMAGES:-/var/cache/paddock/node-images}
command -v containerd >/dev/null || { echo "preload-node-images: needs containerd (scripts/deps.sh test installs it)" >&2; exit 1; }
run=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$run"' EXIT
cat >"$run/config.toml" <<TOML
version = 2
root = "$root/var/lib/containerd"
state = "$run/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$run/containerd.sock"
TOML
containerd --config "$run/config.toml" >"$run/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$run/containerd.sock" ] && break; sleep 0.1; done
[ -S "$run/containerd.sock" ] || { cat "$run/containerd.log" >&2; exit 1; }
for f in "$images"/*.tar; do
  ctr -a "$run/containerd.sock" -n k8s.io images import "$f" >/dev/null
done
ctr -a "$run/containerd.sock" -n k8s.io images ls -q
