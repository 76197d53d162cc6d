#!/usr/bin/env bash
# Makes a Python environment with the clients and checkers the API tests
# run against the server (none of them written here): the official
# Kubernetes client, an OpenAPI validator and a schema-driven fuzzer; and
# the independent BMCs the BMC drivers are tested against (sushy-tools'
# Redfish emulator, pyghmi's IPMI BMC), at pinned versions from PyPI. Cached: a second run with the same pins takes
# a moment. Usage: scripts/python-tools.sh DIR   (prints DIR/bin/python)
set -euo pipefail
dir=${1:?usage: python-tools.sh DIR}
pins=(kubernetes==37.0.2 openapi-spec-validator==0.9.0 schemathesis==4.32.5 sushy-tools==2.2.0 pyghmi==1.6.19)
stamp="$dir/PINS"
if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${pins[*]}" ]; then
  echo "$dir/bin/python"
  exit 0
fi
rm -rf "$dir"
# Debian's own Python (python3-venv comes with scripts/deps.sh test).
/usr/bin/python3 -m venv "$dir" >&2
"$dir/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" >&2
echo "${pins[*]}" >"$stamp"
echo "$dir/bin/python"
