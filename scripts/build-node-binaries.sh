#!/usr/bin/env bash
# Builds the static binaries of the Kubernetes node image from upstream Go
# modules, each at the version the node image's Kubernetes expects:
#   kube     kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#            kube-proxy, kubeadm and kubectl in one binary (images/kube), its
#            version stamped, with a symlink per component;
#   etcd     images/etcd (kubeadm's DefaultEtcdVersion);
#   coredns  images/coredns (kubeadm's CoreDNSVersion);
#   pause    images/pause, the pod sandbox;
#   podnet   images/podnet, the pod network (paddock-podnet on the node);
#   ocitool  images/ocitool, which writes container image archives.
# Needs Go and the Go module proxy. Each is cached by the hash of its inputs:
# a second run takes a second.
# The management plane's own etcd (`paddock server --store etcd`, the HA
# lab and its tests) is the same etcd binary.
# Usage: scripts/build-node-binaries.sh [OUT_DIR [NAME...]]   (default
# /var/cache/paddock/node-bin; with NAMEs, only those: `... etcd`)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/var/cache/paddock/node-bin}
shift || true
only=("$@")
# Whether binary $1 is asked for.
wanted() {
  [ ${#only[@]} -eq 0 ] && return 0
  local n
  for n in "${only[@]}"; do [ "$n" = "$1" ] && return 0; done
  return 1
}
command -v go >/dev/null || { echo "build-node-binaries: needs the Go toolchain" >&2; exit 1; }
mkdir -p "$out"
export CGO_ENABLED=0

# Builds module images/$1 (which builds upstream module $2) into $out/$1
# unless its inputs are unchanged.
build() {
  wanted "$1" || return 0
  local name=$1 upstream=$2 tags=$3 ldflags=$4 gowork=${5:-off} src=images/$1
  local inputs
  inputs=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go "$0" | sha256sum | cut -c1-16)
  if [ -x "$out/$name" ] && [ "$(cat "$out/.$name.inputs" 2>/dev/null)" = "$inputs" ]; then
    echo "build-node-binaries: $name cached"
    return
  fi
  local start
  start=$(date +%s)
  echo "build-node-binaries: building $name from $upstream $(awk -v m="$upstream" '{sub(/^require /, "")} $1 == m {print $2; exit}' "$src/go.mod") ..."
  (cd "$src" && GOWORK=$gowork go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$out/$name.new" .)
  mv "$out/$name.new" "$out/$name"
  echo "$inputs" >"$out/.$name.inputs"
  echo "build-node-binaries: $name built in $(( $(date +%s) - start ))s, $(du -h "$out/$name" | cut -f1)"
}

if wanted kube; then
k8s=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' images/kube/go.mod)
[ -n "$k8s" ] || { echo "build-node-binaries: no k8s.io/kubernetes version in images/kube/go.mod" >&2; exit 1; }
major=${k8s#v}; major=${major%%.*}
minor=${k8s#v*.}; minor=${minor%%.*}
# What upstream's hack/lib/version.sh stamps; kubeadm refuses an unstamped build.
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean"
  stamp+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# One change to upstream: kubeadm dials etcd with a fixed 2 s timeout
# (cmd/kubeadm/app/util/etcd/etcd.go, etcdTimeout, used with
# grpc.WithBlock and un-retried when a joining control plane promotes its
# member). Nothing configures it, and under TCG a TLS handshake with the
# first control plane's etcd takes longer, so every second control plane
# failed in etcd-join. 20 s is still far inside kubeadm's own retry
# windows (timeouts.etcdAPICall). Go refuses overlays of files in the
# module cache, so the build uses a copy of the module with that one line
# changed, through a workspace that replaces the module with the copy.
patched=$(mktemp -d)
trap 'chmod -R u+w "$patched"; rm -rf "$patched"' EXIT
k8s_dir=$(cd images/kube && go mod download -json "k8s.io/kubernetes@$k8s" | awk -F'"' '$2 == "Dir" {print $4}')
cp -r "$k8s_dir" "$patched/kubernetes"
chmod -R u+w "$patched/kubernetes"
etcd_go=$patched/kubernetes/cmd/kubeadm/app/util/etcd/etcd.go
grep -q '^const etcdTimeout = 2 \* time.Second$' "$etcd_go" ||
  { echo "build-node-binaries: $etcd_go no longer has the line this script changes" >&2; exit 1; }
sed -i 's/^const etcdTimeout = 2 \* time.Second$/const etcdTimeout = 20 * time.Second/' "$etcd_go"
printf 'go 1.26\n\nuse %s\n\nreplace k8s.io/kubernetes %s => %s\n' \
  "$PWD/images/kube" "$k8s" "$patched/kubernetes" >"$patched/go.work"
build kube k8s.io/kubernetes "providerless,selinux,notest" "$stamp" "$patched/go.work"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubeadm kubectl; do
  ln -sf kube "$out/$c"
done
fi
build etcd go.etcd.io/etcd/server/v3 "" ""
build coredns github.com/coredns/coredns "" ""
# The pod sandbox, and the tool that writes the images (build-node-images.sh).
build pause paddock.io/images/pause "" ""
build podnet k8s.io/client-go "" ""
build ocitool github.com/google/go-containerregistry "" ""
if wanted kube; then "$out/kubeadm" version -o short; fi
