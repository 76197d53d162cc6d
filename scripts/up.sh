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
# A kubeconfig for the cluster, and its API reached through the gateway by
# name (the dev image answers with a stand-in API server on 6443).
"$bin" cluster kubeconfig demo -n acme --ttl 8h --output-file "$data/demo.kubeconfig"
grep certificate-authority-data "$data/demo.kubeconfig" | awk '{print $2}' | base64 -d >"$data/demo-ca.crt"
echo "GET https://demo.acme.paddock.local:16443/ through the gateway, verified with the cluster CA:"
curl -sS --retry 5 --retry-all-errors --cacert "$data/demo-ca.crt" \
  --resolve demo.acme.paddock.local:16443:127.0.0.1 -o /dev/null \
  -w '  HTTP %{http_code}, certificate verified for demo.acme.paddock.local\n' \
  https://demo.acme.paddock.local:16443/
# The gateway's health checks of the workers' ingress take a moment (the
# dev image answers HTTP on 30080 only, so HTTPS backends show DOWN).
for _ in $(seq 30); do
  "$bin" cluster ingress demo -n acme | awk '$1 == "http"' | grep -q DOWN || break
  sleep 1
done
"$bin" cluster ingress demo -n acme
cat <<TXT

The cluster runs as QEMU VMs on three hosts. Next:
  kubectl --kubeconfig $data/demo.kubeconfig get --raw /     # through the gateway
  curl http://127.0.0.1:20000/                                # ingress, via the gateway
  export KUBECONFIG=$data/server/admin.kubeconfig
  $bin cluster scale demo -n acme --workers 3 --wait
  $bin machine exec <machine> -n acme -- ip addr
  kubectl get clusters,machines,hosts -A
  $bin dev down --data-dir $data      # removes all of it
TXT
