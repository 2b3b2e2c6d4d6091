"""HAProxy's Runtime API on the runtime socket, and community.general.haproxy driving it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from proxytest.client import ResponseReader, connect, request
from proxytest.configs import http_config, server
from proxytest.control import (
    Api,
    RuntimeSession,
    distribution,
    get_from,
    runtime,
    served_by,
    wait_until,
    with_admin,
)

# The header of `show stat` of HAProxy 2.5/2.6 (management.txt, 9.1 "CSV format"),
# up to `algo`: fleetproxy's columns must be this list or a prefix of it.
HAPROXY_STAT_COLUMNS = [
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout", "dreq",
    "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act", "bck",
    "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid", "sid", "throttle",
    "lbtot", "tracked", "type", "rate", "rate_lim", "rate_max", "check_status", "check_code",
    "check_duration", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
    "hanafail", "req_rate", "req_rate_max", "req_tot", "cli_abrt", "srv_abrt", "comp_in",
    "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk", "last_agt", "qtime", "ctime",
    "rtime", "ttime", "agent_status", "agent_code", "agent_duration", "check_desc",
    "agent_desc", "check_rise", "check_fall", "check_health", "agent_rise", "agent_fall",
    "agent_health", "addr", "cookie", "mode", "algo",
]
REQUIRED = ["pxname", "svname", "qcur", "scur", "smax", "stot", "status", "weight", "act", "bck",
            "chkfail", "lastchg", "downtime", "check_status"]


@pytest.fixture
def rt(proxy, backend, port, tmp_path):
    """A proxy with s1 (checked), s2, a backup s3 and a second backend; (proxy, api, runtime path, backends)."""
    b1, b2, b3, b4 = backend("b1"), backend("b2"), backend("b3"), backend("b4")
    cfg = http_config(port(), [
        server("s1", b1, weight=10, check=True, inter="300ms", rise=1),
        server("s2", b2, weight=10),
        server("s3", b3, backup=True),
    ], extra_backends=[{"name": "other", "servers": [server("o1", b4)]}])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    return p, api, adm.runtime_socket, (b1, b2, b3, b4)


def _stat(path: str) -> list[dict[str, str]]:
    text = runtime(path, "show stat")
    assert text.startswith("# ")
    return list(csv.DictReader(text[2:].splitlines()))


def _row(rows, px, sv):
    return next(r for r in rows if r["pxname"] == px and r["svname"] == sv)


def test_show_stat_columns_and_values(rt):
    p, _api, path, (b1, _b2, *_) = rt
    text = runtime(path, "show stat")
    header = text.splitlines()[0][2:].split(",")
    assert header == HAPROXY_STAT_COLUMNS[: len(header)]
    assert all(c in header for c in REQUIRED)
    assert text.endswith("\n\n")  # HAProxy ends every answer with an empty line
    for target in ("/", "/", "/?status=404", "/"):
        get_from(p.port(), target)
    assert wait_until(lambda: (lambda fe: fe["req_tot"] == "4" and fe["scur"] == "0"
                               and int(fe["hrsp_2xx"]) + int(fe["hrsp_4xx"]) == 4)(
        _row(_stat(path), "fe", "FRONTEND")), 3)
    rows = _stat(path)
    assert [(r["pxname"], r["svname"]) for r in rows] == [
        ("fe", "FRONTEND"), ("be", "s1"), ("be", "s2"), ("be", "s3"), ("be", "BACKEND"),
        ("other", "o1"), ("other", "BACKEND")]
    fe = _row(rows, "fe", "FRONTEND")
    assert fe["status"] == "OPEN" and fe["stot"] == "4" and fe["hrsp_2xx"] == "3" and fe["hrsp_4xx"] == "1"
    s1, s2, s3 = (_row(rows, "be", n) for n in ("s1", "s2", "s3"))
    assert int(s1["stot"]) + int(s2["stot"]) == 4 and s3["stot"] == "0"
    assert (s1["status"], s1["weight"], s1["act"], s1["bck"]) == ("UP", "10", "1", "0")
    assert (s3["act"], s3["bck"]) == ("0", "1")
    assert s1["check_status"] == "L4OK" and s1["chkfail"] == "0"
    assert int(s1["downtime"]) <= 3  # down (init_state) until its first check
    assert s1["check_rise"] == "1" and s1["check_fall"] == "3" and s1["addr"] == b1.address
    assert s2["check_status"] == "" and s2["chkfail"] == ""  # no check configured
    assert s1["scur"] == "0" and s1["qcur"] == "0" and int(s1["smax"]) >= 1
    assert s1["type"] == "2" and _row(rows, "be", "BACKEND")["type"] == "1" and fe["type"] == "0"
    bk = _row(rows, "be", "BACKEND")
    assert bk["status"] == "UP" and bk["stot"] == "4" and bk["weight"] == "20" and bk["act"] == "2"
    assert int(s1["lastchg"]) >= 0

    # States as HAProxy shows them.
    runtime(path, "set server be/s1 state drain; set server be/s2 state maint")
    rows = _stat(path)
    assert _row(rows, "be", "s1")["status"] == "DRAIN" and _row(rows, "be", "s2")["status"] == "MAINT"
    runtime(path, "set server be/s2 state ready; set server be/s2 health down")
    assert _row(_stat(path), "be", "s2")["status"] == "DOWN"


def test_show_info(rt):
    p, _, path, _ = rt
    get_from(p.port())
    info = dict(line.split(": ", 1) for line in runtime(path, "show info").splitlines() if ": " in line)
    assert info["Name"] == "fleetproxy" and info["Pid"] == str(p.pid)
    major, minor = info["Version"].split(".")[:2]
    assert (int(major), int(minor)) >= (1, 5)  # what community.general.haproxy looks for
    assert info["Nbproc"] == "1" and int(info["Uptime_sec"]) >= 0
    assert int(info["CumReq"]) >= 1 or wait_until(
        lambda: "CumReq: 1" in runtime(path, "show info"), 2)


def test_show_servers_state(rt):
    _, _api, path, (b1, *_) = rt
    runtime(path, "set server be/s2 state drain;set server be/s3 state maint;set weight be/s1 5")
    lines = runtime(path, "show servers state").splitlines()
    assert lines[0] == "1"
    cols = lines[1][2:].split()
    assert cols[:10] == ["be_id", "be_name", "srv_id", "srv_name", "srv_addr", "srv_op_state",
                         "srv_admin_state", "srv_uweight", "srv_iweight", "srv_time_since_last_change"]
    rows = {(r[1], r[3]): dict(zip(cols, r, strict=False)) for r in (line.split() for line in lines[2:] if line)}
    assert set(rows) == {("be", "s1"), ("be", "s2"), ("be", "s3"), ("other", "o1")}
    s1, s2, s3 = rows["be", "s1"], rows["be", "s2"], rows["be", "s3"]
    assert s1["srv_addr"] == "127.0.0.1" and s1["srv_port"] == str(b1.port)
    assert (s1["srv_op_state"], s1["srv_admin_state"], s1["srv_uweight"], s1["srv_iweight"]) == ("2", "0", "5", "10")
    assert s2["srv_admin_state"] == "8" and s3["srv_admin_state"] == "1"
    only = runtime(path, "show servers state other").splitlines()
    assert [line.split()[3] for line in only[2:] if line] == ["o1"]
    assert runtime(path, "show servers state nope").startswith("Can't find backend.")


def test_set_commands(rt):
    p, api, path, (_b1, _b2, *_) = rt
    assert runtime(path, "set server be/s1 state drain") == "\n"
    assert api.server("be", "s1")["state"] == "drain"
    assert set(distribution(p.port(), 6)) == {"b2"}
    assert runtime(path, "set server be/s1 state maint") == "\n"
    assert api.server("be", "s1")["state"] == "maint"
    assert runtime(path, "set server be/s1 state ready") == "\n"
    assert "expects 'ready', 'drain' and 'maint'" in runtime(path, "set server be/s1 state up")

    assert runtime(path, "get weight be/s1") == "10 (initial 10)\n\n"
    runtime(path, "set server be/s1 weight 30")
    assert api.server("be", "s1")["weight"] == 30
    assert distribution(p.port(), 40) == {"b1": 30, "b2": 10}
    runtime(path, "set weight be/s1 50%")
    assert runtime(path, "get weight be/s1") == "5 (initial 10)\n\n"
    runtime(path, "set weight be/s1 0")
    assert set(distribution(p.port(), 4)) == {"b2"}
    assert "out of range" in runtime(path, "set weight be/s1 300")
    assert "invalid weight" in runtime(path, "set weight be/s1 heavy")
    runtime(path, "set weight be/s1 100%")
    assert api.server("be", "s1")["weight"] == 10

    runtime(path, "set server be/s2 health down")
    assert api.server("be", "s2")["health"] == "down"
    runtime(path, "set server be/s2 health stopping")
    assert api.server("be", "s2")["health"] == "down"
    runtime(path, "set server be/s2 health up")
    assert api.server("be", "s2")["health"] == "up"
    assert "expects 'up', 'stopping', or 'down'" in runtime(path, "set server be/s2 health sick")
    assert "only supports" in runtime(path, "set server be/s2 colour red")

    runtime(path, "disable server be/s2")
    assert api.server("be", "s2")["state"] == "maint"
    assert set(distribution(p.port(), 4)) == {"b1"}
    runtime(path, "enable server be/s2")
    assert api.server("be", "s2")["state"] == "ready"

    # Lookup errors, with HAProxy's messages.
    assert runtime(path, "get weight be/nope") == "No such server.\n\n"
    assert runtime(path, "get weight nope/s1") == "No such backend.\n\n"
    assert runtime(path, "get weight be") == "Require 'backend/server'.\n\n"
    assert runtime(path, "frobnicate").startswith("Unknown command: 'frobnicate'")
    assert "show stat" in runtime(path, "help")


def test_health_and_agent_commands(rt):
    _, api, path, _ = rt
    assert runtime(path, "disable health be/s1") == "\n"
    s1 = api.server("be", "s1")
    assert s1["check"]["enabled"] is False and s1["health"] == "up"
    row = _row(_stat(path), "be", "s1")
    assert row["check_status"] == ""  # checks disabled: not shown
    state = runtime(path, "show servers state be").splitlines()[2].split()
    assert state[13] == "0"  # srv_check_state
    runtime(path, "enable health be/s1")
    assert api.server("be", "s1")["check"]["enabled"] is True
    assert wait_until(lambda: _row(_stat(path), "be", "s1")["check_status"] == "L4OK", 2)
    assert runtime(path, "disable health be/s2").startswith("Health checks are not configured")
    assert runtime(path, "enable agent be/s1") == "Agent was not configured on this server, cannot enable.\n\n"
    assert runtime(path, "disable agent be/s1") == "Agent was not configured on this server, cannot disable.\n\n"


def test_several_commands_on_one_line(rt):
    _, api, path, _ = rt
    out = runtime(path, "get weight be/s1; set weight be/s1 4; get weight be/s1;disable server be/s2 ; "
                        "get weight other/o1")
    assert out == "10 (initial 10)\n\n\n4 (initial 10)\n\n\n1 (initial 1)\n\n"
    assert api.server("be", "s2")["state"] == "maint"
    # A failing command does not stop the others.
    out = runtime(path, "get weight be/nope; enable server be/s2")
    assert out == "No such server.\n\n\n"
    assert api.server("be", "s2")["state"] == "ready"


def test_prompt_mode(rt):
    _, api, path, _ = rt
    session = RuntimeSession(path)
    try:
        session.send("prompt")
        assert session.read_prompt() == ""
        session.send("get weight be/s1")
        assert session.read_prompt() == "10 (initial 10)\n"
        session.send("set weight be/s1 7")
        assert session.read_prompt() == ""  # HAProxy: the answer, then "\n> "
        session.send("show info")
        assert "Name: fleetproxy" in session.read_prompt()
        assert api.server("be", "s1")["weight"] == 7
        session.send("quit")
        assert session.closed()
    finally:
        session.close()
    # Without prompt the connection closes after one line.
    session = RuntimeSession(path)
    try:
        session.send("get weight be/s1")
        assert session.closed()
        assert session.buf == b"7 (initial 10)\n\n"
    finally:
        session.close()


def test_shutdown_sessions_command(rt):
    p, _api, path, (b1, _b2, *_) = rt
    runtime(path, "set server be/s2 state maint")
    s = connect(p.port())
    s.sendall(request("GET", "/?mode=hang"))
    assert wait_until(lambda: b1.active == 1, 3)
    assert runtime(path, "shutdown sessions server be/s1") == "\n"
    s.settimeout(3)
    try:
        assert s.recv(100) == b""
    except ConnectionResetError:
        pass
    s.close()


# --------------------------------------------------------------------------
# Acceptance: community.general.haproxy, unchanged, through `ansible`
# --------------------------------------------------------------------------


def _ansible() -> str:
    exe = shutil.which("ansible", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("ansible is not installed in this environment: "
                    "`pip install 'ansible>=12,<13'` into the venv to run this acceptance test")
    try:
        import ansible_collections.community.general  # noqa: F401
    except ImportError:
        pytest.skip("community.general is missing: install the `ansible` package (>=12,<13), not ansible-core")
    return exe


def _haproxy_module(exe: str, tmp_path, args: dict) -> tuple[dict, float]:
    env = dict(os.environ, LC_ALL="C.UTF-8", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
               ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-remote"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="0")
    env.pop("ANSIBLE_CONFIG", None)
    t0 = time.monotonic()
    proc = subprocess.run(
        [exe, "localhost", "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
         "-m", "community.general.haproxy", "-a", json.dumps(args)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    elapsed = time.monotonic() - t0
    try:
        out = json.loads(proc.stdout)
        result = out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError(f"ansible failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None
    assert proc.returncode == 0 and not result.get("failed"), json.dumps(result, indent=1)
    return result, elapsed


def test_community_general_haproxy_module(proxy, backend, port, tmp_path):
    exe = _ansible()
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("web1", b1, weight=10), server("web2", b2, weight=10)])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    common = {"socket": adm.runtime_socket, "backend": "be", "host": "web1"}

    # state: drain
    result, _ = _haproxy_module(exe, tmp_path, {**common, "state": "drain"})
    assert result["changed"] is True
    assert api.server("be", "web1")["state"] == "drain"
    assert set(distribution(p.port(), 6)) == {"b2"}

    # state: disabled with drain and wait: waits for the in-flight request, then maint.
    api.patch("be", "web1", state="ready")
    api.patch("be", "web2", state="maint")
    done = {}

    def slow() -> None:
        done["resp"] = get_from(p.port(), "/?mode=slow&delay=2.5")
        done["at"] = time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    assert wait_until(lambda: b1.active == 1, 3)
    api.patch("be", "web2", state="ready")
    result, _ = _haproxy_module(exe, tmp_path, {**common, "state": "disabled", "drain": True, "wait": True,
                                                "wait_interval": 1, "wait_retries": 20})
    finished = time.monotonic()
    t.join(5)
    assert done["resp"].status == 200 and served_by(done["resp"]) == "b1"
    assert finished >= done["at"]  # it waited for the session to end
    assert result["changed"] is True
    assert "set server be/web1 state drain" in result["command"]
    s = api.server("be", "web1")
    assert s["state"] == "maint" and s["sessions"]["current"] == 0

    # state: enabled with weight
    result, _ = _haproxy_module(exe, tmp_path, {**common, "state": "enabled", "weight": "5", "wait": True,
                                                "wait_interval": 1})
    s = api.server("be", "web1")
    assert (s["state"], s["weight"], s["health"]) == ("ready", 5, "up")
    assert result["changed"] is True
    result, _ = _haproxy_module(exe, tmp_path, {**common, "state": "enabled", "weight": "50%"})
    assert api.server("be", "web1")["weight"] == 5  # 50% of the configured 10
    assert result["changed"] is False
    # And the data path follows: 5:10.
    assert distribution(p.port(), 30) == {"b1": 10, "b2": 20}


def test_runtime_socket_and_reader(rt):
    """Requests keep flowing while the runtime socket is used (it runs in the master)."""
    p, _, path, _ = rt
    with connect(p.port()) as s:
        reader = ResponseReader(s)
        for i in range(10):
            runtime(path, f"set weight be/s2 {i + 1}")
            s.sendall(request("GET", "/"))
            assert reader.read_one().status == 200
