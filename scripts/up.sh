#!/usr/bin/env bash
# Brings up a management plane on this machine in the background and
# creates an organization and a cluster in it. Idempotent.
# State and logs: $PADDOCK_DATA_DIR (default /var/tmp/paddock-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh runtime
cargo build --release --locked -q
bin=$PWD/target/release/paddock
data=${PADDOCK_DATA_DIR:-/var/tmp/paddock-dev}
mkdir -p "$data"
export PADDOCK_KUBECONFIG=$data/admin.kubeconfig

if [ -f "$data/server.pid" ] && kill -0 "$(cat "$data/server.pid")" 2>/dev/null; then
  echo "paddock server already running (pid $(cat "$data/server.pid"))"
else
  nohup "$bin" server --data-dir "$data" >"$data/server.log" 2>&1 &
  echo $! >"$data/server.pid"
  for _ in $(seq 100); do
    "$bin" org list >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$bin" org list >/dev/null || { echo "server did not start; see $data/server.log" >&2; exit 1; }
  echo "paddock server started (pid $(cat "$data/server.pid")), log: $data/server.log"
fi

"$bin" org list | grep -qw acme || "$bin" org create acme
"$bin" cluster get demo -n acme >/dev/null 2>&1 || "$bin" cluster create demo -n acme --workers 2
"$bin" cluster list -A
cat <<TXT

Next:
  export KUBECONFIG=$data/admin.kubeconfig
  kubectl get clusters -A            # or: $bin cluster list -A
  $bin cluster scale demo -n acme --workers 3
  scripts/down.sh                    # stop the server and remove $data
TXT
