"""The JSON API: views, server changes, weights, add/delete under load, sessions, auth."""

from __future__ import annotations

import grp
import os
import socket
import stat
import threading
import time

import pytest
from proxytest.client import ResponseReader, connect, request
from proxytest.configs import http_config, server
from proxytest.control import (
    Api,
    LoadGenerator,
    distribution,
    get_from,
    served_by,
    tcp_api,
    wait_until,
    with_admin,
)


def _start(proxy, tmp_path, cfg, **kw):
    adm = with_admin(cfg, tmp_path, **kw)
    p = proxy(cfg)
    return p, Api(adm.socket), adm


def test_read_views(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1, weight=3, maxconn=50), server("s2", b2, backup=True)])
    p, api, _ = _start(proxy, tmp_path, cfg)
    for target in ("/", "/", "/?status=404", "/?status=503"):
        get_from(p.port(), target)

    info = api.info()
    assert info["name"] == "fleetproxy" and info["pid"] == p.pid
    assert len(info["workers"]) == 1 and info["generation"] == 1 and info["reloads"] == 0
    assert info["haproxy_runtime_api"]

    # Counters reach the master with each worker's next report (every 100 ms).
    assert wait_until(lambda: sum(api.get("/v1/frontends/fe")["responses"].values()) == 4
                      and api.get("/v1/frontends/fe")["sessions"]["current"] == 0, 3)
    fe = api.get("/v1/frontends/fe")
    assert fe["bind"] == [f"127.0.0.1:{p.port()}"] and fe["default_backend"] == "be"
    assert fe["responses"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1, "other": 0}
    assert fe["sessions"]["total"] == 4 and fe["bytes_in"] > 0 and fe["bytes_out"] > 0
    assert [f["name"] for f in api.get("/v1/frontends")] == ["fe"]

    be = api.get("/v1/backends/be")
    assert be["status"] == "UP" and be["usable_servers"] == 1 and be["sessions"]["total"] == 4
    assert [s["name"] for s in be["servers"]] == ["s1", "s2"]
    assert [b["name"] for b in api.get("/v1/backends")] == ["be"]

    s1 = api.server("be", "s1")
    assert s1["address"] == b1.address and s1["state"] == "ready" and s1["health"] == "up"
    assert s1["weight"] == s1["admin_weight"] == s1["config_weight"] == 3
    assert s1["maxconn"] == 50 and s1["backup"] is False and s1["usable"] is True
    assert s1["sessions"]["total"] == 4 and s1["sessions"]["current"] == 0 and s1["active_requests"] == 0
    assert s1["responses"]["2xx"] == 2 and s1["responses"]["4xx"] == 1 and s1["responses"]["5xx"] == 1
    assert s1["bytes_out"] > 0 and be["queue"] == 0  # requests queue in the backend
    assert s1["origin"] == "config" and s1["definition"]["weight"] == 3
    assert s1["downtime_s"] == 0 and s1["check"]["configured"] is False
    s2 = api.server("be", "s2")
    assert s2["backup"] is True and s2["sessions"]["total"] == 0
    assert [s["name"] for s in api.get("/v1/backends/be/servers")] == ["s1", "s2"]

    for url in ("/v1/frontends/nope", "/v1/backends/nope", "/v1/backends/be/servers/nope",
                "/v1/backends/nope/servers/s1"):
        status, body = api.call("GET", url)
        assert status == 404 and "nope" in body["error"], (url, body)
    assert api.call("GET", "/v1/health") == (200, {"status": "ok", "workers": 1})


def test_http_bytes_sent_to_servers_are_counted(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"))])
    p, api, _ = _start(proxy, tmp_path, cfg)
    with connect(p.port()) as s:
        s.sendall(request("POST", "/", body=b"x" * 1000))
        assert ResponseReader(s).read_one().status == 200
    assert wait_until(lambda: api.server("be", "s1")["sessions"]["total"] == 1, 2)
    assert api.server("be", "s1")["bytes_in"] >= 1000
    assert api.get("/v1/backends/be")["bytes_in"] >= 1000


def test_change_validation(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"), weight=10)])
    _, api, _ = _start(proxy, tmp_path, cfg)
    url = "/v1/backends/be/servers/s1"
    bad = [
        ({"state": "sleeping"}, 400, "invalid state"),
        ({"weight": 257}, 400, "out of range"),
        ({"weight": -1}, 400, "out of range"),
        ({"weight": "heavy"}, 400, "invalid weight"),
        ({"weight": True}, 400, "invalid weight"),
        ({"health": "sideways"}, 400, "invalid health"),
        ({"colour": "red"}, 400, "unknown field"),
        ({"check": "disabled"}, 409, "no health check"),
    ]
    for body, status, text in bad:
        got, answer = api.call("PATCH", url, body)
        assert got == status and text in answer["error"], (body, got, answer)
    got, answer = api.call("PATCH", url, ["state", "drain"])
    assert got == 400 and "JSON object" in answer["error"]
    s1 = api.server("be", "s1")
    assert (s1["state"], s1["weight"], s1["health"]) == ("ready", 10, "up")  # nothing changed

    s1 = api.patch("be", "s1", weight="50%")
    assert s1["weight"] == 5 and s1["admin_weight"] == 5 and s1["config_weight"] == 10
    s1 = api.patch("be", "s1", weight="250%")
    assert s1["weight"] == 25
    s1 = api.patch("be", "s1", weight="33%")  # HAProxy: 10 x 33 / 100, truncated
    assert s1["weight"] == 3
    s1 = api.patch("be", "s1", weight="5000%")  # relative weights stop at 256
    assert s1["weight"] == 256
    got, answer = api.call("PATCH", url, {"weight": "-5%"})
    assert got == 400 and "invalid weight" in answer["error"]
    s1 = api.patch("be", "s1", weight=256, state="drain")
    assert s1["weight"] == 256 and s1["state"] == "drain" and s1["usable"] is False
    s1 = api.patch("be", "s1", state="maint", health="down")
    assert s1["state"] == "maint" and s1["health"] == "down"


def test_a_refused_change_changes_nothing(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"), check=True, inter="5s", init_state="up")])
    _, api, _ = _start(proxy, tmp_path, cfg)
    url = "/v1/backends/be/servers/s1"
    for body in ({"check": "disabled", "weight": 999}, {"check": "disabled", "state": "asleep"},
                 {"state": "drain", "weight": "x"}, {"weight": 5, "health": "meh"}):
        got, answer = api.call("PATCH", url, body)
        assert got == 400, (body, answer)
        s1 = api.server("be", "s1")
        assert (s1["state"], s1["weight"], s1["health"], s1["check"]["enabled"]) == ("ready", 1, "up", True), body
    s1 = api.patch("be", "s1", check="disabled", state="drain", weight=4)
    assert (s1["state"], s1["weight"], s1["check"]["enabled"]) == ("drain", 4, False)


def test_weight_change_shifts_the_distribution(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1, weight=4), server("s2", b2, weight=4)])
    p, api, _ = _start(proxy, tmp_path, cfg)

    def share(n: int = 36) -> int:
        return distribution(p.port(), n)["b1"]

    assert share() == 18
    api.patch("be", "s1", weight=12)  # 12:4
    assert abs(share() - 27) <= 2
    api.patch("be", "s1", weight="50%")  # 2:4
    assert abs(share() - 12) <= 2
    api.patch("be", "s1", weight=0)
    assert share() == 0
    assert api.server("be", "s1")["usable"] is False
    api.patch("be", "s1", weight="100%")
    assert abs(share() - 18) <= 2


def test_add_and_delete_servers_under_load(proxy, backend, port, tmp_path):
    b1, b2, b3 = backend("b1"), backend("b2"), backend("b3")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)])
    p, api, _ = _start(proxy, tmp_path, cfg)
    with LoadGenerator(p.port(), threads=4, duration=20, pause=0.002) as load:
        assert wait_until(lambda: load.total() > 50, 5)
        status, body = api.call("POST", "/v1/backends/be/servers", {"name": "s3", "address": b3.address,
                                                                    "weight": 2})
        assert status == 201 and body["name"] == "s3" and body["weight"] == 2, body
        assert wait_until(lambda: len(b3.requests) > 20, 5)

        status, body = api.call("DELETE", "/v1/backends/be/servers/s2")
        assert status == 409 and "put it in maint first" in body["error"]
        api.patch("be", "s2", state="maint")
        status, body = api.call("DELETE", "/v1/backends/be/servers/s2?wait=5s")
        assert status == 204, body
        n2 = len(b2.requests)
        time.sleep(0.3)
        assert len(b2.requests) == n2
        assert [s["name"] for s in api.get("/v1/backends/be/servers")] == ["s1", "s3"]
        # Same name again, other address: a new server.
        status, body = api.call("POST", "/v1/backends/be/servers", {"name": "s2", "address": b2.address})
        assert status == 201
        assert wait_until(lambda: len(b2.requests) > n2 + 10, 5)
        time.sleep(0.3)
    stats = load.stats
    assert stats.failed == 0 and stats.resets == 0, stats.summary()
    assert stats.ok > 200, stats.summary()
    assert {"b1", "b2", "b3"} <= set(stats.served)


def test_add_server_validation_and_checks(proxy, backend, port, tmp_path):
    b1, b3 = backend("b1"), backend("b3")
    cfg = http_config(port(), [server("s1", b1)], backend={"cookie": {"name": "SRV"}})
    p, api, _ = _start(proxy, tmp_path, cfg)
    url = "/v1/backends/be/servers"
    for body, status, text in [
        ({"name": "s1", "address": b3.address}, 409, "already has a server named 's1'"),
        ({"name": "s9", "address": b3.address, "cookie": "s1"}, 409, "cookie value 's1'"),
        ({"name": "s9", "address": "nowhere"}, 400, "address"),
        ({"name": "s9"}, 400, "address: required key is missing"),
        ({"name": "s9", "address": b3.address, "wieght": 2}, 400, "wieght: unknown key"),
        ({"name": "s 9", "address": b3.address}, 400, "invalid name"),
    ]:
        got, answer = api.call("POST", url, body)
        assert got == status and text in answer["error"], (body, got, answer)
    got, answer = api.call("POST", "/v1/backends/nope/servers", {"name": "x", "address": b3.address})
    assert got == 404
    # With checks: starts down until its first successful check, with its own settings.
    got, s3 = api.call("POST", url, {"name": "s3", "address": b3.address, "check": True, "inter": "200ms",
                                     "rise": 1, "cookie": "three"})
    assert got == 201 and s3["health"] == "down" and s3["check"]["inter_ms"] == 200, s3
    assert s3["origin"] == "runtime"
    api.wait_health("be", "s3", "up", 3)
    assert served_by(get_from(p.port(), headers=[("Cookie", "SRV=three")])) == "b3"
    assert "server be/s3 added (admin), health checks start it down" in p.stderr()


def test_delete_waits_for_active_sessions(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)])
    p, api, _ = _start(proxy, tmp_path, cfg)
    api.patch("be", "s2", state="maint")
    result = {}

    def slow() -> None:
        result["resp"] = get_from(p.port(), "/?mode=slow&delay=1.5")
        result["done"] = time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    assert wait_until(lambda: b1.active == 1, 3)
    api.patch("be", "s2", state="ready")
    api.patch("be", "s1", state="maint")
    assert wait_until(lambda: api.server("be", "s1")["sessions"]["current"] == 1, 2)
    status, body = api.call("DELETE", "/v1/backends/be/servers/s1")
    assert status == 409 and "still has 1 active session(s)" in body["error"], body
    status, body = api.call("DELETE", "/v1/backends/be/servers/s1?wait=200ms")
    assert status == 409 and "active session" in body["error"]
    status, body = api.call("DELETE", "/v1/backends/be/servers/s1?wait=bogus")
    assert status == 400
    status, body = api.call("DELETE", "/v1/backends/be/servers/s1?wait=10s")
    deleted = time.monotonic()
    assert status == 204, body
    t.join(5)
    assert result["resp"].status == 200 and served_by(result["resp"]) == "b1"
    assert deleted >= result["done"] - 0.05  # returned only once the request had finished
    assert deleted - result["done"] < 1.0
    status, _ = api.call("GET", "/v1/backends/be/servers/s1")
    assert status == 404
    # wait on a server that is not in maint: refused at once.
    t0 = time.monotonic()
    status, body = api.call("DELETE", "/v1/backends/be/servers/s2?wait=5s")
    assert status == 409 and time.monotonic() - t0 < 1.0


def test_shutdown_sessions(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1)])
    p, api, _ = _start(proxy, tmp_path, cfg)
    socks = []
    for _ in range(2):
        s = connect(p.port())
        s.sendall(request("GET", "/?mode=hang"))
        socks.append(s)
    assert wait_until(lambda: b1.active == 2, 3)
    assert wait_until(lambda: api.server("be", "s1")["sessions"]["current"] == 2, 2)
    status, body = api.call("POST", "/v1/backends/be/servers/s1/shutdown-sessions")
    assert status == 200 and body == {"server": "be/s1", "sessions_killed": 2}
    for s in socks:
        s.settimeout(3)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""  # closed by the proxy, no response
        s.close()
    assert wait_until(lambda: api.server("be", "s1")["sessions"]["current"] == 0, 2)
    assert get_from(p.port()).status == 200  # the server itself stays usable
    assert "server be/s1: sessions shut down (admin)" in p.stderr()


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "admin.token"
    path.write_text("# tokens\nadmin admin-secret\nuser user-secret\nbare-secret\n")
    return str(path)


def test_auth_over_tcp(proxy, backend, port, tmp_path, tokens):
    cfg = http_config(port(), [server("s1", backend("b1"))])
    admin_port = port()
    _, api, _ = _start(proxy, tmp_path, cfg, listen_port=admin_port, token_file=tokens)
    url = "/v1/backends/be/servers/s1"

    status, body = tcp_api(admin_port, "GET", "/v1/info")
    assert status == 401 and body["error"] == "missing or invalid token"
    for bad in ("wrong", "admin-secretX", "", "user"):
        assert tcp_api(admin_port, "GET", "/v1/info", token=bad)[0] == 401, bad
    # Not a bearer token at all.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    conn.request("GET", "/v1/info", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    resp = conn.getresponse()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    conn.close()

    status, body = tcp_api(admin_port, "GET", url, token="user-secret")
    assert status == 200 and body["name"] == "s1"
    for method, u, payload in [("PATCH", url, {"state": "drain"}),
                               ("POST", "/v1/backends/be/servers", {"name": "x", "address": "127.0.0.1:9"}),
                               ("DELETE", url, None), ("POST", "/v1/reload", None),
                               ("POST", url + "/shutdown-sessions", None)]:
        status, body = tcp_api(admin_port, method, u, token="user-secret", body=payload)
        assert status == 403 and "read-only" in body["error"], (method, u, body)
    assert tcp_api(admin_port, "GET", url, token="user-secret")[1]["state"] == "ready"  # unchanged

    status, body = tcp_api(admin_port, "PATCH", url, token="admin-secret", body={"state": "drain"})
    assert status == 200 and body["state"] == "drain"
    status, body = tcp_api(admin_port, "PATCH", url, token="bare-secret", body={"state": "ready"})
    assert status == 200 and body["state"] == "ready"
    # Without a token: the stats page and metrics, nothing of the API.
    assert tcp_api(admin_port, "GET", "/stats")[0] == 200
    assert tcp_api(admin_port, "GET", "/metrics")[0] == 200
    assert tcp_api(admin_port, "GET", "/v1/backends")[0] == 401

    # Tokens are read again on reload (rotation).
    with open(tokens, "w") as f:
        f.write("admin rotated-secret\n")
    assert api.call("POST", "/v1/reload")[0] == 200
    assert tcp_api(admin_port, "GET", url, token="admin-secret")[0] == 401
    assert tcp_api(admin_port, "PATCH", url, token="rotated-secret", body={"state": "drain"})[0] == 200


def test_tcp_api_refuses_everything_without_token_file(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"))])
    admin_port = port()
    _start(proxy, tmp_path, cfg, listen_port=admin_port)
    assert tcp_api(admin_port, "GET", "/v1/info")[0] == 401
    assert tcp_api(admin_port, "GET", "/v1/info", token="anything")[0] == 401


def _other_group() -> grp.struct_group:
    mine = os.getgid()
    for g in grp.getgrall():
        if g.gr_gid != mine:
            return g
    pytest.skip("no second group on this system")


def test_unix_sockets_mode_and_group(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"))])
    _, api, adm = _start(proxy, tmp_path, cfg)
    for path in (adm.socket, adm.runtime_socket):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    # The UNIX socket is admin level: no token needed to write.
    assert api.patch("be", "s1", state="drain")["state"] == "drain"


def test_unix_sockets_custom_mode_and_group(proxy, backend, port, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("changing a socket's group needs root")
    group = _other_group()
    cfg = http_config(port(), [server("s1", backend("b1"))])
    _, api, adm = _start(proxy, tmp_path, cfg, socket_mode="0600", socket_group=group.gr_name)
    for path in (adm.socket, adm.runtime_socket):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == group.gr_gid
    assert api.info()["name"] == "fleetproxy"


def test_stale_socket_file_is_replaced(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"))])
    adm = with_admin(cfg, tmp_path)
    # A socket file left by a crashed run.
    os.makedirs(os.path.dirname(adm.socket), exist_ok=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(adm.socket)
    p = proxy(cfg)
    assert Api(adm.socket).info()["name"] == "fleetproxy"
    assert get_from(p.port()).status == 200


def test_shared_reader(proxy, backend, port, tmp_path):
    """The read endpoints answer while requests are in flight (no blocking on the data path)."""
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1)])
    p, api, _ = _start(proxy, tmp_path, cfg)
    s = connect(p.port())
    s.sendall(request("GET", "/?mode=slow&delay=1"))
    assert wait_until(lambda: api.server("be", "s1")["active_requests"] == 1, 2)
    assert api.get("/v1/backends/be")["sessions"]["current"] == 1
    r = ResponseReader(s).read_one()
    assert r.status == 200
    s.close()


def test_admin_endpoints_follow_a_reload(proxy, backend, port, tmp_path, tokens):
    """A reload that moves the endpoints, asked for on an endpoint it replaces, answers."""
    import copy

    import yaml

    cfg = http_config(port(), [server("s1", backend("b1"))])
    p1, p2 = port(), port()
    p, api, adm = _start(proxy, tmp_path, cfg, listen_port=p1, token_file=tokens)
    new = copy.deepcopy(cfg)
    sock_b = os.path.join(os.path.dirname(adm.socket), "admin-b.sock")
    new["global"]["admin"].update(socket=sock_b, socket_mode="0600", listen=f"127.0.0.1:{p2}")
    p.path.write_text(yaml.safe_dump(new, sort_keys=False))
    t0 = time.monotonic()
    status, body = api.call("POST", "/v1/reload")  # on the socket being replaced
    assert status == 200 and body["generation"] == 2, body
    assert time.monotonic() - t0 < 10
    assert wait_until(lambda: not os.path.exists(adm.socket), 6)
    assert stat.S_IMODE(os.stat(sock_b).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(adm.runtime_socket).st_mode) == 0o600  # reopened with the new mode
    api_b = Api(sock_b)
    assert api_b.info()["generation"] == 2
    assert tcp_api(p2, "GET", "/v1/info", token="user-secret")[0] == 200
    assert wait_until(lambda: _refused(p1), 6)

    # Over TCP, back to the first port.
    p.path.write_text(yaml.safe_dump({**new, "global": {**new["global"], "admin": {
        **new["global"]["admin"], "listen": f"127.0.0.1:{p1}"}}}, sort_keys=False))
    status, body = tcp_api(p2, "POST", "/v1/reload", token="admin-secret")
    assert status == 200 and body["generation"] == 3, body
    assert tcp_api(p1, "GET", "/v1/info", token="user-secret")[0] == 200
    # Unchanged endpoints are left alone.
    inode = os.stat(sock_b).st_ino
    assert api_b.call("POST", "/v1/reload")[0] == 200
    assert os.stat(sock_b).st_ino == inode


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
