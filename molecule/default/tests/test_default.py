"""Verify the default scenario: one proxy in front of two demo backends.

Commands run in the containers through testinfra's docker backend; client traffic
goes from fpa-backend1 to the proxy's address on the scenario network, so it crosses
a real network and the proxy's listener on *:80.
"""

import hashlib
import json
import os
import re
import subprocess
import time

import pytest
import testinfra
import yaml

SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIR = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.path.dirname(os.path.dirname(SCENARIO_DIR)))
NET = os.environ.get("FLEETPROXY_MOLECULE_NET", "198.18.211")
PROXY_URL = f"http://{NET}.10/"
CONFIG = "/etc/fleetproxy/fleetproxy.yml"
FLEETPROXY = "/opt/fleetproxy/venv/bin/fleetproxy"
CAP_NET_BIND_SERVICE = 1 << 10

# Sends N requests, each on a new connection, bounded by a per-request timeout, and
# prints how many each backend answered (from the X-Served-By header) and the failures.
CLIENT = r"""
import collections, http.client, json, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1]); n = int(sys.argv[2])
seen = collections.Counter(); failures = []
for _ in range(n):
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse(); resp.read()
        if resp.status == 200:
            seen[resp.getheader("X-Served-By") or "?"] += 1
        else:
            failures.append(resp.status)
    except OSError as exc:
        failures.append(repr(exc))
    finally:
        conn.close()
print(json.dumps({"seen": seen, "failures": failures}))
"""


@pytest.fixture(scope="module")
def proxy():
    return testinfra.get_host("docker://fpa-proxy1")


@pytest.fixture(scope="module")
def client():
    return testinfra.get_host("docker://fpa-backend1")


def send_requests(client, count):
    out = client.check_output("python3 -c %s %s %s", CLIENT, PROXY_URL, str(count))
    return json.loads(out)


def inventory_vars(host):
    """The host's variables as the molecule inventory defines them."""
    out = subprocess.run(
        ["ansible-inventory", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--host", host],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def run_site(*extra_args):
    """Run the site playbook against the proxy; returns (returncode, plain output)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", "fpa-proxy1",
         *extra_args, os.path.join(PROJECT_DIR, "playbooks", "site.yml")],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )
    return run.returncode, run.stdout + run.stderr


def handler_result(output, name):
    """'changed', 'ok' or 'skipping' for a handler that ran, None if it was not notified."""
    match = re.search(
        r"RUNNING HANDLER \[fleetproxy\.fleet\.proxy : %s\][^\n]*\n(\w+): \[fpa-proxy1\]" % re.escape(name), output)
    return match.group(1) if match else None


def main_pid(proxy):
    return int(proxy.check_output("systemctl show -p MainPID --value fleetproxy"))


def test_service_runs_under_systemd(proxy):
    service = proxy.service("fleetproxy")
    assert service.is_running
    assert service.is_enabled
    props = dict(
        line.split("=", 1)
        for line in proxy.check_output(
            "systemctl show -p Type -p User -p NoNewPrivileges -p ProtectSystem -p LimitNOFILE fleetproxy"
        ).splitlines()
    )
    assert props == {
        "Type": "notify",
        "User": "fleetproxy",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "LimitNOFILE": str(2000 * 2 + 1024),
    }


def test_process_has_only_net_bind_service(proxy):
    pid = main_pid(proxy)
    assert pid > 0
    status = dict(
        line.split(":", 1) for line in proxy.file(f"/proc/{pid}/status").content_string.splitlines() if ":" in line
    )
    assert status["Uid"].split()[0] == str(proxy.user("fleetproxy").uid)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field].strip(), 16) == CAP_NET_BIND_SERVICE, field


def test_rendered_config_passes_check(proxy):
    config = proxy.file(CONFIG)
    assert config.user == "root"
    assert config.group == "fleetproxy"
    assert config.mode == 0o640
    result = proxy.run("%s check -c %s", FLEETPROXY, CONFIG)
    assert result.rc == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_config_is_the_inventory_one_to_one(proxy):
    rendered = yaml.safe_load(proxy.file(CONFIG).content_string)
    hostvars = inventory_vars("fpa-proxy1")
    assert rendered == {
        "global": hostvars["fleetproxy_global"],
        "defaults": hostvars["fleetproxy_defaults"],
        "frontends": hostvars["fleetproxy_frontends"],
        "backends": hostvars["fleetproxy_backends"],
    }


def test_nonlocal_bind_is_set(proxy):
    assert proxy.file("/etc/sysctl.d/60-fleetproxy.conf").contains("^net.ipv4.ip_nonlocal_bind = 1$")
    assert proxy.file("/proc/sys/net/ipv4/ip_nonlocal_bind").content_string.strip() == "1"


def test_traffic_reaches_both_backends_by_weight(client):
    # server1 has weight 3, server2 weight 1: 80 requests give 60 and 20 with a smooth
    # weighted round robin; allow a little slack for a health check settling.
    result = send_requests(client, 80)
    assert result["failures"] == []
    seen = result["seen"]
    assert set(seen) == {"server1", "server2"}
    assert sum(seen.values()) == 80
    assert 54 <= seen["server1"] <= 66, seen


def test_broken_variable_fails_at_validation_and_keeps_the_proxy(proxy, client, tmp_path):
    before_sha = hashlib.sha256(proxy.file(CONFIG).content).hexdigest()
    before_pid = main_pid(proxy)
    broken = tmp_path / "broken.json"
    frontends = inventory_vars("fpa-proxy1")["fleetproxy_frontends"]
    frontends[0]["default_backend"] = "missing_back"
    broken.write_text(json.dumps({"fleetproxy_frontends": frontends}))

    returncode, output = run_site("-e", f"@{broken}")
    assert returncode != 0, output
    fatal = output.index("fatal: [fpa-proxy1]")
    failed_task = output.rindex("TASK [", 0, fatal)
    assert output.startswith("TASK [fleetproxy.fleet.proxy : Render /etc/fleetproxy/fleetproxy.yml]", failed_task), output
    assert "failed to validate" in output
    assert "frontends[0].default_backend: no backend named 'missing_back'" in output

    assert hashlib.sha256(proxy.file(CONFIG).content).hexdigest() == before_sha
    assert proxy.service("fleetproxy").is_running
    assert main_pid(proxy) == before_pid
    result = send_requests(client, 8)
    assert result["failures"] == []
    assert sum(result["seen"].values()) == 8


def test_config_and_unit_change_restarts_once_without_reload(proxy, client):
    """A maxconn change alters the configuration (reload) and LimitNOFILE (restart):
    only the restart runs. The inventory's values are put back afterwards."""
    before_pid = main_pid(proxy)
    changed = json.dumps({"fleetproxy_global": {"maxconn": 2100, "log": {"access": "stdout"}}})
    try:
        returncode, output = run_site("-e", changed)
        assert returncode == 0, output
        assert handler_result(output, "Restart fleetproxy") == "changed", output
        assert handler_result(output, "Reload fleetproxy") == "skipping", output
        assert proxy.check_output("systemctl show -p LimitNOFILE --value fleetproxy") == str(2100 * 2 + 1024)
        assert main_pid(proxy) not in (0, before_pid)
        assert "maxconn: 2100" in proxy.file(CONFIG).content_string
    finally:
        returncode, output = run_site()
    assert returncode == 0, output
    assert handler_result(output, "Restart fleetproxy") == "changed", output
    assert proxy.check_output("systemctl show -p LimitNOFILE --value fleetproxy") == str(2000 * 2 + 1024)
    deadline = time.monotonic() + 10
    while not proxy.service("fleetproxy").is_running and time.monotonic() < deadline:
        time.sleep(0.5)
    result = send_requests(client, 8)
    assert result["failures"] == []
