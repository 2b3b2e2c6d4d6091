"""Rule matching: every condition, first match wins, AND inside one `if`, any/not;
and the request view the HTTP data path hands to the router."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import pytest

from fleetproxy.config import parse
from fleetproxy.datapath.http import HttpClient
from fleetproxy.routing import compile_condition, compile_rules, uses


class Req:
    def __init__(self, method: str = "GET", path: str = "/", host: str = "", headers: dict[str, str] | None = None,
                 src: str = "127.0.0.1", sni: str | None = None) -> None:
        self.method, self.path, self.host, self.sni = method, path, host, sni
        self.src = ipaddress.ip_address(src)
        self._headers = {k.lower(): v for k, v in (headers or {}).items()}

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())


def cond(c: dict[str, Any], mode: str = "http") -> Any:
    doc = {
        "frontends": [{"name": "fe", "mode": mode, "bind": ["127.0.0.1:1"], "default_backend": "be",
                       "rules": [{"if": c, "use_backend": "be"}]}],
        "backends": [{"name": "be", "mode": mode}],
    }
    return compile_condition(parse(doc).frontends[0].rules[0].if_)


CASES = [
    ({"path": "/a"}, Req(path="/a"), True),
    ({"path": "/a"}, Req(path="/a/"), False),
    ({"path": ["/a", "/b"]}, Req(path="/b"), True),
    ({"path_prefix": "/api/"}, Req(path="/api/v1"), True),
    ({"path_prefix": "/api/"}, Req(path="/api"), False),
    ({"path_prefix": ["/x", "/y"]}, Req(path="/yz"), True),
    ({"path_regex": r"\.(png|jpg)$"}, Req(path="/img/a.png"), True),
    ({"path_regex": r"\.(png|jpg)$"}, Req(path="/img/a.png.html"), False),
    ({"path_regex": r"^/v[0-9]+/"}, Req(path="/v2/users"), True),
    ({"path_regex": "users"}, Req(path="/v2/users/1"), True),  # search, not match
    ({"host": "static.example.com"}, Req(host="static.example.com"), True),
    ({"host": "static.example.com"}, Req(host="www.example.com"), False),
    ({"host": "Static.Example.com"}, Req(host="static.example.com"), True),
    ({"host": "*.example.com"}, Req(host="a.example.com"), True),
    ({"host": "*.example.com"}, Req(host="a.b.example.com"), True),
    ({"host": "*.example.com"}, Req(host="example.com"), False),
    ({"host": "*.example.com"}, Req(host="badexample.com"), False),
    ({"host": "*.example.com"}, Req(host=".example.com"), False),
    ({"host": ["a.test", "*.example.com"]}, Req(host="a.test"), True),
    ({"host": "a.test"}, Req(host=""), False),
    ({"header": {"name": "X-Canary", "value": "1"}}, Req(headers={"x-canary": "1"}), True),
    ({"header": {"name": "X-Canary", "value": "1"}}, Req(headers={"X-Canary": "10"}), False),
    ({"header": {"name": "X-Canary", "value": "1"}}, Req(), False),
    ({"header": {"name": "X-Canary", "value": "yes"}}, Req(headers={"X-Canary": "YES"}), False),
    ({"header": {"name": "User-Agent", "regex": "(?i)curl/"}}, Req(headers={"User-Agent": "Curl/8.0"}), True),
    ({"header": {"name": "User-Agent", "regex": "^curl/"}}, Req(headers={"User-Agent": "x curl/8"}), False),
    ({"header": {"name": "User-Agent", "regex": "curl"}}, Req(), False),
    ({"header": {"name": "X-Debug"}}, Req(headers={"X-Debug": ""}), True),
    ({"header": {"name": "X-Debug", "present": True}}, Req(), False),
    ({"header": {"name": "X-Debug", "present": False}}, Req(), True),
    ({"header": {"name": "X-Debug", "present": False}}, Req(headers={"X-Debug": "1"}), False),
    ({"method": "POST"}, Req(method="POST"), True),
    ({"method": ["put", "delete"]}, Req(method="DELETE"), True),
    ({"method": "POST"}, Req(method="GET"), False),
    ({"src": "127.0.0.0/8"}, Req(src="127.1.2.3"), True),
    ({"src": ["198.18.0.0/15", "::1"]}, Req(src="198.19.255.1"), True),
    ({"src": ["198.18.0.0/15", "::1"]}, Req(src="::1"), True),
    ({"src": ["198.18.0.0/15"]}, Req(src="127.0.0.1"), False),
    ({"src": "127.0.0.1"}, Req(src="::ffff:127.0.0.1"), True),  # v4-mapped v6 clients
    ({"not": {"path_prefix": "/admin"}}, Req(path="/"), True),
    ({"not": {"path_prefix": "/admin"}}, Req(path="/admin/x"), False),
    ({"any": [{"path": "/a"}, {"host": "b.test"}]}, Req(path="/a"), True),
    ({"any": [{"path": "/a"}, {"host": "b.test"}]}, Req(host="b.test"), True),
    ({"any": [{"path": "/a"}, {"host": "b.test"}]}, Req(path="/b", host="a.test"), False),
    # keys inside one `if` are ANDed
    ({"path_prefix": "/api/", "method": "POST"}, Req(method="POST", path="/api/x"), True),
    ({"path_prefix": "/api/", "method": "POST"}, Req(method="GET", path="/api/x"), False),
    ({"path_prefix": "/api/", "method": "POST"}, Req(method="POST", path="/x"), False),
    ({"host": "a.test", "header": {"name": "X"}, "src": "127.0.0.0/8"},
     Req(host="a.test", headers={"X": "1"}), True),
    ({"host": "a.test", "header": {"name": "X"}, "src": "127.0.0.0/8"},
     Req(host="a.test", headers={"X": "1"}, src="198.18.0.1"), False),
    ({"not": {"any": [{"method": "GET"}, {"method": "HEAD"}]}, "path": "/w"}, Req(method="POST", path="/w"), True),
    ({"not": {"any": [{"method": "GET"}, {"method": "HEAD"}]}, "path": "/w"}, Req(method="HEAD", path="/w"), False),
    ({"not": {"not": {"path": "/x"}}}, Req(path="/x"), True),
]


@pytest.mark.parametrize(("c", "req", "expected"), CASES, ids=[f"{i}-{next(iter(c))}" for i, (c, _, _) in enumerate(CASES)])
def test_condition(c: dict[str, Any], req: Req, expected: bool) -> None:
    assert cond(c)(req) is expected


def test_sni_condition_in_tcp_mode() -> None:
    m = cond({"sni": "*.example.com"}, mode="tcp")
    assert m(Req(sni="a.example.com")) is True
    assert m(Req(sni="example.org")) is False
    assert m(Req(sni=None)) is False


def rules_router(rules: list[dict[str, Any]], default: str | None = "default") -> Any:
    backends = {r["use_backend"] for r in rules} | ({default} if default else set())
    doc = {
        "frontends": [{"name": "fe", "bind": ["127.0.0.1:1"], "rules": rules,
                       **({"default_backend": default} if default else {})}],
        "backends": [{"name": b} for b in sorted(backends)],
    }
    fe = parse(doc).frontends[0]
    return compile_rules(fe.rules, fe.default_backend)


def test_first_match_wins() -> None:
    route = rules_router([
        {"if": {"path_prefix": "/api/"}, "use_backend": "api"},
        {"if": {"path_prefix": "/api/v2/"}, "use_backend": "never"},
        {"if": {"host": "static.example.com"}, "use_backend": "static"},
        {"if": {"header": {"name": "X-Canary", "value": "1"}}, "use_backend": "canary"},
    ])
    assert route(Req(path="/api/v2/x")) == "api"
    assert route(Req(path="/img", host="static.example.com", headers={"X-Canary": "1"})) == "static"
    assert route(Req(path="/img", headers={"X-Canary": "1"})) == "canary"
    assert route(Req(path="/img")) == "default"


def test_no_rule_and_no_default_routes_nowhere() -> None:
    route = rules_router([{"if": {"path": "/x"}, "use_backend": "x"}], default=None)
    assert route(Req(path="/y")) is None
    assert route(Req(path="/x")) == "x"


def test_only_used_attributes_are_read() -> None:
    """Views may compute attributes lazily: a path rule never touches headers or src."""

    class Strict:
        method = "GET"
        path = "/p"

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"router read {name}")

    route = rules_router([{"if": {"path": "/p", "method": "GET"}, "use_backend": "p"}])
    assert route(Strict()) == "p"


def test_uses_reports_the_attributes_rules_need() -> None:
    fe = parse({
        "frontends": [{"name": "fe", "bind": ["127.0.0.1:1"], "default_backend": "b", "rules": [
            {"if": {"path": "/"}, "use_backend": "b"},
            {"if": {"any": [{"method": "GET"}, {"not": {"header": {"name": "X"}}}]}, "use_backend": "b"}]}],
        "backends": [{"name": "b"}],
    }).frontends[0]
    assert uses(fe.rules, "header") is True
    assert uses(fe.rules, "host") is False
    assert uses(fe.rules, "path", "src") is True


# --------------------------------------------------------------------------
# The request view of the HTTP data path
# --------------------------------------------------------------------------


def http_view(target: bytes, host: bytes, head: bytes, src: str = "127.0.0.1") -> HttpClient:
    worker = SimpleNamespace(loop=None, limits=None, wheel=None)
    c = HttpClient(worker, SimpleNamespace())
    c.target, c.host_b, c.head, c.src_ip = target, host, head, src
    return c


@pytest.mark.parametrize(("target", "path"), [
    (b"/a/b?x=1", "/a/b"),
    (b"/", "/"),
    (b"/a%20b", "/a%20b"),
    (b"http://h.example.com/p/q?z", "/p/q"),
    (b"http://h.example.com", "/"),
])
def test_view_path(target: bytes, path: str) -> None:
    assert http_view(target, b"", b"").path == path


@pytest.mark.parametrize(("host", "expected"), [
    (b"Example.COM", "example.com"),
    (b"a.test:8080", "a.test"),
    (b"[::1]:80", "[::1]"),
    (b"[::1]", "[::1]"),
    (b"", ""),
])
def test_view_host(host: bytes, expected: str) -> None:
    assert http_view(b"/", host, b"").host == expected


def test_view_headers_are_case_insensitive_first_value() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nx-canary:  1 \r\nX-Canary: 2\r\nX-Empty:\r\n\r\n"
    v = http_view(b"/", b"a", head)
    assert v.header("X-CANARY") == "1"
    assert v.header("x-empty") == ""
    assert v.header("X-Missing") is None
    assert v.header("Canary") is None  # no suffix matches
    assert str(v.src) == "127.0.0.1"


def test_method_condition_matches_the_http_views_bytes_method() -> None:
    """HttpClient.method is the raw request-line bytes (b"DELETE"); it must still match."""
    m = cond({"method": ["delete", "PATCH"]})
    assert m(Req(method=b"DELETE")) is True  # type: ignore[arg-type]
    assert m(Req(method=b"GET")) is False  # type: ignore[arg-type]
    assert m(Req(method="PATCH")) is True
