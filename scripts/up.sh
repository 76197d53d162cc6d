#!/usr/bin/env bash
# Brings up a whole Paddock lab on this machine — the management plane, three
# hosts (network namespaces, each with its agent) and the dev node image —
# and creates a cluster of real VMs on it. Idempotent. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh runtime
cargo build --release --locked -q
bin=$PWD/target/release/paddock
data=${PADDOCK_DATA_DIR:-/var/lib/paddock-dev}
"$bin" dev up --hosts 3 --data-dir "$data" >/dev/null
export PADDOCK_KUBECONFIG=$data/server/admin.kubeconfig
"$bin" org list | grep -qw acme || "$bin" org create acme
"$bin" cluster get demo -n acme >/dev/null 2>&1 || "$bin" cluster create demo -n acme --workers 2 --cpu 1 --memory 512Mi
"$bin" cluster scale demo -n acme --workers 2 --wait --timeout 600 >/dev/null
"$bin" cluster list -A
"$bin" machine list -A
cat <<TXT

The cluster runs as QEMU VMs on three hosts. Next:
  export KUBECONFIG=$data/server/admin.kubeconfig
  $bin cluster scale demo -n acme --workers 3 --wait
  $bin machine exec <machine> -n acme -- ip addr
  kubectl get clusters,machines,hosts -A
  $bin dev down --data-dir $data      # removes all of it
TXT
