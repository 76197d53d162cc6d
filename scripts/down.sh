#!/usr/bin/env bash
# Stops what scripts/up.sh started and removes its state. Idempotent.
set -euo pipefail
data=${PADDOCK_DATA_DIR:-/var/tmp/paddock-dev}
if [ -f "$data/server.pid" ]; then
  pid=$(cat "$data/server.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
fi
rm -rf "$data"
echo "paddock dev state removed"
