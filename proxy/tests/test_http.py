"""HTTP through the real proxy process: balancing, routing, keep-alive and reuse,
pipelining, chunked, 100-continue, WebSocket, HTTP/1.0, timeouts, retries, limits,
header rewriting, graceful stop and the access log."""

from __future__ import annotations

import re
import signal
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest
from proxytest.client import (
    Client,
    ResponseReader,
    connect,
    exchange,
    get,
    read_until_close,
    request,
)
from proxytest.configs import http_config, server
from proxytest.proxy import free_port

HOP_BY_HOP = ("connection", "keep-alive", "te", "trailer", "proxy-connection", "upgrade")


def served(port: int, targets: list[str], headers: list[tuple[str, str]] | None = None,
           batch: int = 50, source: str | None = None) -> list[str]:
    """X-Served-By of each request, sent pipelined in batches on one connection."""
    out: list[str] = []
    with Client(port, source=source) as c:
        for i in range(0, len(targets), batch):
            chunk = targets[i : i + batch]
            c.send(b"".join(request("GET", t, headers=headers) for t in chunk))
            responses = c.read(len(chunk))
            assert [r.status for r in responses] == [200] * len(chunk)
            out += [r.header("X-Served-By") or "?" for r in responses]
    return out


# --------------------------------------------------------------------------
# Balancing end to end
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "tolerance"), [
    ("roundrobin", 0.02), ("static-rr", 0.02), ("random", 0.03), ("uri", 0.03), ("hdr(X-User)", 0.03),
])
def test_weights_3_to_1_give_75_percent(proxy: Any, backend: Any, port: Any, algorithm: str,
                                         tolerance: float) -> None:
    a, b = backend("a"), backend("b")
    p = proxy(http_config(port(), [server("a", a, weight=3), server("b", b, weight=1)], balance=algorithm,
                          global_={"log": {"access": "none"}}))
    n = 4000
    if algorithm == "hdr(X-User)":
        counts: Counter[str] = Counter()
        with Client(p.port()) as c:
            for i in range(0, n, 50):
                c.send(b"".join(request("GET", "/", headers=[("X-User", f"user-{j}")]) for j in range(i, i + 50)))
                counts.update(r.header("X-Served-By") for r in c.read(50))
    else:
        counts = Counter(served(p.port(), [f"/item/{i}" for i in range(n)]))
    assert sum(counts.values()) == n
    assert abs(counts["a"] / n - 0.75) <= tolerance, counts
    # Every request reached a backend exactly once.
    assert len(a.requests) + len(b.requests) == n


def test_hash_balancing_is_sticky_end_to_end(proxy: Any, backend: Any, port: Any) -> None:
    bs = [backend(f"s{i}") for i in range(3)]
    p = proxy(http_config(port(), [server(f"s{i}", b) for i, b in enumerate(bs)], balance="uri",
                          backend={"hash_type": "consistent"}))
    targets = [f"/obj/{i}?q={i}" for i in range(60)]
    first = served(p.port(), targets)
    assert served(p.port(), targets) == first
    assert set(first) == {"s0", "s1", "s2"}


def test_source_balancing_keeps_each_client_address_on_one_server(proxy: Any, backend: Any, port: Any) -> None:
    bs = [backend(f"s{i}") for i in range(3)]
    p = proxy(http_config(port(), [server(f"s{i}", b) for i, b in enumerate(bs)], balance="source"))
    seen: dict[str, set[str]] = {}
    for i in range(2, 40):
        src = f"127.0.0.{i}"
        seen[src] = set(served(p.port(), ["/a", "/b", "/c"], source=src))
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {next(iter(v)) for v in seen.values()} == {"s0", "s1", "s2"}


def _concurrent(port: int, targets: list[str], timeout: float = 15) -> list[Any]:
    """Each target on its own connection, all at once; the responses in target order."""
    results: list[Any] = [None] * len(targets)

    def one(i: int) -> None:
        try:
            with Client(port, timeout=timeout) as c:
                results[i] = c.request("GET", targets[i])
        except Exception as exc:  # reported by the caller's asserts
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(timeout + 5)
    return results


def test_leastconn_spreads_concurrent_requests_by_weight(proxy: Any, backend: Any, port: Any) -> None:
    a, b = backend("a", "slow", delay=1.0), backend("b", "slow", delay=1.0)
    p = proxy(http_config(port(), [server("a", a, weight=3), server("b", b, weight=1)], balance="leastconn"))
    results = _concurrent(p.port(), [f"/{i}" for i in range(8)])
    assert [r.status for r in results] == [200] * 8, results
    assert Counter(r.header("X-Served-By") for r in results) == {"a": 6, "b": 2}


def test_first_uses_the_next_server_only_when_the_first_is_full(proxy: Any, backend: Any, port: Any) -> None:
    a, b = backend("a", "slow", delay=1.0), backend("b", "slow", delay=1.0)
    p = proxy(http_config(port(), [server("a", a, maxconn=2), server("b", b, maxconn=5)], balance="first"))
    assert served(p.port(), ["/x?delay=0"] * 5) == ["a"] * 5
    results = _concurrent(p.port(), [f"/{i}" for i in range(4)])
    assert Counter(r.header("X-Served-By") for r in results) == {"a": 2, "b": 2}, results


def test_backup_serves_only_when_primaries_are_unusable(proxy: Any, backend: Any, port: Any) -> None:
    a, spare = backend("a"), backend("spare")
    p = proxy(http_config(port(), [server("a", a), server("spare", spare, backup=True)]))
    assert set(served(p.port(), ["/"] * 10)) == {"a"}
    assert spare.conn_count == 0
    q = proxy(http_config(port(), [server("a", a, disabled=True), server("off", a, weight=0),
                                   server("spare", spare, backup=True)]))
    assert set(served(q.port(), ["/"] * 10)) == {"spare"}


def test_no_usable_server_is_503(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a, disabled=True)]))
    with Client(p.port()) as c:
        r = c.request("GET", "/")
        assert r.status == 503 and r.header("Connection") == "close"
        assert b"503" in r.body and len(r.body) < 512
        assert c.closed_by_peer()
    assert a.conn_count == 0


# --------------------------------------------------------------------------
# Routing end to end
# --------------------------------------------------------------------------

ROUTES = [
    {"if": {"path": "/exact"}, "use_backend": "r_path"},
    {"if": {"path_prefix": "/api/"}, "use_backend": "r_prefix"},
    {"if": {"path_regex": r"\.png$"}, "use_backend": "r_regex"},
    {"if": {"host": "static.example.com"}, "use_backend": "r_host"},
    {"if": {"host": "*.wild.example.com"}, "use_backend": "r_wild"},
    {"if": {"header": {"name": "X-Canary", "value": "1"}}, "use_backend": "r_hvalue"},
    {"if": {"header": {"name": "User-Agent", "regex": "^bot/"}}, "use_backend": "r_hregex"},
    {"if": {"header": {"name": "X-Debug"}}, "use_backend": "r_hpresent"},
    {"if": {"method": ["DELETE", "PATCH"]}, "use_backend": "r_method"},
    {"if": {"src": ["127.0.0.77/32", "127.0.9.0/24"]}, "use_backend": "r_src"},
    {"if": {"path_prefix": "/both/", "method": "POST"}, "use_backend": "r_and"},
    {"if": {"any": [{"path": "/any1"}, {"host": "any.example.com"}]}, "use_backend": "r_any"},
    {"if": {"path_prefix": "/neg/", "not": {"header": {"name": "X-Allowed"}}}, "use_backend": "r_not"},
]
ROUTE_CASES = [
    ("path", {"target": "/exact"}, "r_path"),
    ("path-not-prefix", {"target": "/exact/more"}, "default"),
    ("path-ignores-query", {"target": "/exact?x=1"}, "r_path"),
    ("path_prefix", {"target": "/api/users"}, "r_prefix"),
    ("path_regex", {"target": "/img/logo.png"}, "r_regex"),
    ("host", {"host": "static.example.com"}, "r_host"),
    ("host-with-port", {"host": "static.example.com:8080"}, "r_host"),
    ("host-case", {"host": "STATIC.Example.com"}, "r_host"),
    ("host-wildcard", {"host": "a.b.wild.example.com"}, "r_wild"),
    ("host-wildcard-apex", {"host": "wild.example.com"}, "default"),
    ("header-value", {"headers": [("X-Canary", "1")]}, "r_hvalue"),
    ("header-value-other", {"headers": [("X-Canary", "2")]}, "default"),
    ("header-regex", {"headers": [("User-Agent", "bot/1.0")]}, "r_hregex"),
    ("header-present", {"headers": [("x-debug", "")]}, "r_hpresent"),
    ("method", {"method": "DELETE"}, "r_method"),
    ("src", {"source": "127.0.0.77"}, "r_src"),
    ("src-cidr", {"source": "127.0.9.200"}, "r_src"),
    ("src-other", {"source": "127.0.0.78"}, "default"),
    ("and-both", {"method": "POST", "target": "/both/x"}, "r_and"),
    ("and-one", {"method": "GET", "target": "/both/x"}, "default"),
    ("any-first", {"target": "/any1"}, "r_any"),
    ("any-second", {"host": "any.example.com"}, "r_any"),
    ("not", {"target": "/neg/x"}, "r_not"),
    ("not-negated", {"target": "/neg/x", "headers": [("X-Allowed", "1")]}, "default"),
    ("first-match-wins", {"target": "/api/x.png", "headers": [("X-Canary", "1")]}, "r_prefix"),
]


@pytest.fixture(scope="module")
def routing_proxy(module_proxy: Any, module_backend: Any) -> Any:
    names = ["default", *sorted({r["use_backend"] for r in ROUTES})]
    bes = {n: module_backend(n) for n in names}
    cfg = http_config(free_port(), [server("default", bes["default"])], frontend={"rules": ROUTES},
                      extra_backends=[{"name": n, "servers": [server(n, bes[n])]} for n in names if n != "default"])
    return module_proxy(cfg)


@pytest.mark.parametrize(("case", "req", "expected"), ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_routing_condition_end_to_end(routing_proxy: Any, case: str, req: dict[str, Any], expected: str) -> None:
    with Client(routing_proxy.port(), source=req.get("source")) as c:
        body = b"x" if req.get("method") in ("POST", "PATCH") else b""
        r = c.request(req.get("method", "GET"), req.get("target", "/"), headers=req.get("headers"),
                      host=req.get("host", "test.local"), body=body)
    assert r.status == 200
    assert r.header("X-Served-By") == expected


# --------------------------------------------------------------------------
# Keep-alive, connection reuse, pipelining
# --------------------------------------------------------------------------


def test_connection_reuse_one_client(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with Client(p.port()) as c:
        for i in range(200):
            r = c.request("GET", f"/{i}")
            assert r.status == 200 and r.keep_alive
    assert len(a.requests) == 200
    assert a.conn_count == 1, a.conn_count


def test_connection_reuse_across_clients(proxy: Any, backend: Any, port: Any) -> None:
    """The pool is per server, not per client: 200 short client connections, few upstream ones."""
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    for i in range(200):
        assert get(p.port(), f"/{i}").status == 200
    assert len(a.requests) == 200
    assert a.conn_count <= 5, a.conn_count


def test_pool_is_lifo_and_idle_connections_expire(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a", "slow", delay=0.3)
    p = proxy(http_config(port(), [server("a", a)], global_={"tune": {"pool_idle_timeout": "1500ms"}}))
    results = _concurrent(p.port(), ["/1", "/2", "/3"])
    assert {r.status for r in results} == {200}
    assert a.conn_count == 3
    assert a.wait_for(lambda: len(a.open_connections()) == 3, 2)
    # Sequential requests now all reuse the most recently returned connection.
    conns = {get(p.port(), "/?delay=0").header("X-Conn") for _ in range(10)}
    assert len(conns) == 1 and a.conn_count == 3
    # Idle connections are closed after pool_idle_timeout (+ the 1 s sweep).
    assert a.wait_for(lambda: not a.open_connections(), 6), a.open_connections()


def test_server_closing_a_pooled_connection_is_harmless(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    for _ in range(5):
        assert get(p.port(), "/").status == 200
        a.close_all()  # the server closes its idle keep-alive connection
        time.sleep(0.05)
        assert get(p.port(), "/").status == 200


def test_reused_connection_closed_by_server_replays_safe_request_once(proxy: Any, backend: Any, port: Any) -> None:
    """Race: the server closes a pooled connection just as the proxy reuses it.  A GET is
    sent again on a new connection (nothing was processed)."""
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    assert get(p.port(), "/").status == 200
    (conn,) = a.open_connections()
    # Make the backend drop the next request it receives on the pooled connection.
    a.call(lambda: setattr(next(iter(a._protocols)), "drop_next", True))
    r = get(p.port(), "/again")
    assert r.status == 200
    assert [q.path for q in a.requests] == ["/", "/again"]  # processed once
    assert b"GET /again " in bytes(conn.data)  # after reaching the dropped connection
    assert a.conn_count == 2


def test_pipelined_requests_are_answered_in_order(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    targets = ["/1?mode=slow&delay=0.3", "/2", "/3?mode=chunked&size=100000", "/4?mode=slow&delay=0.1", "/5",
               "/6?mode=large&size=70000", "/7"]
    with Client(p.port()) as c:
        c.send(b"".join(request("GET", t) for t in targets))
        got = c.read(len(targets))
        assert [r.status for r in got] == [200] * len(targets)
        assert [r.body.split()[-1].decode() if r.body_len < 1000 else r.body_len for r in got] == [
            "/1", "/2", 100000, "/4", "/5", 70000, "/7"]
        # and the connection is still usable
        assert c.request("GET", "/8").status == 200
    assert [q.path for q in a.requests] == [t.split("?")[0] for t in targets] + ["/8"]


def test_pipelined_post_bodies(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    bodies = [b"x" * n for n in (0, 1, 1000, 70000, 5)]
    with Client(p.port()) as c:
        c.send(b"".join(request("POST", f"/{i}", body=b, headers=[("Content-Length", str(len(b)))])
                        for i, b in enumerate(bodies)))
        got = c.read(len(bodies))
    assert [int(r.header("X-Body-Length")) for r in got] == [len(b) for b in bodies]


def test_head_204_304_keep_the_connection_usable(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with connect(p.port()) as s:
        s.sendall(request("HEAD", "/h"))
        head, _ = _read_head(s)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
        s.sendall(request("GET", "/n?status=204") + request("GET", "/m?status=304") + request("GET", "/after"))
        got = ResponseReader(s).read(3)
    assert [r.status for r in got] == [204, 304, 200]
    assert got[2].body.endswith(b"/after\n")


def _read_head(s: socket.socket, timeout: float = 5) -> tuple[bytes, bytes]:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(65536)
        if not data:
            break
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


# --------------------------------------------------------------------------
# Bodies: chunked both ways, 100-continue, close-delimited
# --------------------------------------------------------------------------


def test_chunked_request_body(proxy: Any, backend: Any, port: Any) -> None:
    import hashlib

    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    pieces = [b"a" * 10, b"b" * 70000, b"c" * 3, b"d" * 16384]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(x), x) for x in pieces) + b"0\r\nX-Trailer: t\r\n\r\n"
    with Client(p.port()) as c:
        head = request("POST", "/up", headers=[("Transfer-Encoding", "chunked")])
        c.send(head + body[:100])
        time.sleep(0.1)
        c.send(body[100:5000])
        time.sleep(0.1)
        c.send(body[5000:])
        r = c.reader.read_one()
        assert r.status == 200
        assert int(r.header("X-Body-Length")) == sum(map(len, pieces))
        assert r.header("X-Body-Sha256") == hashlib.sha256(b"".join(pieces)).hexdigest()
        assert c.request("GET", "/next").status == 200
    (req, _) = a.requests
    assert req.header("Transfer-Encoding") == "chunked"


def test_chunked_response_body(proxy: Any, backend: Any, port: Any) -> None:
    from proxytest.backend import pattern_digest

    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with Client(p.port()) as c:
        for size, chunk in ((0, 1), (1, 1), (100000, 7000), (3 << 20, 65536)):
            r = c.request("GET", f"/c?mode=chunked&size={size}&chunk={chunk}")
            assert r.status == 200 and r.header("Transfer-Encoding") == "chunked"
            assert r.body_len == size and r.body_sha256 == pattern_digest(size)
            assert r.trailers == [(b"X-Trailer", b"done")]
    assert a.conn_count == 1


def test_expect_100_continue(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    body = b"z" * 50000
    with connect(p.port()) as s:
        s.sendall(request("POST", "/upload", headers=[("Expect", "100-continue"),
                                                       ("Content-Length", str(len(body)))]))
        head, rest = _read_head(s)
        assert head == b"HTTP/1.1 100 Continue\r\n\r\n" and rest == b""
        assert a.requests == []
        s.sendall(body)
        reader = ResponseReader(s)
        r = reader.read_one()
        assert r.status == 200 and int(r.header("X-Body-Length")) == len(body)
    assert a.requests[0].header("Expect") == "100-continue"


def test_close_delimited_response(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with connect(p.port()) as s:
        s.sendall(request("GET", "/e?mode=eof"))
        data, closed = read_until_close(s)
    assert closed and data.startswith(b"HTTP/1.1 200") and data.endswith(b"a GET /e\n")
    assert b"Connection: close" in data
    assert get(p.port(), "/x").status == 200
    assert a.conn_count == 2  # the close-delimited one was not reused


def test_server_connection_close_is_not_reused(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with Client(p.port()) as c:
        for i in range(3):
            r = c.request("GET", f"/{i}?mode=close")
            assert r.status == 200
            assert "close" not in (r.header("Connection") or "")  # the client keeps its connection
    assert a.conn_count == 3


# --------------------------------------------------------------------------
# WebSocket, HTTP/1.0
# --------------------------------------------------------------------------


def test_websocket_echo_through_the_tunnel(proxy: Any, backend: Any, port: Any) -> None:
    from websockets.sync.client import connect as ws_connect

    ws_backend = backend.ws()
    p = proxy(http_config(port(), [server("ws", ws_backend)], defaults={"timeouts": {"tunnel": "30s"}}))
    with ws_connect(f"ws://127.0.0.1:{p.port()}/chat", open_timeout=5, close_timeout=5) as ws:
        for msg in ["hello", "x" * 70000, b"\x00\x01binary"]:
            ws.send(msg)
            assert ws.recv(timeout=5) == msg
    (hs,) = ws_backend.handshakes
    assert hs["upgrade"].lower() == "websocket" and "upgrade" in hs["connection"].lower()
    assert hs["x-forwarded-for"] == "127.0.0.1"
    assert ws_backend.messages == 3
    lines = p.wait_log(1)
    assert " 101 " in lines[0]


def test_upgrade_refused_by_server_is_a_normal_response(proxy: Any, backend: Any, port: Any) -> None:
    """A server answering 200 to an Upgrade request: no tunnel, the response is relayed."""
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    r = exchange(p.port(), request("GET", "/", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")]))
    assert r[0].status == 200 and r[0].header("X-Served-By") == "a"


def test_http10_client(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with connect(p.port()) as s:
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        data, closed = read_until_close(s)
    assert closed and data.startswith(b"HTTP/1.1 200") and data.endswith(b"a GET /old\n")
    with connect(p.port()) as s:  # chunked on the server side becomes close-delimited for 1.0
        s.sendall(b"GET /c?mode=chunked&size=5000 HTTP/1.0\r\n\r\n")
        data, closed = read_until_close(s)
    assert closed and len(data.partition(b"\r\n\r\n")[2]) == 5000
    with Client(p.port()) as c:  # HTTP/1.0 keep-alive
        r1 = c.request("GET", "/k1", version="HTTP/1.0", host=None, headers=[("Connection", "keep-alive")])
        assert r1.status == 200 and r1.header("Connection") == "keep-alive"
        r2 = c.request("GET", "/k2", version="HTTP/1.0", host=None, headers=[("Connection", "keep-alive")])
        assert r2.status == 200
    assert [q.version for q in a.requests] == ["1.0"] * 4


# --------------------------------------------------------------------------
# Timeouts: 408, 504, keep-alive
# --------------------------------------------------------------------------


def test_slow_request_head_gets_408(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)], defaults={"timeouts": {"http_request": "500ms"}}))
    with connect(p.port()) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        data, closed = read_until_close(s, timeout=5)
        elapsed = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408 ") and closed
    assert 0.4 < elapsed < 3, elapsed
    assert a.conn_count == 0 and a.total_bytes == 0
    line = p.wait_log(1)[0]
    assert " 408 " in line and " cR--" in line


def test_http_request_timeout_covers_a_trickled_head(proxy: Any, backend: Any, port: Any) -> None:
    """Bytes arriving slowly do not extend the deadline (slowloris)."""
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)], defaults={"timeouts": {"http_request": "800ms"}}))
    with connect(p.port()) as s:
        t0 = time.monotonic()
        got = b""
        for ch in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1234567890":
            try:
                s.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - t0 > 4:
                break
        data, _closed = read_until_close(s, timeout=3)
        got += data
    assert got.startswith(b"HTTP/1.1 408 ")
    assert a.total_bytes == 0


def test_idle_client_is_closed_after_keep_alive_timeout(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)], defaults={"timeouts": {"http_keep_alive": "400ms"}}))
    with Client(p.port()) as c:
        assert c.request("GET", "/").status == 200
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=3)
        assert time.monotonic() - t0 < 2.5


def test_slow_server_gets_504(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a", "slow", delay=3)
    p = proxy(http_config(port(), [server("a", a)], defaults={"timeouts": {"server": "500ms"}}))
    with Client(p.port()) as c:
        t0 = time.monotonic()
        r = c.request("GET", "/")
        assert r.status == 504 and r.header("Connection") == "close"
        assert 0.4 < time.monotonic() - t0 < 2.5
        assert c.closed_by_peer()
    # The upstream connection was dropped, not returned to the pool.
    assert a.wait_for(lambda: not a.open_connections(), 3)
    line = p.wait_log(1)[0]
    assert " 504 " in line and " sH--" in line


def test_server_timeout_during_body_aborts(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)], defaults={"timeouts": {"server": "500ms"}}))
    with connect(p.port()) as s:
        s.sendall(request("GET", "/?mode=bad&kind=te-not-final&split=3"))
        data, closed = read_until_close(s, timeout=5)
    assert data.startswith(b"HTTP/1.1 200") and closed


# --------------------------------------------------------------------------
# Retries and redispatch
# --------------------------------------------------------------------------


def test_refused_server_is_retried_then_redispatched(proxy: Any, backend: Any, port: Any) -> None:
    b = backend("b")
    dead = f"127.0.0.1:{free_port()}"
    p = proxy(http_config(port(), [server("dead", dead), server("b", b)], defaults={"retries": 2}))
    t0 = time.monotonic()
    results = [get(p.port(), f"/{i}") for i in range(6)]
    assert [r.status for r in results] == [200] * 6
    assert {r.header("X-Served-By") for r in results} == {"b"}
    assert len(b.requests) == 6  # each request reached b exactly once
    assert time.monotonic() - t0 < 5
    lines = p.wait_log(6)
    # Requests first sent to "dead" were retried, then redispatched to b: retries logged.
    retries = [int(HTTPLOG.match(line)["retries"]) for line in lines]
    assert retries.count(2) >= 3 and set(retries) <= {0, 2}, lines


def test_all_servers_refused_is_503(proxy: Any, port: Any) -> None:
    p = proxy(http_config(port(), [server("d1", f"127.0.0.1:{free_port()}"),
                                   server("d2", f"127.0.0.1:{free_port()}")], defaults={"retries": 3}))
    with Client(p.port()) as c:
        t0 = time.monotonic()
        r = c.request("GET", "/")
        assert r.status == 503 and time.monotonic() - t0 < 3
        assert c.closed_by_peer()
    line = p.wait_log(1)[0]
    assert " 503 " in line and " SC--" in line and re.search(r" \d+/\d+/\d+/\d+/3 ", line), line


def test_no_redispatch_stays_on_the_server(proxy: Any, backend: Any, port: Any) -> None:
    b = backend("b")
    p = proxy(http_config(port(), [server("dead", f"127.0.0.1:{free_port()}"), server("b", b)],
                          defaults={"retries": 2, "redispatch": False}))
    statuses = Counter(get(p.port(), f"/{i}").status for i in range(4))
    assert statuses == {200: 2, 503: 2}


def test_connect_timeout_is_retried(proxy: Any, backend: Any, port: Any) -> None:
    """A server whose accept queue is full answers no SYN: connect times out, redispatch."""
    b = backend("b")
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fill = []
    try:
        for _ in range(4):  # fill the backlog so further SYNs are dropped
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(stuck.getsockname())
            fill.append(c)
        time.sleep(0.1)
        p = proxy(http_config(port(), [server("stuck", f"127.0.0.1:{stuck.getsockname()[1]}"), server("b", b)],
                              defaults={"retries": 1, "timeouts": {"connect": "300ms"}}))
        t0 = time.monotonic()
        rs = [get(p.port(), f"/{i}") for i in range(2)]
        assert [r.status for r in rs] == [200, 200]
        assert time.monotonic() - t0 < 4
    finally:
        for c in fill:
            c.close()
        stuck.close()


def test_request_that_reached_the_server_is_never_replayed(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    b = backend("b")
    p = proxy(http_config(port(), [server("a", a), server("b", b)], defaults={"retries": 3}))
    with Client(p.port()) as c:
        r = c.request("POST", "/pay?mode=reset", body=b"amount=10")
        assert r.status == 502
    assert len(a.requests) + len(b.requests) == 1
    r = get(p.port(), "/get?mode=reset")  # not even a GET on a fresh connection
    assert r.status == 502
    assert len(a.requests) + len(b.requests) == 2


# --------------------------------------------------------------------------
# Limits: maxconn (global, frontend, server) and the queue
# --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["global", "frontend"])
def test_maxconn_excess_connections_wait_and_are_not_reset(proxy: Any, backend: Any, port: Any, where: str) -> None:
    a = backend("a", "slow", delay=0.8)
    cfg = http_config(port(), [server("a", a)])
    if where == "global":
        cfg["global"]["maxconn"] = 2
    else:
        cfg["frontends"][0]["maxconn"] = 2
        cfg["frontends"][0]["backlog"] = 16
    p = proxy(cfg)
    t0 = time.monotonic()
    results = _concurrent(p.port(), [f"/{i}" for i in range(5)])
    assert [getattr(r, "status", r) for r in results] == [200] * 5
    assert a.max_active <= 2, a.max_active
    assert time.monotonic() - t0 >= 3 * 0.8 - 0.2  # three rounds of two (at most) at a time


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_maxconn_holds_under_a_burst_of_connections(proxy: Any, backend: Any, port: Any, loop: str) -> None:
    """Connections arriving together are accepted in one batch by the event loop: still
    at most maxconn are served at once, the others wait (also if they half-close or give
    up meanwhile), and no slot leaks."""
    a = backend("a", "slow", delay=0.6)
    cfg = http_config(port(), [server("a", a)], frontend={"maxconn": 2, "backlog": 64})
    p = proxy(cfg, event_loop=loop)
    socks = [connect(p.port()) for _ in range(8)]
    for i, s in enumerate(socks):
        s.sendall(request("GET", f"/{i}"))
    socks[3].shutdown(socket.SHUT_WR)  # a client that half-closes after its request
    socks[6].close()  # two that give up while waiting
    socks[7].close()
    results = {}
    for i, s in enumerate(socks[:6]):
        results[i] = ResponseReader(s).read_one(timeout=10).status
        s.close()
    assert results == dict.fromkeys(range(6), 200)
    assert a.max_active <= 2, a.max_active
    a.reset()
    assert [r.status for r in _concurrent(p.port(), ["/x", "/y"])] == [200, 200]
    assert a.max_active == 2  # both slots are free again


def test_server_maxconn_queues_requests(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a", "slow", delay=0.4)
    p = proxy(http_config(port(), [server("a", a, maxconn=1)], defaults={"timeouts": {"queue": "5s"}}))
    results = _concurrent(p.port(), [f"/{i}" for i in range(4)])
    assert [getattr(r, "status", r) for r in results] == [200] * 4
    assert a.max_active == 1
    lines = p.wait_log(4)
    tw = sorted(int(HTTPLOG.match(line)["Tw"]) for line in lines)
    assert tw[0] < 100 and tw[-1] >= 3 * 400 - 150, lines  # Tw: time spent in the queue


def test_client_reset_releases_its_server_slot_and_connection(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a", "slow", delay=3)
    p = proxy(http_config(port(), [server("a", a, maxconn=1)], defaults={"timeouts": {"queue": "5s"}}))
    inflight = connect(p.port())
    inflight.sendall(request("GET", "/inflight"))
    assert a.wait_for(lambda: a.active == 1, 5)
    queued = connect(p.port())
    queued.sendall(request("GET", "/queued"))
    time.sleep(0.2)
    for s in (queued, inflight):  # RST, not FIN: the clients are gone
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    assert a.wait_for(lambda: a.connections[0].eof, 1.5)  # the proxy closed the server side
    t0 = time.monotonic()
    r = get(p.port(), "/after?delay=0")
    assert r.status == 200 and time.monotonic() - t0 < 1.5  # the slot was free, not held for 3 s
    assert [q.path for q in a.requests] == ["/inflight", "/after"]  # "/queued" never went out
    lines = p.wait_log(3)
    assert sum(" CH--" in line for line in lines) == 2, lines


def test_queue_timeout_is_503(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a", "slow", delay=1.5)
    p = proxy(http_config(port(), [server("a", a, maxconn=1)], defaults={"timeouts": {"queue": "300ms"}}))
    results = _concurrent(p.port(), ["/1", "/2", "/3"])
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 503, 503], results
    assert len(a.requests) == 1
    lines = p.wait_log(3)
    assert sum(" sQ--" in line for line in lines) == 2, lines


def test_ipv6_and_dual_stack_binds(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    dual, v6 = port(), port("::1")
    p = proxy(http_config(dual, [server("a", a)], frontend={
        "bind": [f"[::]:{dual}", f"[::1]:{v6}"],
        "rules": [{"if": {"src": "127.0.0.0/8"}, "use_backend": "be"}]}))
    assert get(dual, "/v4").status == 200  # an IPv4 client on the [::] listener
    assert a.requests[-1].header("X-Forwarded-For") == "127.0.0.1"  # not ::ffff:127.0.0.1
    with socket.create_connection(("::1", v6), timeout=5) as s:
        s.sendall(request("GET", "/v6"))
        assert ResponseReader(s).read_one().status == 200
    assert a.requests[-1].header("X-Forwarded-For") == "::1"
    lines = p.wait_log(2)
    assert lines[0].startswith("127.0.0.1:") and lines[1].startswith("::1:")


# --------------------------------------------------------------------------
# Header rewriting
# --------------------------------------------------------------------------


def test_forwarded_headers_and_hop_by_hop_removal(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with Client(p.port(), source="127.0.0.5") as c:
        r = c.request("GET", "/h", host="app.example.com:8443", headers=[
            ("X-Forwarded-For", "198.18.0.9"),
            ("X-Forwarded-Proto", "https"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "drop me"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("X-Kept", "yes"),
        ])
        assert r.status == 200
    (req,) = a.requests
    assert req.header_all("Host") == ["app.example.com:8443"]
    assert req.header_all("X-Forwarded-For") in (["198.18.0.9", "127.0.0.5"], ["198.18.0.9, 127.0.0.5"])
    assert req.header_all("X-Forwarded-Proto") == ["http"]
    for name in (*HOP_BY_HOP, "x-secret"):
        assert req.header(name) is None, (name, req.headers)
    assert req.header("X-Kept") == "yes"
    assert req.keep_alive


def test_forwardfor_can_be_disabled(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)], frontend={"forwardfor": False}))
    assert get(p.port(), "/").status == 200
    assert a.requests[0].header("X-Forwarded-For") is None
    assert a.requests[0].header("X-Forwarded-Proto") == "http"


def test_response_hop_by_hop_headers_are_removed(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    rh = "Connection: X-Private|X-Private: 1|Keep-Alive: timeout=5|Proxy-Connection: x|Trailer: X|X-Kept: yes"
    with Client(p.port()) as c:
        r = c.request("GET", f"/?rh={quote(rh)}")
        assert r.status == 200
        for name in ("x-private", "keep-alive", "proxy-connection", "trailer"):
            assert r.header(name) is None, (name, r.headers)
        assert r.header("Connection") in (None, "keep-alive")
        assert r.header("X-Kept") == "yes" and r.header("X-Served-By") == "a"
        assert c.request("GET", "/again").status == 200  # still keep-alive


def test_raw_header_bytes_are_forwarded_as_received(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    head = (b"GET /raw?q=%41 HTTP/1.1\r\nhOsT: a.test\r\nx-MiXeD-case:  spaced  value\t\r\n"
            b"X-Dup: 1\r\nX-Dup: 2\r\nX-Empty:\r\n\r\n")
    assert exchange(p.port(), head)[0].status == 200
    raw = bytes(a.connections[0].data)
    assert raw.startswith(b"GET /raw?q=%41 HTTP/1.1\r\nhOsT: a.test\r\nx-MiXeD-case:  spaced  value\t\r\n"
                          b"X-Dup: 1\r\nX-Dup: 2\r\nX-Empty:\r\n")


# --------------------------------------------------------------------------
# Graceful stop
# --------------------------------------------------------------------------


def test_sigterm_lets_in_flight_requests_finish(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a", "slow", delay=1.2)
    p = proxy(http_config(port(), [server("a", a)]))
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(get(p.port(), "/inflight")))
    worker.start()
    assert a.wait_for(lambda: a.active == 1, 5)
    idle = Client(p.port())  # an idle keep-alive client is closed at once
    assert idle.request("GET", "/quick?mode=small").status == 200
    p.signal(signal.SIGTERM)
    assert idle.closed_by_peer(timeout=2)
    idle.close()
    time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(p.addr(), timeout=2).close()
    worker.join(10)
    assert result and result[0].status == 200 and result[0].body.endswith(b"/inflight\n")
    assert result[0].header("Connection") == "close"
    assert p.wait(10) == 0
    assert "Traceback" not in p.stderr()


def test_hard_stop_after_bounds_the_graceful_stop(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a", "hang")
    p = proxy(http_config(port(), [server("a", a)], global_={"hard_stop_after": "800ms"}))
    s = connect(p.port())
    s.sendall(request("GET", "/forever"))
    assert a.wait_for(lambda: a.active == 1, 5)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert 0.6 < time.monotonic() - t0 < 4
    _data, closed = read_until_close(s, timeout=2)
    assert closed
    s.close()
    assert "hard_stop_after" in p.stderr()


# --------------------------------------------------------------------------
# Access log
# --------------------------------------------------------------------------

HTTPLOG = re.compile(
    r"^(?P<client>127\.0\.0\.1:\d+) \[(?P<date>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}\.\d{3})\] "
    r"(?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) "
    r"(?P<TR>-?\d+)/(?P<Tw>-?\d+)/(?P<Tc>-?\d+)/(?P<Tr>-?\d+)/(?P<Ta>\d+) "
    r"(?P<status>\d{3}) (?P<bytes>\d+) - - (?P<term>[-\w]{4}) "
    r"(?P<actconn>\d+)/(?P<feconn>\d+)/(?P<beconn>\d+)/(?P<srvconn>\d+)/(?P<retries>\d+) "
    r"(?P<srvqueue>\d+)/(?P<bkqueue>\d+) \"(?P<request>[^\"]*)\"$"
)


def test_http_access_log_line(proxy: Any, backend: Any, port: Any) -> None:
    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)]))
    with Client(p.port()) as c:
        r1 = c.request("GET", "/logged?x=1")
        r2 = c.request("GET", "/slowly?mode=slow&delay=0.3")
    lines = p.wait_log(2)
    assert len(lines) == 2, lines
    m1, m2 = (HTTPLOG.match(line) for line in lines)
    assert m1 and m2, lines
    assert m1["frontend"] == "fe" and m1["backend"] == "be" and m1["server"] == "a"
    assert m1["status"] == "200" and m1["term"] == "----" and m1["request"] == "GET /logged?x=1 HTTP/1.1"
    assert int(m1["bytes"]) == _head_len(r1) + len(r1.body)
    assert int(m2["Tr"]) >= 250 and int(m2["Ta"]) >= int(m2["Tr"])
    assert int(m2["Tw"]) >= 0 and int(m2["Tc"]) >= 0 and int(m2["TR"]) >= 0
    assert r2.status == 200


def _head_len(r: Any) -> int:
    return len(b"HTTP/1.1 200 OK\r\n") + sum(len(n) + 2 + len(v) + 2 for n, v in r.headers) + 2


def test_access_log_for_errors_and_json(proxy: Any, backend: Any, port: Any) -> None:
    import json

    a = backend("a")
    p = proxy(http_config(port(), [server("a", a)], global_={"log": {"access": "stdout", "format": "json"}}))
    assert get(p.port(), "/j").status == 200
    assert exchange(p.port(), b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")[0].status == 400
    lines = p.wait_log(2)
    ok, bad = (json.loads(line) for line in lines)
    assert ok["status"] == 200 and ok["backend"] == "be" and ok["server"] == "a" and ok["request"] == "GET /j HTTP/1.1"
    assert {"client", "date", "frontend", "TR", "Tw", "Tc", "Tr", "Ta", "bytes", "termination"} <= set(ok)
    assert bad["status"] == 400 and bad["termination"].startswith("PR")


def test_access_log_to_a_file_and_disabled_per_frontend(proxy: Any, backend: Any, port: Any, tmp_path: Any) -> None:
    a = backend("a")
    path = tmp_path / "access.log"
    cfg = http_config(port(), [server("a", a)], global_={"log": {"access": str(path)}})
    cfg["frontends"].append({"name": "quiet", "bind": [f"127.0.0.1:{free_port()}"], "default_backend": "be",
                             "log": False})
    p = proxy(cfg)
    assert get(p.port("fe"), "/to-file").status == 200
    assert get(p.port("quiet"), "/not-logged").status == 200
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (path.exists() and path.read_text()):
        time.sleep(0.05)
    time.sleep(0.3)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "/to-file" in lines[0]
    assert p.log_lines() == []


# --------------------------------------------------------------------------
# Plain asyncio event loop
# --------------------------------------------------------------------------


def test_smoke_with_plain_asyncio_event_loop(proxy: Any, backend: Any, port: Any) -> None:
    from proxytest.backend import pattern_digest

    a, b = backend("a"), backend("b")
    p = proxy(http_config(port(), [server("a", a), server("b", b)]), event_loop="asyncio")
    assert "uvloop" not in p.stderr()
    assert served(p.port(), [f"/{i}" for i in range(10)]) == ["a", "b"] * 5
    with Client(p.port()) as c:
        r = c.request("POST", "/post", body=b"q" * 100000)
        assert r.status == 200 and r.header("X-Body-Length") == "100000"
        r = c.request("GET", "/c?mode=chunked&size=300000")
        assert r.body_sha256 == pattern_digest(300000)
        r = c.request("GET", "/l?mode=large&size=2M")
        assert r.body_len == 2 << 20 and r.body_sha256 == pattern_digest(2 << 20)
    assert exchange(p.port(), b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")[0].status == 400
    assert a.conn_count + b.conn_count <= 3
