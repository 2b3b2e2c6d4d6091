"""Verify the default scenario: one proxy in front of two demo backends, with HTTPS and a
virtual IP (fleetproxy vrrp, master alone).

Commands run in the containers through testinfra's docker backend; client traffic
goes from backend1 to the proxy's address on the scenario network, so it crosses
a real network and the proxy's listeners on *:80 and *:443.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
import testinfra
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tls_certs  # noqa: E402  (the scenario's certificate maker)

SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIR = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.path.dirname(os.path.dirname(SCENARIO_DIR)))
NET = os.environ.get("FLEETPROXY_MOLECULE_NET", "198.18.211")
PREFIX = os.environ.get("FLEETPROXY_MOLECULE_PREFIX", "fpa")
PROXY_HOST, CLIENT_HOST = f"{PREFIX}-proxy1", f"{PREFIX}-backend1"
PROXY_URL = f"http://{NET}.10/"
VIP = f"{NET}.100"
TLS_DIR = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"), "tls")
TLS_NAME = "proxy.molecule.test"
CAP_NET_ADMIN, CAP_NET_RAW = 1 << 12, 1 << 13
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


# GET on the admin API's UNIX socket; prints {"status": ..., "body": ...}.
ADMIN_GET = r"""
import http.client, json, socket
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.settimeout(5)
        self.sock.connect("/run/fleetproxy/admin.sock")
c = C("localhost"); c.request("GET", "%s"); r = c.getresponse()
print(json.dumps({"status": r.status, "body": json.loads(r.read() or b"null")}))
"""


@pytest.fixture(scope="module")
def proxy():
    return testinfra.get_host(f"docker://{PROXY_HOST}")


@pytest.fixture(scope="module")
def client():
    return testinfra.get_host(f"docker://{CLIENT_HOST}")


def send_requests(client, count):
    out = client.check_output("python3 -c %s %s %s", CLIENT, PROXY_URL, str(count))
    return json.loads(out)


def admin_get(proxy, path):
    out = proxy.check_output("%s -c %s", "/opt/fleetproxy/venv/bin/python", ADMIN_GET % path)
    return json.loads(out)


def servers_of(proxy, backend):
    answer = admin_get(proxy, f"/v1/backends/{backend}/servers")
    assert answer["status"] == 200, answer
    body = answer["body"]
    return {s["name"]: s for s in (body["servers"] if isinstance(body, dict) else body)}


def wait_until_healthy(proxy, backend="http_back", timeout=20.0):
    """After a start or restart, servers with checks are down until their first check."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            servers = servers_of(proxy, backend)
            if servers and all(s.get("health") == "up" for s in servers.values()):
                return servers
        except (AssertionError, ValueError, RuntimeError):
            servers = None
        if time.monotonic() > deadline:
            raise AssertionError(f"servers of {backend} not all up after {timeout}s: {servers}")
        time.sleep(0.5)


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
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", PROXY_HOST,
         *extra_args, os.path.join(PROJECT_DIR, "playbooks", "site.yml")],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )
    return run.returncode, run.stdout + run.stderr


def run_module(module, **args):
    """Run a module of the collection on the proxy; returns (status word, result)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(
        ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], PROXY_HOST, "-b", "-m", f"fleetproxy.fleet.{module}",
         "-a", json.dumps(args)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    # A failure is preceded by an "[ERROR]: Task failed: ..." summary: find the result line.
    match = re.search(r"^%s \| (\w+)[^{\n]*(\{.*\})\s*$" % re.escape(PROXY_HOST), run.stdout, re.S | re.M)
    assert match, run.stdout + run.stderr
    return match.group(1), json.loads(match.group(2))


def backend_server(**args):
    return run_module("backend_server", **args)


def handler_result(output, name):
    """'changed', 'ok' or 'skipping' for a handler that ran, None if it was not notified."""
    pattern = r"RUNNING HANDLER \[fleetproxy\.fleet\.proxy : %s\][^\n]*\n(\w+): \[%s\]"
    match = re.search(pattern % (re.escape(name), re.escape(PROXY_HOST)), output)
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
    hostvars = inventory_vars(PROXY_HOST)
    # The role adds the admin sockets and the state file, and on a host with a virtual
    # IP the soft-stop grace; the inventory sets no such key.
    role_global = {
        "admin": {"socket": "/run/fleetproxy/admin.sock", "runtime_socket": "/run/fleetproxy/runtime.sock"},
        "state_file": "/var/lib/fleetproxy/server-state.json",
    }
    if hostvars.get("fleetproxy_vip_addresses"):
        role_global["grace"] = "1s"
    assert not set(role_global) & set(hostvars["fleetproxy_global"])
    assert rendered == {
        "global": {**role_global, **hostvars["fleetproxy_global"]},
        "defaults": hostvars["fleetproxy_defaults"],
        "frontends": hostvars["fleetproxy_frontends"],
        "backends": hostvars["fleetproxy_backends"],
    }


def test_admin_api_answers_on_its_socket(proxy):
    sock = proxy.file("/run/fleetproxy/admin.sock")
    assert sock.is_socket
    assert sock.user == "fleetproxy"
    assert sock.mode == 0o660
    health = admin_get(proxy, "/v1/health")
    assert health["status"] == 200, health
    assert sorted(wait_until_healthy(proxy)) == ["server1", "server2"]


def test_nonlocal_bind_is_set(proxy):
    assert proxy.file("/etc/sysctl.d/60-fleetproxy.conf").contains("^net.ipv4.ip_nonlocal_bind = 1$")
    assert proxy.file("/proc/sys/net/ipv4/ip_nonlocal_bind").content_string.strip() == "1"


def test_traffic_reaches_both_backends_by_weight(proxy, client):
    # server1 has weight 3, server2 weight 1: 80 requests give 60 and 20 with a smooth
    # weighted round robin; a little slack all the same.
    wait_until_healthy(proxy)
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
    frontends = inventory_vars(PROXY_HOST)["fleetproxy_frontends"]
    frontends[0]["default_backend"] = "missing_back"
    broken.write_text(json.dumps({"fleetproxy_frontends": frontends}))

    returncode, output = run_site("-e", f"@{broken}")
    assert returncode != 0, output
    fatal = output.index(f"fatal: [{PROXY_HOST}]")
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
    wait_until_healthy(proxy)
    result = send_requests(client, 8)
    assert result["failures"] == []


def test_config_change_reloads_without_restart(proxy, client):
    """A weight change touches only the configuration: the reload handler runs, the
    master keeps its PID, and the new weights take effect. Put back afterwards."""
    before_pid = main_pid(proxy)
    backends = inventory_vars(PROXY_HOST)["fleetproxy_backends"]
    backends[0]["servers"][0]["weight"] = 1
    try:
        returncode, output = run_site("-e", json.dumps({"fleetproxy_backends": backends}))
        assert returncode == 0, output
        assert handler_result(output, "Reload fleetproxy") == "changed", output
        assert handler_result(output, "Restart fleetproxy") is None, output
        assert main_pid(proxy) == before_pid
        server1 = servers_of(proxy, "http_back")["server1"]
        assert (server1["config_weight"], server1["weight"]) == (1, 1), server1
        result = send_requests(client, 40)
        assert result["failures"] == []
        assert 17 <= result["seen"].get("server1", 0) <= 23, result
    finally:
        returncode, output = run_site()
    assert returncode == 0, output
    assert handler_result(output, "Reload fleetproxy") == "changed", output
    assert main_pid(proxy) == before_pid
    result = send_requests(client, 40)
    assert result["failures"] == []
    assert 27 <= result["seen"].get("server1", 0) <= 33, result


def test_backend_server_drain_and_ready_show_in_traffic(proxy, client):
    """The collection's backend_server module drains server1 (no new requests reach it,
    changed only the first time), then makes it ready again (the 3:1 split returns)."""
    wait_until_healthy(proxy)
    try:
        status, result = backend_server(backend="http_back", name="server1", state="drain", wait=True, wait_timeout=30)
        assert status == "CHANGED", result
        assert servers_of(proxy, "http_back")["server1"]["state"] == "drain"
        drained = send_requests(client, 20)
        assert drained["failures"] == []
        assert drained["seen"] == {"server2": 20}, drained

        status, result = backend_server(backend="http_back", name="server1", state="drain", wait=True, wait_timeout=30)
        assert status == "SUCCESS", result
        assert result["changed"] is False
    finally:
        status, result = backend_server(backend="http_back", name="server1", state="ready", wait=True, wait_timeout=30)
    assert status == "CHANGED", result
    assert servers_of(proxy, "http_back")["server1"]["state"] == "ready"
    ready = send_requests(client, 40)
    assert ready["failures"] == []
    assert 27 <= ready["seen"].get("server1", 0) <= 33, ready


# -- TLS: certificates from the inventory, HTTPS through the proxy, reload on change --------

# N HTTPS requests to host:443 with SNI `name`, verified against the CA given as PEM text;
# prints the servers seen, the failures and the SHA-256 of each certificate presented.
HTTPS_CLIENT = r"""
import collections, hashlib, http.client, json, socket, ssl, sys
host, name, ca, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context(cadata=ca)
seen = collections.Counter(); failures = []; prints = set()
for _ in range(n):
    try:
        sock = ctx.wrap_socket(socket.create_connection((host, 443), timeout=5), server_hostname=name)
        prints.add(hashlib.sha256(sock.getpeercert(True)).hexdigest())
        conn = http.client.HTTPConnection(host, 443, timeout=5)
        conn.sock = sock
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse(); resp.read(); conn.close()
        if resp.status == 200:
            seen[resp.getheader("X-Served-By") or "?"] += 1
        else:
            failures.append(resp.status)
    except (OSError, ssl.SSLError) as exc:
        failures.append(repr(exc))
print(json.dumps({"seen": seen, "failures": failures, "fingerprints": sorted(prints)}))
"""


def https_requests(client, count, host=None, name=TLS_NAME):
    with open(os.path.join(TLS_DIR, "ca.pem")) as fh:
        ca = fh.read()
    out = client.check_output("python3 -c %s %s %s %s %s", HTTPS_CLIENT, host or f"{NET}.10", name, ca, str(count))
    return json.loads(out)


def fingerprint(pem_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    with open(pem_path, "rb") as fh:
        return x509.load_pem_x509_certificates(fh.read())[0].fingerprint(hashes.SHA256()).hex()


def test_certificate_is_installed_for_the_service_user_only(proxy):
    cert = proxy.file("/etc/fleetproxy/certs/molecule.pem")
    assert (cert.user, cert.group, cert.mode) == ("fleetproxy", "fleetproxy", 0o600)
    directory = proxy.file("/etc/fleetproxy/certs")
    assert (directory.user, directory.group, directory.mode) == ("root", "fleetproxy", 0o750)
    content = cert.content_string
    # The chain (server certificate, CA), then the key from key_src: one file.
    assert content.count("BEGIN CERTIFICATE") == 2 and content.index("PRIVATE KEY") > content.rindex("END CERTIFICATE")


def test_https_through_the_proxy(proxy, client):
    wait_until_healthy(proxy)
    result = https_requests(client, 20)
    assert result["failures"] == []
    assert sum(result["seen"].values()) == 20 and set(result["seen"]) == {"server1", "server2"}
    assert result["fingerprints"] == [fingerprint(os.path.join(TLS_DIR, "server.pem"))]


def test_certificate_change_reloads_without_restart(proxy, client):
    """A renewed certificate (same file name) reloads fleetproxy: same master PID, new
    handshakes present the new certificate. The inventory's is put back afterwards."""
    renewed = tls_certs.server(TLS_DIR, "renewed", [TLS_NAME, f"{NET}.10", VIP])
    before_pid = main_pid(proxy)
    certs = [{"name": "molecule.pem", "src": os.path.join(TLS_DIR, "renewed.pem"),
              "key_src": os.path.join(TLS_DIR, "renewed.key")}]
    try:
        returncode, output = run_site("-e", json.dumps({"fleetproxy_certificates": certs}))
        assert returncode == 0, output
        assert handler_result(output, "Reload fleetproxy") == "changed", output
        assert handler_result(output, "Restart fleetproxy") is None, output
        assert "BEGIN" not in output  # no_log: no key material in the output
        assert main_pid(proxy) == before_pid
        result = https_requests(client, 6)
        assert result["failures"] == [] and result["fingerprints"] == [renewed], result
    finally:
        returncode, output = run_site()
    assert returncode == 0, output
    assert handler_result(output, "Reload fleetproxy") == "changed", output
    assert main_pid(proxy) == before_pid
    assert https_requests(client, 2)["fingerprints"] == [fingerprint(os.path.join(TLS_DIR, "server.pem"))]


def test_unusable_certificate_fails_and_changes_nothing(proxy, client):
    tls_certs.server(TLS_DIR, "mismatched", [TLS_NAME], mismatched_key=True)
    path = "/etc/fleetproxy/certs/molecule.pem"
    before_sha = hashlib.sha256(proxy.file(path).content).hexdigest()
    before_pid = main_pid(proxy)
    certs = [{"name": "molecule.pem", "src": os.path.join(TLS_DIR, "mismatched.pem"),
              "key_src": os.path.join(TLS_DIR, "mismatched.key")}]
    returncode, output = run_site("-e", json.dumps({"fleetproxy_certificates": certs}))
    assert returncode != 0, output
    assert "molecule.pem: the private key does not match the certificate" in output, output
    assert "BEGIN" not in output
    assert handler_result(output, "Reload fleetproxy") is None, output
    assert hashlib.sha256(proxy.file(path).content).hexdigest() == before_sha
    assert main_pid(proxy) == before_pid
    result = https_requests(client, 4)
    assert result["failures"] == [] and result["fingerprints"] == [fingerprint(os.path.join(TLS_DIR, "server.pem"))]


# -- The virtual IP: fleetproxy vrrp deployed by the vip role (one node: master alone) ------

VRRP = "/opt/fleetproxy/venv/bin/fleetproxy vrrp"


def vrrp_status(proxy):
    doc = json.loads(proxy.check_output(f"{VRRP} status --json"))
    return doc["instances"][0]


def wait_vrrp(proxy, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            st = vrrp_status(proxy)
        except (AssertionError, ValueError, RuntimeError):
            st = None
        if st is not None and predicate(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"fleetproxy vrrp: condition not met within {timeout}s: {st}")
        time.sleep(0.2)


def has_vip(proxy):
    return f"inet {VIP}/24" in proxy.check_output("ip -4 addr show dev eth0")


def test_vrrp_runs_hardened_with_two_capabilities(proxy):
    service = proxy.service("fleetproxy-vrrp")
    assert service.is_running and service.is_enabled
    props = dict(line.split("=", 1) for line in proxy.check_output(
        "systemctl show -p User -p NoNewPrivileges -p ProtectSystem -p RuntimeDirectory fleetproxy-vrrp").splitlines())
    assert props == {"User": "fleetproxy-vrrp", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                     "RuntimeDirectory": "fleetproxy-vrrp"}
    pid = int(proxy.check_output("systemctl show -p MainPID --value fleetproxy-vrrp"))
    status = dict(line.split(":", 1) for line in proxy.file(f"/proc/{pid}/status").content_string.splitlines()
                  if ":" in line)
    assert status["Uid"].split()[0] == str(proxy.user("fleetproxy-vrrp").uid)
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[field].strip(), 16) == CAP_NET_ADMIN | CAP_NET_RAW, field
    # In the proxy's group: the admin socket (0660) is reachable for tracking.
    assert "fleetproxy" in proxy.user("fleetproxy-vrrp").groups
    result = proxy.run(f"{VRRP} check -c /etc/fleetproxy/vrrp.yml")
    assert result.rc == 0, result.stderr
    sock = proxy.file("/run/fleetproxy-vrrp/vrrp.sock")
    assert sock.is_socket and sock.mode == 0o666


def test_vip_is_held_and_serves(proxy, client):
    st = wait_vrrp(proxy, lambda s: s["state"] == "MASTER")
    assert st["vips_held"] and st["vrid"] == 61 and st["priority"] == 150  # first of the group
    assert st["track"] == [{"kind": "proxy", "target": "/run/fleetproxy/admin.sock", "weight": 0,
                            "healthy": True, "detail": "status 200"}]
    assert has_vip(proxy)
    wait_until_healthy(proxy)
    result = json.loads(client.check_output("python3 -c %s %s %s", CLIENT, f"http://{VIP}/", "10"))
    assert result["failures"] == [] and sum(result["seen"].values()) == 10
    https = https_requests(client, 2, host=VIP)
    assert https["failures"] == []


def test_vrrp_follows_the_proxy(proxy):
    """The proxy stopped: tracking (200 ms, fall 2) puts the instance in FAULT and the VIP
    goes; the proxy back: MASTER again."""
    try:
        proxy.check_output("systemctl stop fleetproxy")
        st = wait_vrrp(proxy, lambda s: s["state"] == "FAULT", timeout=5)
        assert "track proxy /run/fleetproxy/admin.sock down" in st["reason"]
        assert not has_vip(proxy)
    finally:
        proxy.check_output("systemctl start fleetproxy")
    wait_vrrp(proxy, lambda s: s["state"] == "MASTER", timeout=10)
    assert has_vip(proxy)
    wait_until_healthy(proxy)


def test_vrrp_state_without_a_peer_rolls_back(proxy):
    status, result = run_module("vrrp_state", state="maintenance", wait_timeout=2)
    assert status == "FAILED", result
    assert "no peer took over the virtual IPs within 2s" in result["msg"]
    assert "Maintenance was switched off again for vip" in result["msg"]
    wait_vrrp(proxy, lambda s: s["state"] == "MASTER" and not s["maintenance"], timeout=10)
    assert has_vip(proxy)


def test_maintenance_survives_a_restart_of_the_daemon(proxy, client):
    try:
        status, result = run_module("vrrp_state", state="maintenance", wait=False)
        assert status == "CHANGED", result
        st = wait_vrrp(proxy, lambda s: s["state"] == "MAINT", timeout=5)
        assert not st["vips_held"] and not has_vip(proxy)
        proxy.check_output("systemctl restart fleetproxy-vrrp")
        st = wait_vrrp(proxy, lambda s: s["state"] == "MAINT", timeout=10)
        assert "kept in the state file" in st["reason"]
        time.sleep(1.0)  # ten advert intervals: still out
        assert vrrp_status(proxy)["state"] == "MAINT" and not has_vip(proxy)
        assert json.loads(proxy.file("/var/lib/fleetproxy-vrrp/state.json").content_string) == {"maintenance": ["vip"]}
    finally:
        status, result = run_module("vrrp_state", state="active", wait_master=True, wait_timeout=20)
    assert status == "CHANGED", result
    assert result["instances"][0]["state"] == "MASTER" and has_vip(proxy)
    out = json.loads(client.check_output("python3 -c %s %s %s", CLIENT, f"http://{VIP}/", "4"))
    assert out["failures"] == []
