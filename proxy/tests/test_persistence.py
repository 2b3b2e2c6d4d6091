"""Session persistence: cookies (insert, prefix, rewrite) and stick on source, with
drain / maint / down semantics (HAProxy's)."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest
from proxytest.client import ResponseReader, request
from proxytest.configs import http_config, server
from proxytest.control import (
    Api,
    CookieBackend,
    connections_by_pid,
    get_from,
    served_by,
    wait_until,
    with_admin,
)


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _cookie_proxy(proxy, backend, port, tmp_path, cookie: dict, n: int = 2, backend_cls=None, **kw):
    bs = []
    for i in range(1, n + 1):
        if backend_cls is None:
            bs.append(backend(f"b{i}"))
        else:
            b = backend_cls(f"b{i}").start()
            backend.started.append(b)
            bs.append(b)
    servers = [server("s1", bs[0], cookie="a")] + [server(f"s{i}", b) for i, b in enumerate(bs[1:], 2)]
    cfg = http_config(port(), servers, backend={"cookie": cookie}, **kw)
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    return p, Api(adm.socket), bs


def _get(p, target="/", cookie: str | None = None, src: str | None = None):
    headers = [("Cookie", cookie)] if cookie is not None else None
    return get_from(p.port(), target, src=src, headers=headers)


def test_cookie_insert(proxy, backend, port, tmp_path):
    p, _, (b1, b2) = _cookie_proxy(proxy, backend, port, tmp_path, {"name": "SRV"})
    first = _get(p)
    setc = first.header("Set-Cookie")
    srv_cookie = {"b1": "a", "b2": "s2"}[served_by(first)]
    assert setc == f"SRV={srv_cookie}; path=/"
    assert first.header("Cache-Control") is None
    # The client presents it: always the same server; not inserted again (HAProxy).
    for _ in range(8):
        r = _get(p, cookie=f"SRV={srv_cookie}")
        assert served_by(r) == served_by(first)
        assert r.header("Set-Cookie") is None, r.headers
    # Without indirect the server sees the cookie.
    assert b1.requests[-1].header("cookie") == "SRV=a" or b2.requests[-1].header("cookie") == "SRV=s2"
    # Each server by its cookie value (default: the server's name).
    assert served_by(_get(p, cookie="x=1; SRV=s2; y=2")) == "b2"
    assert served_by(_get(p, cookie="SRV=a")) == "b1"
    # An unknown value is ignored: balanced, and a cookie is inserted.
    seen = Counter()
    for _ in range(4):
        r = _get(p, cookie="SRV=nosuch")
        seen[served_by(r)] += 1
        assert r.header("Set-Cookie") in ("SRV=a; path=/", "SRV=s2; path=/")
    assert seen == Counter({"b1": 2, "b2": 2})


def test_cookie_insert_indirect_nocache_httponly_secure_domain(proxy, backend, port, tmp_path):
    p, _, (b1, _) = _cookie_proxy(proxy, backend, port, tmp_path, {
        "name": "SRV", "mode": "insert", "indirect": True, "nocache": True, "httponly": True,
        "secure": True, "domain": "example.test"})
    r = _get(p, cookie="x=1")
    who = served_by(r)
    value = {"b1": "a", "b2": "s2"}[who]
    assert r.header("Set-Cookie") == f"SRV={value}; path=/; domain=example.test; HttpOnly; Secure"
    assert r.header("Cache-Control") == "private"
    # Pinned: no cookie emitted, nothing made uncacheable.
    r = _get(p, cookie="x=1; SRV=a; y=2")
    assert served_by(r) == "b1"
    assert r.header("Set-Cookie") is None and r.header("Cache-Control") is None
    # indirect: the server never sees the persistence cookie; other cookies are kept.
    assert b1.requests[-1].header_all("cookie") == ["x=1; y=2"]
    _get(p, cookie="SRV=a")
    assert b1.requests[-1].header_all("cookie") == []


def test_cookie_prefix(proxy, backend, port, tmp_path):
    p, _, (b1, b2) = _cookie_proxy(proxy, backend, port, tmp_path, {"name": "JSESSIONID", "mode": "prefix"},
                                   backend_cls=CookieBackend)
    r = _get(p, "/?setcookie=JSESSIONID%3Dabc123")
    who = served_by(r)
    prefix = {"b1": "a", "b2": "s2"}[who]
    assert r.header("Set-Cookie") == f"JSESSIONID={prefix}~abc123; Path=/"
    # No Set-Cookie from the application: nothing added.
    assert _get(p).header("Set-Cookie") is None
    for _ in range(4):
        r = _get(p, cookie="JSESSIONID=s2~xyz; other=1")
        assert served_by(r) == "b2"
    # The prefix is removed: the application finds the cookie it set.
    assert b2.requests[-1].header("cookie") == "JSESSIONID=xyz; other=1"
    r = _get(p, cookie="JSESSIONID=a~q")
    assert served_by(r) == "b1" and b1.requests[-1].header("cookie") == "JSESSIONID=q"


def test_cookie_rewrite(proxy, backend, port, tmp_path):
    p, _, (_b1, _b2) = _cookie_proxy(proxy, backend, port, tmp_path, {"name": "SRV", "mode": "rewrite"},
                                   backend_cls=CookieBackend)
    r = _get(p, "/?setcookie=SRV%3Dplaceholder")
    prefix = {"b1": "a", "b2": "s2"}[served_by(r)]
    assert r.header("Set-Cookie") == f"SRV={prefix}; Path=/"
    for _ in range(4):
        assert served_by(_get(p, cookie="SRV=s2")) == "b2"
        assert served_by(_get(p, cookie="SRV=a")) == "b1"


def test_cookie_maxidle_maxlife(proxy, backend, port, tmp_path):
    p, _, _ = _cookie_proxy(proxy, backend, port, tmp_path,
                            {"name": "SRV", "maxidle": "30s", "maxlife": "1h"})
    now = int(time.time())
    r = _get(p)
    value = {"b1": "a", "b2": "s2"}[served_by(r)]
    name, _, rest = r.header("Set-Cookie").partition("=")
    val, _, attrs = rest.partition(";")
    srv, last, first = val.split("|")
    assert name == "SRV" and srv == value
    assert abs(int(last, 36) - now) <= 2 and abs(int(first, 36) - now) <= 2
    assert "Max-Age=3600" in attrs
    # Fresh dates: pinned, and the last-seen date refreshed with the first one kept.
    fresh = f"SRV=a|{_b36(now - 5)}|{_b36(now - 600)}"
    for _ in range(4):
        r = _get(p, cookie=fresh)
        assert served_by(r) == "b1"
    srv, last, first = r.header("Set-Cookie").split(";")[0].split("=")[1].split("|")
    assert srv == "a" and int(last, 36) >= now and first == _b36(now - 600)
    # Idle too long, or too old: the cookie is ignored (balanced again).
    for stale in (f"SRV=a|{_b36(now - 100)}|{_b36(now - 100)}", f"SRV=a|{_b36(now)}|{_b36(now - 7200)}",
                  "SRV=a"):
        seen = Counter(served_by(_get(p, cookie=stale)) for _ in range(4))
        assert seen == Counter({"b1": 2, "b2": 2}), (stale, seen)


def _sources(n: int) -> list[str]:
    return [f"127.0.0.{i}" for i in range(2, 2 + n)]


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_stick_on_source(proxy, backend, port, tmp_path, mode):
    bs = [backend(f"b{i}") for i in range(1, 4)]
    cfg = http_config(port(), [server(f"s{i}", b) for i, b in enumerate(bs, 1)], mode=mode,
                      backend={"stick": {"on": "source", "expire": "30m", "size": 1000}})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    pinned = {}
    for src in _sources(6):
        seen = {served_by(get_from(p.port(), src=src)) for _ in range(5)}
        assert len(seen) == 1, (src, seen)
        pinned[src] = seen.pop()
    assert len(set(pinned.values())) == 3, pinned  # the first request of each source balanced

    # drain: pinned clients stay, new ones go elsewhere; maint and down: pinned ones move.
    src_b1 = [s for s, b in pinned.items() if b == "b1"]
    api.patch("be", "s1", state="drain")
    for src in src_b1:
        assert {served_by(get_from(p.port(), src=src)) for _ in range(3)} == {"b1"}
    for src in _sources(12)[6:]:
        assert served_by(get_from(p.port(), src=src)) != "b1"
    api.patch("be", "s1", state="maint")
    for src in src_b1:
        moved = {served_by(get_from(p.port(), src=src)) for _ in range(3)}
        assert len(moved) == 1 and "b1" not in moved, moved  # re-pinned elsewhere
    api.patch("be", "s1", state="ready")
    src_b2 = [s for s, b in pinned.items() if b == "b2"]
    api.patch("be", "s2", health="down")
    for src in src_b2:
        assert served_by(get_from(p.port(), src=src)) != "b2"


def test_stick_on_source_shared_by_two_workers(proxy, backend, port, tmp_path):
    bs = [backend(f"b{i}") for i in range(1, 4)]
    cfg = http_config(port(), [server(f"s{i}", b) for i, b in enumerate(bs, 1)],
                      backend={"stick": {"on": "source"}},
                      global_={"workers": 2, "tune": {"reuseport": True}})  # connections spread evenly
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    pids = Api(adm.socket).worker_pids()
    assert len(pids) == 2
    for src in _sources(3):
        # The worker that pins a new source tells the others through the master: until that
        # message arrives (well under a second) another worker may pin it elsewhere.
        first = served_by(get_from(p.port(), src=src))
        time.sleep(0.3)
        socks, seen = [], {first}
        try:
            for _ in range(12):  # held open at once: both workers take some
                s = socket.create_connection(("127.0.0.1", p.port()), timeout=10, source_address=(src, 0))
                socks.append(s)
                s.sendall(request("GET", "/"))
                seen.add(served_by(ResponseReader(s).read_one()))
            by_pid = connections_by_pid(pids, p.port())
            assert all(by_pid.values()), by_pid
        finally:
            for s in socks:
                s.close()
        assert len(seen) == 1, (src, seen)


def test_cookie_drain_keeps_pinned_clients_maint_and_down_move_them(proxy, backend, port, tmp_path):
    p, api, (b1, _b2, _b3) = _cookie_proxy(proxy, backend, port, tmp_path, {"name": "SRV"}, n=3)
    api.patch("be", "s1", state="drain")
    for _ in range(6):
        r = _get(p, cookie="SRV=a")
        assert served_by(r) == "b1"
    new = Counter(served_by(_get(p)) for _ in range(12))
    assert new == Counter({"b2": 6, "b3": 6})
    assert api.server("be", "s1")["usable"] is False

    api.patch("be", "s1", state="maint")
    before = len(b1.requests)
    for _ in range(4):
        r = _get(p, cookie="SRV=a")
        assert served_by(r) in ("b2", "b3")
        # Re-pinned to the server that answered.
        assert r.header("Set-Cookie") == f"SRV={ {'b2': 's2', 'b3': 's3'}[served_by(r)] }; path=/"

    api.patch("be", "s1", state="ready", health="down")
    for _ in range(4):
        assert served_by(_get(p, cookie="SRV=a")) in ("b2", "b3")
    assert len(b1.requests) == before  # maint and down took nothing
    api.patch("be", "s1", health="up")
    assert wait_until(lambda: served_by(_get(p, cookie="SRV=a")) == "b1", 2)
