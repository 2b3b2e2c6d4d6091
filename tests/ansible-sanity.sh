#!/usr/bin/env bash
# ansible-test sanity for the collection, on machines like the project's CI.
#
# ansible-test needs the collection at a path ending in ansible_collections/NS/NAME:
# this script hard-links every file git knows (tracked, or new and not ignored) into
# build/sanity/ansible_collections/fleetproxy/fleet, makes that tree a git work tree
# of its own (so ansible-test lists exactly those files and ignores tests/output/),
# and runs ansible-test there. Arguments are passed on to `ansible-test sanity`.
#
# ansible-test also bootstraps pip in its virtualenvs with a script it downloads from
# a host these machines cannot reach, running pip with PIP_CONFIG_FILE=/dev/null (so
# pip loses the machine's CA setting). A stand-in bootstrap script is put in its cache:
# ensurepip, then pip with the system CA bundle.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
ansible_test="${ANSIBLE_TEST:-$root/.venv/bin/ansible-test}"
tree="$root/build/sanity/ansible_collections/fleetproxy/fleet"

rm -rf "$root/build/sanity"
mkdir -p "$tree"
cd "$root"
# proxy/ (the Python distribution the role installs) is checked by its own gates
# (ruff, pytest); its idioms (`_` as a throwaway name) trip ansible-test's pylint
# profile, whose disallowed-name cannot be ignored under ansible-lint's production
# profile. SANITY_INCLUDE_PROXY=1 includes it anyway.
files() {
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' path; do
            if [ -f "$path" ] && { [ "${SANITY_INCLUDE_PROXY:-0}" = 1 ] || [ "${path#proxy/}" = "$path" ]; }; then
                printf '%s\0' "$path"
            fi
          done
}
files \
    | xargs -0 cp --parents --no-dereference --link --target-directory="$tree" 2>/dev/null \
    || { echo "hard links failed; copying instead" >&2
         files | xargs -0 cp --parents --no-dereference --target-directory="$tree"; }
git -C "$tree" init -q

# The pip bootstrap stand-in, for the pip version this ansible-test wants.
pip_version="$("$root/.venv/bin/python" - <<'PY'
import pathlib, re, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
PY
)"
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
cat > "$cache/get_pip_${pip_version//./_}.py" <<'PY'
"""Stand-in for get-pip.py (written by fleetproxy's tests/ansible-sanity.sh).

Bootstraps pip with ensurepip, then runs `pip install` with the arguments
ansible-test gives get-pip.py, using the system CA bundle.
"""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
ca = "/etc/ssl/certs/ca-certificates.crt"
cert = ["--cert", ca] if os.path.exists(ca) else []
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + cert + args))
PY

# ansible-test runs the version-specific tests (compile, import) with every python3.X
# it finds on PATH. Offer only interpreters that run: a pyenv shim for a version that
# is installed but not selected exists on PATH yet fails with status 127.
bin="$root/build/sanity/bin"
mkdir -p "$bin"
path_without_shims="$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '/shims$' | paste -sd: -)"
for minor in 8 9 10 11 12 13 14; do
    for exe in $(PATH="$path_without_shims" command -v "python3.$minor" 2>/dev/null) \
               "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$minor".*/bin/python3."$minor"; do
        real="$("$exe" -c 'import sys; print(sys.executable)' 2>/dev/null || true)"
        if [ -n "$real" ]; then
            ln -sfn "$real" "$bin/python3.$minor"
            break
        fi
    done
done
echo "interpreters for ansible-test:" "$bin"/python3.* >&2

cd "$tree"
PATH="$bin:$path_without_shims" exec "$ansible_test" sanity --venv --color no "$@"
