#!/usr/bin/env bash
# Removes what scripts/up.sh started. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release/paddock
[ -x "$bin" ] || cargo build --release --locked -q
"$bin" dev down --data-dir "${PADDOCK_DATA_DIR:-/var/lib/paddock-dev}"
