#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs, builds the dev node
# image, then runs every unit, integration and end-to-end test (the
# end-to-end tests start real QEMU VMs in network namespaces: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
export PADDOCK_DEV_IMAGE=${PADDOCK_DEV_IMAGE:-/var/cache/paddock/dev-image}
scripts/build-dev-image.sh "$PADDOCK_DEV_IMAGE" >/dev/null
# The node image's Kubernetes, etcd and CoreDNS, built from upstream modules
# (about 9 minutes on 2 cores the first time, cached after), and the
# container images made of them. Its etcd is also the management plane's
# (the etcd store tests find it in PADDOCK_NODE_BIN).
export PADDOCK_NODE_BIN=${PADDOCK_NODE_BIN:-/var/cache/paddock/node-bin}
scripts/build-node-binaries.sh "$PADDOCK_NODE_BIN"
export PADDOCK_NODE_IMAGES=${PADDOCK_NODE_IMAGES:-/var/cache/paddock/node-images}
scripts/build-node-images.sh "$PADDOCK_NODE_BIN" "$PADDOCK_NODE_IMAGES"
# The pod network's own unit tests (images/podnet).
(cd images/podnet && go vet ./... && go test ./...)
# The Kubernetes node image the end-to-end test boots (a few minutes the
# first time, cached after).
export PADDOCK_KUBE_IMAGE=${PADDOCK_KUBE_IMAGE:-/var/cache/paddock/kube-node-image}
scripts/build-kube-node-image.sh "$PADDOCK_KUBE_IMAGE" >/dev/null
# The official Kubernetes Python client and the OpenAPI validator and
# fuzzer the API tests run.
export PADDOCK_PYTHON=${PADDOCK_PYTHON:-$(scripts/python-tools.sh /var/cache/paddock/python-tools)}
# The web console's browser tests: Playwright's driver and axe-core, from
# npm at the lock file's versions (they drive Debian's Chromium).
export PADDOCK_NODE_TOOLS=${PADDOCK_NODE_TOOLS:-$(scripts/node-tools.sh /var/cache/paddock/node-tools)}
# A clean checkout gains nothing from incremental artifacts; they would
# double the size of target/.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The root-only end-to-end tests and those that run the node image's
# kubeadm are behind features: a normal user's `cargo test --workspace`
# runs the rest.
features=(--features paddock/root-tests,paddock-net/root-tests,paddock-netboot/root-tests,paddock-bootstrap/kube-tests)
cargo build --workspace --all-targets --locked "${features[@]}"
cargo test --workspace --locked "${features[@]}" -- --test-threads=2
# The API suites again with the server's store on etcd (the node image's
# etcd, built above): the same tests, the other backend.
PADDOCK_TEST_STORE=etcd cargo test -p paddock --locked --features root-tests \
  --test api_conformance --test cli --test crash --test kube_client --test kubectl -- --test-threads=2
# The fuzz targets (fuzz/): DHCP, TFTP and IPMI parsing, a fixed number
# of runs each from an empty corpus.
scripts/fuzz.sh
