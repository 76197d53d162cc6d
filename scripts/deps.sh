#!/usr/bin/env bash
# Installs, from Debian's packages, what Paddock and its tests need on this
# machine. Idempotent; asks nothing. Usage: scripts/deps.sh [runtime|test]
set -euo pipefail

want=(curl openssl ca-certificates)

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-runtime}" = test ] && ! command -v kubectl >/dev/null; then
  echo "deps: the tests drive the real kubectl, which Debian 12 does not package;" >&2
  echo "      install it from https://kubernetes.io/docs/tasks/tools/ and run again" >&2
  exit 1
fi
