#!/usr/bin/env bash
# Brings up a whole Paddock lab on this machine — the management plane, three
# hosts (network namespaces, each with its agent) — and creates a Kubernetes
# cluster of real VMs on it: one control plane and two workers, booting the
# Kubernetes node image (built on the first run from Debian's packages and
# the upstream Go modules, cached after), made by kubeadm, reached through
# the gateway. Idempotent. Run as root.
#   PADDOCK_DEV_IMAGE_ONLY=1 scripts/up.sh   the dev image's stand-ins instead
#                                            (seconds, no Kubernetes)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh runtime
cargo build --release --locked -q
bin=$PWD/target/release/paddock
data=${PADDOCK_DATA_DIR:-/var/lib/paddock-dev}
cache=${PADDOCK_CACHE:-/var/cache/paddock}
export PADDOCK_KUBECONFIG=$data/server/admin.kubeconfig
if [ -n "${PADDOCK_DEV_IMAGE_ONLY:-}" ]; then
  "$bin" dev up --hosts 3 --data-dir "$data" >/dev/null
  create=(--kubernetes-version 1.31.2 --workers 2 --cpu 1 --memory 512Mi)
else
  echo "• Kubernetes node image (the first run builds it: about 15 minutes on 2 cores; cached after)"
  image=$(scripts/build-kube-node-image.sh "$cache/kube-node-image")
  "$bin" dev up --hosts 3 --data-dir "$data" --kube-image "$image" >/dev/null
  create=(--workers 2 --cpu 1 --memory 1536Mi --disk 8Gi)
fi
"$bin" org list | grep -qw acme || "$bin" org create acme
"$bin" cluster get demo -n acme >/dev/null 2>&1 || "$bin" cluster create demo -n acme "${create[@]}"
echo "• waiting for cluster demo (under TCG, software emulation, about 10 minutes)"
"$bin" cluster scale demo -n acme --workers 2 --wait --timeout 3600 >/dev/null
"$bin" cluster list -A
"$bin" machine list -A
"$bin" cluster kubeconfig demo -n acme --ttl 8h --group kubeadm:cluster-admins --output-file "$data/demo.kubeconfig"
if [ -n "${PADDOCK_DEV_IMAGE_ONLY:-}" ]; then
  echo "kubectl get --raw / through the gateway (the dev image answers with a stand-in API server):"
  kubectl --kubeconfig "$data/demo.kubeconfig" get --raw / | head -3
else
  echo "kubectl get nodes, through the gateway:"
  kubectl --kubeconfig "$data/demo.kubeconfig" get nodes -o wide
fi
cat <<TXT

The cluster runs as QEMU VMs on three hosts. Next:
  kubectl --kubeconfig $data/demo.kubeconfig get pods -A      # through the gateway
  curl http://127.0.0.1:20000/                                # ingress (node port 30080), via the gateway
  export KUBECONFIG=$data/server/admin.kubeconfig
  $bin cluster scale demo -n acme --workers 3 --wait
  $bin machine exec <machine> -n acme -- ip addr
  kubectl get clusters,machines,hosts,machineimages -A
  $bin dev down --data-dir $data      # removes all of it

The web console: https://127.0.0.1:6443/ (or https://api.paddock.local:16443/
through the gateway). Its CA is $data/server/pki/ca.crt; sign in with the
admin token in $data/server/admin.kubeconfig, or a tenant's:
  $bin add-user alice --org acme --data-dir $data/server   # prints alice's kubeconfig
TXT
