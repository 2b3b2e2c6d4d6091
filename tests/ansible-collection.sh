#!/usr/bin/env bash
# Build the collection tarball, check what it holds, install it into build/installed
# and use it by FQCN. `make molecule` then deploys from that installation.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.venv/bin"
cd "$root"

rm -rf build/dist build/installed
"$bin/ansible-galaxy" collection build --output-path build/dist >/dev/null
tarball="$(ls build/dist/fleetproxy-fleet-*.tar.gz)"
echo "built $tarball ($(du -k "$tarball" | cut -f1) KiB)"

listing="$(tar -tzf "$tarball")"
for wanted in MANIFEST.json meta/runtime.yml README.md changelogs/changelog.yaml \
              playbooks/site.yml playbooks/rolling_backend_change.yml playbooks/node_maintenance.yml \
              roles/proxy/tasks/main.yml roles/proxy/files/wheelhouse.py roles/vip/tasks/main.yml \
              plugins/modules/backend_server.py plugins/module_utils/proxy_admin.py \
              plugins/modules/vrrp_state.py plugins/module_utils/vrrp_control.py \
              proxy/pyproject.toml proxy/src/fleetproxy/cli.py proxy/src/fleetproxy/config.py; do
    grep -qx "$wanted" <<<"$listing" || { echo "missing from the tarball: $wanted" >&2; exit 1; }
done
if unwanted="$(grep -E '^(\.venv|\.git|\.ci|build|molecule|demo|inventories/demo|tests/output|proxy/bench|proxy/tests)(/|$)|__pycache__|\.pyc$|\.egg-info' <<<"$listing")"; then
    echo "development files in the tarball:" >&2
    echo "$unwanted" >&2
    exit 1
fi

"$bin/ansible-galaxy" collection install --offline -p build/installed "$tarball" >/dev/null
export ANSIBLE_COLLECTIONS_PATH="$root/build/installed"
test -f build/installed/ansible_collections/fleetproxy/fleet/proxy/src/fleetproxy/config.py
"$bin/ansible-doc" -t role fleetproxy.fleet.proxy >/dev/null
"$bin/ansible-doc" -t role fleetproxy.fleet.vip >/dev/null
"$bin/ansible-doc" fleetproxy.fleet.vrrp_state >/dev/null
for playbook in site rolling_backend_change node_maintenance; do
    "$bin/ansible-playbook" -i inventories/example --syntax-check "fleetproxy.fleet.$playbook"
done
# The role's argument validation fails on purpose in there: show the (long) output
# only when the playbook as a whole fails.
if ! out="$("$bin/ansible-playbook" -i localhost, tests/collection/fqcn.yml 2>&1)"; then
    echo "$out" >&2
    exit 1
fi
grep -A1 '^PLAY RECAP' <<<"$out"
