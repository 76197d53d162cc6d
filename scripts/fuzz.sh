#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ a fixed number of times each, from
# an empty corpus: the DHCP server's parsing and answers, the TFTP server,
# and the IPMI driver against a fake BMC that answers with the input.
# Installs cargo-fuzz (from crates.io) into the cache the first time.
# Usage: scripts/fuzz.sh [RUNS]   (default $PADDOCK_FUZZ_RUNS or 20000; the
# socket-bound targets run a fraction of that)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-${PADDOCK_FUZZ_RUNS:-20000}}
tools=${PADDOCK_CACHE:-/var/cache/paddock}/cargo-fuzz
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install --locked --quiet cargo-fuzz@0.13.2 --root "$tools"
fi
export PATH=$tools/bin:$PATH
# No sanitizer: the targets are safe Rust, and libFuzzer finds what matters
# there (panics, hangs, runaway memory). Stable Rust then does, given
# RUSTC_BOOTSTRAP for the one unstable flag cargo-fuzz passes.
export RUSTC_BOOTSTRAP=1
export CARGO_INCREMENTAL=0
# Each target starts from the checked-in seeds (fuzz/seeds/<target>: well
# formed messages, so that mutations reach past the headers), copied into
# a scratch corpus.
for t in dhcp tftp ipmi; do
  case $t in
    dhcp) n=$runs ;;
    tftp | ipmi) n=$((runs / 4)) ;;
  esac
  corpus=fuzz/corpus/$t
  rm -rf "$corpus" && mkdir -p "$corpus"
  [ -d "fuzz/seeds/$t" ] && cp fuzz/seeds/"$t"/* "$corpus"/
  echo "fuzz: $t, $n runs"
  cargo fuzz run --sanitizer none "$t" "$corpus" -- -runs="$n" -max_len=1500 -len_control=0 \
    -timeout=10 -rss_limit_mb=2048 2>&1 | tail -n 3
done
