#!/usr/bin/env bash
# Installs the browser tests' Node packages (playwright-core, which drives
# Debian's Chromium, and axe-core) at the versions of the checked-in lock
# file, from npm. Cached: a second run with the same lock file takes a
# moment. Usage: scripts/node-tools.sh DIR   (prints DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: node-tools.sh DIR}
src=crates/paddock/tests/console
stamp="$dir/LOCK.sha256"
want=$(sha256sum "$src/package-lock.json" | cut -d' ' -f1)
if [ -d "$dir/node_modules/playwright-core" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$dir"
  exit 0
fi
rm -rf "$dir"
mkdir -p "$dir"
cp "$src/package.json" "$src/package-lock.json" "$dir/"
# No install scripts: playwright-core would not download a browser anyway,
# and the tests use Debian's chromium.
(cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
echo "$want" >"$stamp"
echo "$dir"
