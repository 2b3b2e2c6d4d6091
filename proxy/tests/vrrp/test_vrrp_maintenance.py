"""Maintenance (``fleetproxy vrrp maintenance on|off``) and the control socket.

The protocol core's rows are in test_vrrp_state.py; here: the control socket's HTTP
and its authorisation (no root needed), the state file, and on real namespaces (root)
that a master put in maintenance hands the VIP over within Skew_Time, stays out until
released, also across a restart, and comes back by preemption.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import pytest

from fleetproxy.vrrp import control
from fleetproxy.vrrp.config import loads
from fleetproxy.vrrp.daemon import Daemon, InstanceRunner
from fleetproxy.vrrp.state import master_down_interval_cs, skew_time_cs

VIP = "198.18.51.100"
INTERVAL_CS = 10


def mdi(priority: int) -> float:
    return float(master_down_interval_cs(priority, INTERVAL_CS) / 100)


def skew(priority: int) -> float:
    return float(Fraction(skew_time_cs(priority, INTERVAL_CS)) / 100)


def cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "fleetproxy", "vrrp", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


# --------------------------------------------------------------------------
# The control socket, without a network (a fake daemon behind it)
# --------------------------------------------------------------------------


class FakeDaemon:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail: Exception | None = None

    def status(self) -> dict:
        return {"pid": 1, "instances": [{"name": "vip", "maintenance": False}]}

    def set_maintenance(self, on: bool, names, who: str) -> list[str]:
        self.calls.append((on, names, who))
        if self.fail is not None:
            raise self.fail
        if names and names != ["vip"]:
            raise KeyError(names[0])
        return ["vip"]


@pytest.fixture
def served():
    """A ControlServer for a FakeDaemon on a UNIX socket, in a loop thread."""
    import threading

    fake = FakeDaemon()
    d = tempfile.mkdtemp(prefix="fpv2-ctl-")
    path = os.path.join(d, "vrrp.sock")
    loop = asyncio.new_event_loop()
    srv = control.ControlServer(fake.status, fake.set_maintenance)
    server = loop.run_until_complete(asyncio.start_unix_server(srv.handle, path=path))
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    fake.path = path
    yield fake
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    os.unlink(path)
    os.rmdir(d)


def raw(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        if data:
            s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_status_over_http(served):
    assert control.request(served.path, "GET", "/v1/status") == (200, served.status())


def test_a_silent_client_gets_the_bare_status_document(served):
    t0 = time.monotonic()
    out = raw(served.path, b"")
    assert json.loads(out) == served.status()
    assert time.monotonic() - t0 < control.LEGACY_WAIT + 2.0


def test_maintenance_request(served):
    status, doc = control.request(served.path, "PUT", "/v1/maintenance", {"maintenance": True})
    assert status == 200 and doc["changed"] == ["vip"] and doc["status"] == served.status()
    on, names, who = served.calls[-1]
    assert (on, names) == (True, None)
    assert who == f"uid {os.getuid()} (pid {os.getpid()})"  # SO_PEERCRED of this process
    status, doc = control.request(served.path, "PUT", "/v1/maintenance", {"maintenance": False, "instances": ["vip"]})
    assert status == 200 and served.calls[-1][:2] == (False, ["vip"])


@pytest.mark.parametrize(
    "method, url, body, status, error",
    [
        ("PUT", "/v1/maintenance", {"maintenance": "yes"}, 400, "expected"),
        ("PUT", "/v1/maintenance", {"maintenance": True, "instances": "vip"}, 400, "list of instance names"),
        ("PUT", "/v1/maintenance", {"maintenance": True, "force": 1}, 400, "unknown key(s): force"),
        ("PUT", "/v1/maintenance", {"maintenance": True, "instances": ["nope"]}, 404, "no instance named 'nope'"),
        ("POST", "/v1/maintenance", {"maintenance": True}, 405, "POST not allowed"),
        ("DELETE", "/v1/status", None, 405, "DELETE not allowed"),
        ("GET", "/v1/nothing", None, 404, "no such resource"),
    ],
)
def test_bad_requests_change_nothing(served, method, url, body, status, error):
    got, doc = control.request(served.path, method, url, body)
    assert got == status and error in doc["error"], doc
    if status != 404:  # the fake daemon refuses unknown names itself
        assert served.calls == []


def test_malformed_http_and_oversized_bodies(served):
    assert raw(served.path, b"HELLO\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    big = b"PUT /v1/maintenance HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"
    assert raw(served.path, big).startswith(b"HTTP/1.1 413 ")
    chunked = b"PUT /v1/maintenance HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw(served.path, chunked).startswith(b"HTTP/1.1 411 ")
    assert served.calls == []


def test_writes_need_root_or_the_daemons_uid(served, monkeypatch):
    assert control.may_write(control.Peer(1, 0, 0), own_uid=999)
    assert control.may_write(control.Peer(1, 999, 999), own_uid=999)
    assert not control.may_write(control.Peer(1, 1000, 1000), own_uid=999)
    assert not control.may_write(None, own_uid=999)
    monkeypatch.setattr(control, "may_write", lambda peer: False)
    status, doc = control.request(served.path, "PUT", "/v1/maintenance", {"maintenance": True})
    assert status == 403 and "may not change maintenance" in doc["error"] and "sudo" in doc["error"]
    assert served.calls == []
    assert control.request(served.path, "GET", "/v1/status")[0] == 200  # reads stay open


def test_a_state_file_that_cannot_be_written_changes_nothing(served):
    served.fail = OSError(13, "Permission denied")
    status, doc = control.request(served.path, "PUT", "/v1/maintenance", {"maintenance": True})
    assert status == 500 and "Permission denied; nothing changed" in doc["error"]


# --------------------------------------------------------------------------
# The state file (no network: runners that never started)
# --------------------------------------------------------------------------


def _daemon(tmp_path, state_file=True) -> Daemon:
    text = f"""
status_socket: {tmp_path}/vrrp.sock
{'state_file: ' + str(tmp_path / 'state.json') if state_file else ''}
instances:
  - {{name: a, interface: eth0, vrid: 1, virtual_ips: ["198.18.51.100/24"]}}
  - {{name: b, interface: eth0, vrid: 2, virtual_ips: ["198.18.51.101/24"]}}
"""
    d = Daemon(loads(text))
    d.runners = [InstanceRunner(inst, d.netlink) for inst in d.cfg.instances]
    return d


def test_state_file_keeps_maintenance(tmp_path):
    d = _daemon(tmp_path)
    assert d._read_state() == set()
    assert d.set_maintenance(True, ["b"], "uid 0") == ["b"]
    assert json.loads((tmp_path / "state.json").read_text()) == {"maintenance": ["b"]}
    assert d.set_maintenance(True, None, "uid 0") == ["a"]  # b was already
    assert json.loads((tmp_path / "state.json").read_text()) == {"maintenance": ["a", "b"]}
    assert [r.maintenance for r in d.runners] == [True, True]
    assert d.set_maintenance(False, ["a"], "uid 0") == ["a"]
    assert _daemon(tmp_path)._read_state() == {"b"}
    with pytest.raises(KeyError):
        d.set_maintenance(True, ["a", "zz"], "uid 0")
    assert [r.maintenance for r in d.runners] == [False, True]
    assert list(tmp_path.glob(".state.json.*")) == []


def test_state_file_problems(tmp_path, caplog):
    d = _daemon(tmp_path)
    (tmp_path / "state.json").write_text('{"maintenance": ["b", "gone"]}')
    assert d._read_state() == {"b"}
    assert "no instance named gone" in caplog.text
    (tmp_path / "state.json").write_text("{broken")
    assert d._read_state() == set()
    assert "cannot read the state file" in caplog.text
    os.unlink(tmp_path / "state.json")
    os.mkdir(tmp_path / "state.json")  # cannot be replaced by a file: nothing changes
    with pytest.raises(OSError):
        d.set_maintenance(True, ["a"], "uid 0")
    assert [r.maintenance for r in d.runners] == [False, False]
    (tmp_path / "x").mkdir()
    without = _daemon(tmp_path / "x", state_file=False)
    assert without.set_maintenance(True, None, "uid 0") == ["a", "b"]
    assert list((tmp_path / "x").iterdir()) == []


def test_config_state_file_must_be_absolute():
    from fleetproxy.config import ConfigError

    base = 'instances: [{name: a, interface: eth0, vrid: 1, virtual_ips: ["198.18.51.100/24"]}]\n'
    assert loads(base).state_file is None
    assert loads("state_file: /var/lib/x/state.json\n" + base).state_file == "/var/lib/x/state.json"
    with pytest.raises(ConfigError) as err:
        loads("state_file: state.json\n" + base)
    assert "state_file" in "\n".join(err.value.lines())


# --------------------------------------------------------------------------
# On real kernels (root): namespaces, veths, a bridge
# --------------------------------------------------------------------------

def logs(lab) -> str:
    return "\n".join(f"--- {n.ns}\n{lab.log(f'{n.ns}-vrrp.log')}" for n in lab.nodes)


def settle(lab, master, backup, timeout=10.0) -> None:
    lab.wait_state(master, "MASTER", timeout)
    lab.wait_state(backup, "BACKUP", timeout)


@pytest.mark.root
@pytest.mark.timeout(120)
def test_maintenance_hands_over_within_skew_time_stays_out_and_comes_back(lab2):
    a, b = lab2.nodes
    lab2.start_vrrp(a, priority=150)
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, b)
    sock = lab2.path(f"{a.ns}.sock")
    with lab2.probe() as probe:
        probe.drain()
        t0 = time.monotonic()
        r = cli("maintenance", "on", "-s", sock)
        took = probe.first_answer(VIP, b.mac, t0, 3.0)
    assert r.returncode == 0, r.stderr
    assert "vip: maintenance on" in r.stdout and "MAINT" in r.stdout
    # The CLI's own start-up (a Python interpreter) is part of `took`: margin for it.
    assert took is not None and took <= skew(100) + 1.0, f"{took}\n{logs(lab2)}"
    st = lab2.wait_state(a, "MAINT", 2)
    assert st["maintenance"] is True and not st["vips_held"] and not a.has(VIP)
    assert "maintenance on (by uid 0" in st["reason"]
    lab2.wait_state(b, "MASTER", 2)
    # Out until released: a higher priority that never preempts, however long.
    time.sleep(3 * mdi(150))
    st = lab2.status(a)
    assert st["state"] == "MAINT" and not a.has(VIP), logs(lab2)
    assert st["master"] == b.ip and st["master_priority"] == 100
    assert 0 <= st["master_age"] <= 0.5, st  # adverts every 100 ms
    assert lab2.status(b)["state"] == "MASTER"
    assert cli("maintenance", "on", "-s", sock).stdout.startswith("vip: maintenance on (already)")
    # Released: a backup first, then master by preemption (Master_Down_Interval).
    r = cli("maintenance", "off", "-s", sock, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changed"] == ["vip"]
    settle(lab2, a, b, timeout=5)
    st = lab2.status(a)
    assert st["maintenance"] is False and st["vips_held"] and a.has(VIP) and not b.has(VIP)
    assert st["master_age"] is None  # we are master


@pytest.mark.root
@pytest.mark.timeout(120)
def test_maintenance_survives_a_restart_with_a_state_file(lab2):
    from fleetproxy.vrrp.lab import AddrWatch

    a, b = lab2.nodes
    state = lab2.path("a-state.json")
    pa = lab2.start_vrrp(a, config={**lab2.vrrp_config(a, priority=150), "state_file": state})
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, b)
    sock = lab2.path(f"{a.ns}.sock")
    assert cli("maintenance", "on", "-s", sock).returncode == 0
    lab2.wait_state(b, "MASTER", 3)
    assert json.loads(Path(state).read_text()) == {"maintenance": ["vip"]}
    pa.send_signal(signal.SIGTERM)
    assert pa.wait(10) == 0
    with AddrWatch(a) as watch:
        pa = lab2.start_vrrp(a, config={**lab2.vrrp_config(a, priority=150), "state_file": state})
        st = lab2.wait_state(a, "MAINT", 5, proc=pa)
        assert "kept in the state file" in st["reason"]
        # Never master, not for an instant, although its priority is the higher one.
        assert watch.wait(VIP, "add", time.monotonic() + 3 * mdi(150)) is None, logs(lab2)
    assert lab2.status(b)["state"] == "MASTER"
    assert cli("maintenance", "off", "-s", sock).returncode == 0
    assert json.loads(Path(state).read_text()) == {"maintenance": []}
    settle(lab2, a, b, timeout=5)


@pytest.mark.root
@pytest.mark.timeout(120)
def test_a_backup_in_maintenance_does_not_take_over(lab2):
    a, b = lab2.nodes
    pa = lab2.start_vrrp(a, priority=150)
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, b)
    sock_b = lab2.path(f"{b.ns}.sock")
    r = cli("maintenance", "on", "-s", sock_b, "-i", "nope")
    assert r.returncode == 1 and "no instance named 'nope'" in r.stderr
    assert cli("maintenance", "on", "-s", sock_b, "-i", "vip").returncode == 0
    st = lab2.wait_state(b, "MAINT", 2)
    assert st["master"] == a.ip  # it keeps watching
    pa.kill()
    time.sleep(mdi(100) + 0.5)
    st = lab2.status(b)
    assert st["state"] == "MAINT" and not b.has(VIP), logs(lab2)
    assert cli("maintenance", "off", "-s", sock_b).returncode == 0
    lab2.wait_state(b, "MASTER", mdi(100) + 2)
    assert b.has(VIP)


@pytest.mark.root
@pytest.mark.timeout(60)
def test_only_root_may_write_anyone_may_read(lab2):
    a, _ = lab2.nodes
    lab2.start_vrrp(a, priority=150)
    lab2.wait_state(a, "MASTER", 5)
    os.chmod(lab2.dir, 0o755)  # let nobody reach the socket (mode 0666)
    sock = lab2.path(f"{a.ns}.sock")
    r = cli("status", "-s", sock, "--json", user="65534")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["instances"][0]["state"] == "MASTER"
    r = cli("maintenance", "on", "-s", sock, user="65534")
    assert r.returncode == 1, r.stdout
    assert "may not change maintenance" in r.stderr and "uid 65534" in r.stderr, r.stderr
    assert lab2.status(a)["state"] == "MASTER" and a.has(VIP)
