"""Active and passive health checks, init_state, backups, slowstart (real processes)."""

from __future__ import annotations

import re
import socket
import time
from collections import Counter

import pytest
from proxytest.client import ResponseReader, connect, request
from proxytest.configs import http_config, server
from proxytest.control import Api, distribution, runtime, wait_until, with_admin
from proxytest.proxy import free_port


def _checks(b, path: str = "/health") -> int:
    return sum(1 for r in list(b.requests) if r.path == path)


def test_killed_server_goes_down_within_inter_x_fall_and_back_after_rise(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    inter, fall, rise = 0.2, 3, 2
    cfg = http_config(port(), [
        server("s1", b1, check=True, inter="200ms", fall=fall, rise=rise),
        server("s2", b2),
    ])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    assert api.server("be", "s1")["check"]["status"] == "L4OK"

    b1.stop()
    down_after = api.wait_health("be", "s1", "down", inter * fall + 1.0)
    assert down_after <= inter * fall + 1.0
    s1 = api.server("be", "s1")
    assert s1["check"]["status"] == "L4CON" and s1["usable"] is False
    err = p.stderr()
    assert re.search(r"server be/s1 is DOWN: L4CON \(Connection refused\), 3 check\(s\) failed", err), err

    # Down: every request goes to s2, none fails.
    assert distribution(p.port(), 10) == Counter({"b2": 10})

    # Back on the same port: UP after `rise` consecutive successes, not before.
    backend("b1", port=b1.port)
    up_after = api.wait_health("be", "s1", "up", inter * rise + 1.0)
    assert up_after >= inter * (rise - 1) * 0.9, up_after
    assert re.search(r"server be/s1 is UP: L4OK \(connected\), 2 check\(s\) passed", p.stderr())
    assert set(distribution(p.port(), 10)) == {"b1", "b2"}
    s1 = api.server("be", "s1")
    assert s1["downtime_s"] > 0.3 and s1["check"]["failures"] >= fall


@pytest.mark.parametrize(("expect", "good", "bad", "reason"), [
    ([200, 204], 204, 500, "L7STS (status 500)"),
    ("2xx", 201, 302, "L7STS (status 302)"),
])
def test_httpchk_expect_status(proxy, backend, port, tmp_path, expect, good, bad, reason):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1, check=True, inter="150ms", fall=2, rise=1), server("s2", b2)],
                      backend={"httpchk": {"method": "GET", "path": "/health", "host": "check.example",
                                           "expect_status": expect}})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    chk = next(r for r in b1.requests if r.path == "/health")
    assert chk.method == "GET" and chk.header("host") == "check.example"
    assert _checks(b2) == 0  # only checked servers are checked

    b1.defaults["status"] = str(good)
    assert wait_until(lambda: b1.requests and b1.requests[-1].path == "/health" and _checks(b1) >= 4, 3)
    assert api.health("be", "s1") == "up"
    assert api.server("be", "s1")["check"]["description"] == f"status {good}"

    b1.defaults["status"] = str(bad)
    api.wait_health("be", "s1", "down", 0.15 * 2 + 1.0)
    assert f"server be/s1 is DOWN: {reason}, 2 check(s) failed" in p.stderr()
    assert api.server("be", "s1")["check"]["status"] == "L7STS"

    b1.defaults["status"] = "200"
    api.wait_health("be", "s1", "up", 0.15 + 1.0)
    assert "server be/s1 is UP: L7OK (status 200), 1 check(s) passed" in p.stderr()


def test_httpchk_timeout_and_invalid_response(proxy, backend, port, tmp_path):
    hang, bad = backend("hang"), backend("bad")
    cfg = http_config(port(), [server("s1", hang), server("s2", bad), server("s3", backend("b3"))],
                      backend={"httpchk": {"path": "/chk"}, "timeouts": {"check": "300ms"},
                               "default_server": {"check": True, "inter": "200ms", "fall": 1,
                                                  "init_state": "up"}})
    hang.defaults["mode"] = "hang"
    bad.defaults.update(mode="bad", kind="garbage")
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "down", 3)
    api.wait_health("be", "s2", "down", 3)
    assert api.server("be", "s1")["check"]["status"] == "L7TOUT"
    assert api.server("be", "s2")["check"]["status"] == "L7RSP"
    err = p.stderr()
    assert "server be/s1 is DOWN: L7TOUT (timeout waiting for the response)" in err
    assert "server be/s2 is DOWN: L7RSP (invalid status line)" in err
    assert api.health("be", "s3") == "up"


def test_tcp_check(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    closed = f"127.0.0.1:{free_port()}"
    cfg = http_config(port(), [server("s1", b1, check=True, inter="200ms"),
                               server("s2", closed, check=True, inter="200ms")])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    # A TCP check proves the port answers (SYN, SYN-ACK) and resets before the final
    # ACK, as HAProxy's do: the server accepts nothing and gets no request.
    assert b1.conn_count == 0 and not b1.requests
    time.sleep(0.5)
    s2 = api.server("be", "s2")
    assert s2["health"] == "down" and s2["check"]["status"] == "L4CON"
    assert distribution(p.port(), 6) == Counter({"b1": 6})
    stat = runtime(adm.runtime_socket, "show stat")
    row = next(line for line in stat.splitlines() if line.startswith("be,s2,"))
    assert ",DOWN," in row and ",L4CON," in row


def test_tcp_check_connect_timeout_and_check_address_by_name(proxy, backend, port, tmp_path):
    """A SYN that is never answered fails the check with L4TOUT after ``timeout check``;
    a check address given by name is resolved once, like the server's."""
    # A listener whose accept queue is full drops further SYNs: the connect never completes.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(full.getsockname())
            queued.append(c)
        time.sleep(0.2)
        b1 = backend("b1")  # listens on 127.0.0.1 only
        # A name, if this host resolves "localhost" to 127.0.0.1 first (not ::1 first).
        first = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)[0][4][0]
        name = "localhost" if first == "127.0.0.1" else "127.0.0.1"
        cfg = http_config(port(), [
            server("s1", b1, check=True, inter="200ms", fall=1, init_state="up",
                   check_address=f"127.0.0.1:{full.getsockname()[1]}"),
            server("s2", b1, check=True, inter="200ms", check_address=f"{name}:{b1.port}"),
        ], backend={"timeouts": {"check": "300ms"}})
        adm = with_admin(cfg, tmp_path)
        p = proxy(cfg)
        api = Api(adm.socket)
        api.wait_health("be", "s2", "up", 5)
        api.wait_health("be", "s1", "down", 3)
        s1 = api.server("be", "s1")
        assert s1["check"]["status"] == "L4TOUT", s1["check"]
        assert 250 <= s1["check"]["duration_ms"] <= 1000, s1["check"]
        assert "server be/s1 is DOWN: L4TOUT (connection timeout), 1 check(s) failed" in p.stderr()
    finally:
        for c in queued:
            c.close()
        full.close()


def test_init_state_down_until_first_success(proxy, backend, port, tmp_path):
    """With checks a server starts DOWN; its first success brings it UP (rise does not apply)."""
    b1 = backend("b1")
    closed = f"127.0.0.1:{free_port()}"
    cfg = http_config(port(), [
        server("s1", b1, check=True, inter="1s", rise=5),
        server("never", b1, check=True, inter="1s", check_address=closed),
    ])
    adm = with_admin(cfg, tmp_path)
    t0 = time.monotonic()
    p = proxy(cfg)
    api = Api(adm.socket)
    # Up after one check (first check within one inter), long before rise x inter = 5s.
    api.wait_health("be", "s1", "up", 3)
    assert time.monotonic() - t0 < 4.5
    assert "server be/s1 is UP: L4OK (connected), 1 check(s) passed" in p.stderr()
    never = api.server("be", "never")
    assert never["health"] == "down" and never["usable"] is False
    assert distribution(p.port(), 4) == Counter({"b1": 4})


def test_init_state_down_serves_503_until_checked(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    closed = f"127.0.0.1:{free_port()}"
    cfg = http_config(port(), [server("s1", b1, check=True, inter="2s", check_address=closed)])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    r = _get(p.port())
    assert r.status == 503
    assert Api(adm.socket).server("be", "s1")["check"]["status"] in ("INI", "L4CON")
    assert not b1.requests


def test_init_state_up_serves_until_fall(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    closed = f"127.0.0.1:{free_port()}"
    cfg = http_config(port(), [server("s1", b1, check=True, inter="300ms", fall=2, init_state="up",
                                      check_address=closed)])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    assert _get(p.port()).status == 200
    api = Api(adm.socket)
    api.wait_health("be", "s1", "down", 0.3 * 2 + 2.0 + 1.0)  # first check within min(inter, 2s)
    assert _get(p.port()).status == 503


def _get(port: int, target: str = "/"):
    with connect(port) as s:
        s.sendall(request("GET", target))
        return ResponseReader(s).read_one()


def test_backups_serve_when_primaries_down_and_503_when_none(proxy, backend, port, tmp_path):
    p1, p2, k1, k2 = backend("p1"), backend("p2"), backend("k1"), backend("k2")
    cfg = http_config(port(), [server("p1", p1), server("p2", p2), server("k1", k1, backup=True),
                               server("k2", k2, backup=True)])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    assert set(distribution(p.port(), 8)) == {"p1", "p2"}
    api.patch("be", "p1", state="maint")
    assert distribution(p.port(), 6) == Counter({"p2": 6})
    api.patch("be", "p2", health="down")  # forced down (no checks configured)
    # All primaries unusable: the first backup only (no all_backups).
    assert distribution(p.port(), 6) == Counter({"k1": 6})
    api.patch("be", "k1", state="drain")
    assert distribution(p.port(), 6) == Counter({"k2": 6})
    api.patch("be", "k2", weight=0)
    r = _get(p.port())
    assert r.status == 503
    assert api.get("/v1/backends/be")["no_server"] >= 1 or wait_until(
        lambda: api.get("/v1/backends/be")["no_server"] >= 1, 2)
    api.patch("be", "p2", health="up")
    assert distribution(p.port(), 4) == Counter({"p2": 4})


def test_all_backups(proxy, backend, port, tmp_path):
    p1, k1, k2 = backend("p1"), backend("k1"), backend("k2")
    cfg = http_config(port(), [server("p1", p1), server("k1", k1, backup=True), server("k2", k2, backup=True)],
                      backend={"all_backups": True})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    Api(adm.socket).patch("be", "p1", state="maint")
    assert distribution(p.port(), 8) == Counter({"k1": 4, "k2": 4})


def test_slowstart_after_maint_ramps_weight(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1, weight=100, slowstart="2s"), server("s2", b2, weight=100)])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.patch("be", "s1", state="maint")
    t0 = time.monotonic()
    body = api.patch("be", "s1", state="ready")
    samples = [(0.0, body["weight"])]
    # The runtime API reports the admin weight, as HAProxy does; show stat the effective one.
    assert runtime(adm.runtime_socket, "get weight be/s1") == "100 (initial 100)\n\n"
    state = runtime(adm.runtime_socket, "show servers state be").splitlines()[2].split()
    assert state[7] == "100"  # srv_uweight
    early = distribution(p.port(), 40)
    while time.monotonic() - t0 < 3.5 and samples[-1][1] < 100:
        samples.append((time.monotonic() - t0, api.server("be", "s1")["weight"]))
        time.sleep(0.1)
    weights = [w for _, w in samples]
    assert weights[0] < 50, samples
    assert weights == sorted(weights), samples
    assert len({w for w in weights if 0 < w < 100}) >= 3, samples
    assert weights[-1] == 100
    full_at = next(t for t, w in samples if w == 100)
    assert 1.5 <= full_at <= 3.0, samples
    assert api.server("be", "s1")["admin_weight"] == 100
    # The workers used the reduced weight: s1 got far less than half at first.
    assert early["b1"] < 15, early
    assert distribution(p.port(), 40) == Counter({"b1": 20, "b2": 20})


def test_slowstart_after_recovery(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1, weight=50, slowstart="2s", check=True, inter="100ms",
                                      fall=1, rise=1),
                               server("s2", b2, weight=50)])
    adm = with_admin(cfg, tmp_path)
    proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    b1.stop()
    api.wait_health("be", "s1", "down", 2)
    backend("b1", port=b1.port)
    api.wait_health("be", "s1", "up", 2)
    w = api.server("be", "s1")["weight"]
    assert 1 <= w < 50, w
    assert wait_until(lambda: api.server("be", "s1")["weight"] == 50, 5)


def test_passive_layer7_mark_down(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [
        server("s1", b1, check=True, inter="10s", fastinter="5s", observe="layer7", error_limit=3,
               on_error="mark-down"),
        server("s2", b2),
    ])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)

    def errors_on_s1(n: int) -> None:
        """``n`` 500s from s1 (s2 answers 200 to the same requests)."""
        seen = 0
        with connect(p.port()) as s:
            reader = ResponseReader(s)
            for _ in range(4 * n):
                s.sendall(request("GET", "/?status=500" if seen < n else "/"))
                r = reader.read_one()
                if r.header("X-Served-By") == "b1" and r.status == 500:
                    seen += 1
                    if seen == n:
                        return

    # Errors must be consecutive: a success in between resets the count.
    errors_on_s1(2)
    with connect(p.port()) as s:
        reader = ResponseReader(s)
        for _ in range(2):
            s.sendall(request("GET", "/"))
            assert reader.read_one().status == 200
    errors_on_s1(2)
    time.sleep(0.3)
    assert api.health("be", "s1") == "up"
    errors_on_s1(1)  # now 3 in a row
    api.wait_health("be", "s1", "down", 1.0)
    assert "server be/s1 is DOWN: passive check: status 500" in p.stderr()
    assert distribution(p.port(), 6) == Counter({"b2": 6})


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_passive_layer4_mark_down_and_redispatch(proxy, backend, port, tmp_path, mode):
    b1, b2 = backend("b1"), backend("b2")
    closed = f"127.0.0.1:{free_port()}"
    cfg = http_config(port(), mode=mode, servers=[
        # The check reaches a live server, the traffic a closed port.
        server("s1", closed, check=True, inter="10s", fastinter="5s", check_address=b1.address,
               observe="layer4", error_limit=4, on_error="mark-down"),
        server("s2", b2),
    ])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    statuses = Counter(_get(p.port()).status for _ in range(4))
    assert statuses == Counter({200: 4})  # retries, then redispatch to s2
    api.wait_health("be", "s1", "down", 2)
    assert "server be/s1 is DOWN: passive check: L4CON: connection failed" in p.stderr()
    # Counters reach the master with the workers' next report (every 100 ms).
    assert wait_until(lambda: api.server("be", "s1")["errors"]["connect"] >= 4, 2)


def test_passive_on_error_fastinter_checks_at_once(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [
        server("s1", b1, check=True, inter="20s", fastinter="100ms", observe="layer7", error_limit=2,
               on_error="fastinter"),
        server("s2", b2),
    ], backend={"httpchk": {"path": "/health"}})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    before = _checks(b1)
    time.sleep(0.3)
    assert _checks(b1) == before  # next regular check is 20s away
    with connect(p.port()) as s:
        reader = ResponseReader(s)
        for _ in range(4):  # two of them reach s1
            s.sendall(request("GET", "/?status=503"))
            reader.read_one()
    assert wait_until(lambda: _checks(b1) > before, 1.0), "no check after passive errors"
    assert api.health("be", "s1") == "up"
    assert "server be/s1: passive check saw errors (status 503); checking at fastinter" in p.stderr()


def test_forced_down_needs_rise_successes_to_come_back(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1, check=True, inter="300ms", rise=3), server("s2", backend("b2"))])
    adm = with_admin(cfg, tmp_path)
    proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    time.sleep(0.7)  # a few successful checks counted
    api.patch("be", "s1", health="down")
    t0 = time.monotonic()
    assert api.health("be", "s1") == "down"
    api.wait_health("be", "s1", "up", 0.3 * 3 + 1.0)
    # Three fresh successes, the first at most one interval away: at least two intervals.
    assert time.monotonic() - t0 >= 0.3 * 2 * 0.9


def test_passive_checks_need_active_checks() -> None:
    """Without active checks nothing could bring a server back, so `observe` needs
    `check` (HAProxy's rule): a configuration error naming the key."""
    from fleetproxy.config import ConfigError, parse

    doc = {
        "frontends": [{"name": "fe", "bind": ["127.0.0.1:1"], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [
            {"name": "s1", "address": "127.0.0.1:2", "observe": "layer7", "on_error": "mark-down"}]}],
    }
    with pytest.raises(ConfigError) as info:
        parse(doc)
    assert info.value.lines() == ["backends[0].servers[0].observe: observe layer7 needs check: true (as in HAProxy)"]
