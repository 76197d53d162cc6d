#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs, then every unit,
# integration and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=2
