#!/usr/bin/env bash
# Installs, from Debian's packages, what Paddock and its tests need on this
# machine. Idempotent; asks nothing. Usage: scripts/deps.sh [runtime|test]
set -euo pipefail

# QEMU and the networking tools for hosts; curl/openssl for the tests and
# the quick start; the dev image's build tools, and for the Kubernetes node
# image: iptables (which kube-proxy's image carries) and containerd (which
# fills the image's container store at build time).
# protoc for the etcd client's generated gRPC code (a build step of paddock).
want=(curl openssl ca-certificates iproute2 nftables iptables containerd qemu-system-x86 qemu-utils busybox-static cpio kmod gzip protobuf-compiler)
# The tests also run the real validators and peers: cloud-init (schema of
# the user-data Paddock renders), HAProxy (the external load balancer in
# front of the ingress ports), debootstrap (the Debian node image), Python
# with venv (the official Kubernetes client and the OpenAPI checkers, from
# PyPI: scripts/python-tools.sh), and ipmitool (the reference IPMI client
# the IPMI driver is checked against), iPXE (the binaries the TFTP
# service hands to PXE ROMs, and QEMU's NIC ROMs that netboot the lab's
# machines), ISC's dhclient (a real client of the DHCP service), and
# Chromium and Firefox ESR with Node.js and npm (the web console's browser
# tests: Playwright, Puppeteer and axe-core from npm, scripts/node-tools.sh),
# and Prometheus with promtool (the shipped rules and configuration, checked
# and run against the lab; the package's own service is not wanted).
if [ "${1:-runtime}" = test ]; then
  want+=(cloud-init haproxy debootstrap e2fsprogs python3 python3-venv ipmitool ipxe ipxe-qemu isc-dhcp-client chromium firefox-esr prometheus)
  # A Node.js from elsewhere (NodeSource's carries its own npm) is kept.
  if ! command -v node >/dev/null; then
    want+=(nodejs npm)
  elif ! command -v npm >/dev/null; then
    want+=(npm)
  fi
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Installing bookworm's qemu-system-x86 removes a backported qemu-utils:
# install bookworm's qemu-utils with it.
case " ${missing[*]} " in
  *" qemu-system-x86 "*) case " ${missing[*]} " in *" qemu-utils "*) ;; *) missing+=(qemu-utils) ;; esac ;;
esac
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # qemu-utils from bookworm itself: a newer backport may be installed, and
  # it cannot live beside bookworm's qemu-system-x86.
  args=()
  for p in "${missing[@]}"; do
    case "$p" in
      qemu-utils) args+=("qemu-utils/bookworm") ;;
      *) args+=("$p") ;;
    esac
  done
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${args[@]}" >/dev/null
fi
case " ${missing[*]} " in
  *" prometheus "*)
    if command -v systemctl >/dev/null; then
      systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
    ;;
esac
for cmd in qemu-system-x86_64 qemu-img ip nft protoc; do
  command -v "$cmd" >/dev/null || { echo "deps: $cmd is missing after installing packages" >&2; exit 1; }
done

if [ "${1:-runtime}" = test ] && ! command -v kubectl >/dev/null; then
  echo "deps: the tests drive the real kubectl, which Debian 12 does not package;" >&2
  echo "      install it from https://kubernetes.io/docs/tasks/tools/ and run again" >&2
  exit 1
fi
