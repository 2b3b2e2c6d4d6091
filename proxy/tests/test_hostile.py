"""Hostile input.  Every bad request gets its status, the connection closes, and the
backend receives NOTHING; every badly framed response becomes a 502 and its upstream
connection is dropped; and a hypothesis property over request heads."""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from proxytest.backend import INVALID_RESPONSES
from proxytest.client import (
    Client,
    ResponseReader,
    connect,
    parse_first,
    read_until_close,
    request,
    status_of,
)
from proxytest.configs import http_config, server
from proxytest.proxy import free_port

LIMITS = {"max_request_line": 1024, "max_header_size": 4096, "max_headers": 20}


@pytest.fixture(scope="module")
def hostile(module_proxy: Any, module_backend: Any) -> tuple[Any, Any]:
    """A proxy (small limits, short request timeout) whose backend must never see a byte."""
    b = module_backend("victim")
    p = module_proxy(http_config(free_port(), [server("victim", b)], global_={"tune": LIMITS},
                                 defaults={"timeouts": {"http_request": "2s"}}))
    return p, b


def send_raw(port: int, data: bytes, pause_after: int | None = None, timeout: float = 6) -> tuple[bytes, bool]:
    with connect(port, timeout=timeout) as s:
        try:
            if pause_after is None:
                s.sendall(data)
            else:
                s.sendall(data[:pause_after])
                time.sleep(0.1)
                s.sendall(data[pause_after:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may close before reading everything: what it answered counts
        return read_until_close(s, timeout)


H = b"GET / HTTP/1.1\r\nHost: a.test\r\n"
P = b"POST /submit HTTP/1.1\r\nHost: a.test\r\n"

HOSTILE = [
    # limits
    ("request-line-too-long", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ("request-line-too-long-unfinished", b"GET /" + b"a" * 5000, 414),
    ("headers-too-large", H + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 300) for i in range(15)) + b"\r\n", 431),
    ("headers-too-large-unfinished", H + b"X-Big: " + b"v" * 5000, 431),
    ("too-many-headers", H + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431),
    # invalid characters
    ("ctl-in-value", H + b"X-A: b\x01c\r\n\r\n", 400),
    ("nul-in-value", H + b"X-A: b\x00c\r\n\r\n", 400),
    ("del-in-value", H + b"X-A: b\x7fc\r\n\r\n", 400),
    ("cr-in-value", H + b"X-A: b\rc\r\n\r\n", 400),
    ("space-in-name", H + b"X A: b\r\n\r\n", 400),
    ("space-before-colon", H + b"X-A : b\r\n\r\n", 400),
    ("separator-in-name", H + b"X(A): b\r\n\r\n", 400),
    ("high-byte-in-name", H + b"X-\xe9: b\r\n\r\n", 400),
    ("no-colon", H + b"NoColonHere\r\n\r\n", 400),
    ("empty-name", H + b": value\r\n\r\n", 400),
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bad-method", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("lower-method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bad-version", b"GET / HTTP/x.1\r\nHost: a\r\n\r\n", 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("space-before-request-line", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # obs-fold and bare LF
    ("obs-fold", H + b"X-A: b\r\n c\r\n\r\n", 400),
    ("obs-fold-tab", H + b"X-A: b\r\n\tc\r\n\r\n", 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-in-headers", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400),
    ("bare-lf-end", H + b"X-A: b\n\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    # Host
    ("missing-host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # framing: Content-Length and Transfer-Encoding
    ("cl-and-te", P + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", P + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("differing-cl", P + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl-list", P + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    ("cl-not-a-number", P + b"Content-Length: abc\r\n\r\n", 400),
    ("cl-negative", P + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-plus", P + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-overflow", P + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("te-gzip", P + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    ("te-chunked-not-final", P + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-two-headers", P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-identity", P + b"Transfer-Encoding: identity\r\n\r\nabc", 400),
    ("te-xchunked", P + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-space-before-colon", P + b"Content-Length: 0\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    # chunk sizes
    ("chunk-size-not-hex", P + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", P + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", P + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", P + b"Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", P + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("chunk-data-too-long", P + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", 400),
    ("chunk-ext-ctl", P + b"Transfer-Encoding: chunked\r\n\r\n3;\x01\r\nabc\r\n0\r\n\r\n", 400),
    # other
    ("connect", b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", 405),
]


@pytest.mark.parametrize(("data", "status"), [(d, s) for _, d, s in HOSTILE], ids=[n for n, _, _ in HOSTILE])
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "two-writes"])
def test_hostile_request_is_refused_and_never_forwarded(hostile: tuple[Any, Any], data: bytes, status: int,
                                                        split: bool) -> None:
    p, b = hostile
    raw, closed = send_raw(p.port(), data, pause_after=len(data) // 2 if split else None)
    assert status_of(raw) == status, raw[:300]
    assert closed, "the connection must close after a bad request"
    r = parse_first(raw)
    assert r.header("Connection") == "close" and int(r.header("Content-Length")) == len(r.body)
    assert b.total_bytes == 0 and b.conn_count == 0, bytes(b.connections[0].data[:300]) if b.connections else ""


def test_bad_request_after_a_good_one_on_the_same_connection(module_proxy: Any, module_backend: Any) -> None:
    b = module_backend("keepalive")
    p = module_proxy(http_config(free_port(), [server("b", b)]))
    with Client(p.port()) as c:
        assert c.request("GET", "/ok").status == 200
        sent = b.total_bytes
        c.send(b"GET /bad HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n")
        r = c.reader.read_one()
        assert r.status == 400
        assert c.closed_by_peer()
    assert b.total_bytes == sent  # nothing of the bad request reached the server
    assert [q.path for q in b.requests] == ["/ok"]


def test_pipelined_bad_request_is_not_forwarded(module_proxy: Any, module_backend: Any) -> None:
    b = module_backend("pipeline")
    p = module_proxy(http_config(free_port(), [server("b", b)]))
    with Client(p.port()) as c:
        c.send(request("GET", "/1") + request("GET", "/2") + b"GET /3 HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"
               + request("GET", "/4"))
        got = c.read(3)
        assert [r.status for r in got] == [200, 200, 400]
        assert c.closed_by_peer()
    assert [q.path for q in b.requests] == ["/1", "/2"]


def test_invalid_chunk_after_the_head_was_forwarded_aborts_both_sides(proxy: Any, backend: Any, port: Any) -> None:
    """A body that turns invalid after the head already reached the server: the server
    connection is aborted (it never sees the bad bytes) and the client gets a 400."""
    b = backend("b", "hang")
    p = proxy(http_config(port(), [server("b", b)]))
    with connect(p.port()) as s:
        s.sendall(P + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        assert b.wait_for(lambda: b.total_bytes > 0, 5)
        s.sendall(b"zz\r\nnope\r\n0\r\n\r\n")
        raw, closed = read_until_close(s, 5)
    assert status_of(raw) == 400 and closed
    assert b.wait_for(lambda: not b.open_connections(), 3)
    assert b"zz" not in bytes(b.connections[0].data)


# --------------------------------------------------------------------------
# Upstream responses with invalid framing
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(module_proxy: Any, module_backend: Any) -> tuple[Any, Any]:
    b = module_backend("upstream")
    p = module_proxy(http_config(free_port(), [server("up", b)], defaults={"retries": 0}))
    return p, b


@pytest.mark.parametrize("kind", INVALID_RESPONSES)
def test_invalid_response_framing_is_502_and_not_reused(upstream: tuple[Any, Any], kind: str) -> None:
    p, b = upstream
    b.close_all()
    b.reset()
    with Client(p.port()) as c:
        r = c.request("GET", f"/?mode=bad&kind={kind}")
        assert r.status == 502, (r.status, r.headers, r.body[:200])
        assert r.header("Connection") == "close" and b"502" in r.body
        assert c.closed_by_peer()
    # The proxy dropped the upstream connection although the server kept it open.
    assert b.wait_for(lambda: not b.open_connections(), 3), b.open_connections()
    assert Client(p.port()).request("GET", "/next").status == 200
    assert b.conn_count == 2
    lines = p.wait_log(lambda lines: any("/?mode=bad&kind=" + kind + " " in x for x in lines))
    line = next(x for x in lines if "/?mode=bad&kind=" + kind + " " in x)
    assert " 502 " in line and " PH--" in line, line


def test_bytes_after_a_complete_response_drop_the_connection(upstream: tuple[Any, Any]) -> None:
    p, b = upstream
    b.close_all()
    b.reset()
    with Client(p.port()) as c:
        r = c.request("GET", "/?mode=bad&kind=extra-bytes")
        assert r.status == 200 and r.body == b"ok"
        r2 = c.request("GET", "/after")  # the client connection is fine
        assert r2.status == 200 and r2.body.endswith(b"/after\n")
    assert b.wait_for(lambda: len(b.open_connections()) <= 1, 3)
    assert b.conn_count == 2  # the polluted connection was not reused


def test_close_delimited_response_with_non_final_chunked(upstream: tuple[Any, Any]) -> None:
    """Transfer-Encoding without a final chunked in a *response* is legal: the body runs
    until the server closes (RFC 9112 6.3)."""
    p, _b = upstream
    with connect(p.port()) as s:
        s.sendall(request("GET", "/?mode=bad&kind=te-not-final"))
        raw, closed = read_until_close(s, 5)
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\nbody-until-close") and closed


def test_invalid_chunk_mid_response_aborts_the_client(upstream: tuple[Any, Any]) -> None:
    """Once the head went out a 502 is impossible: the client connection is aborted, so
    it can never mistake the truncated body for a complete one."""
    p, b = upstream
    b.close_all()
    b.reset()
    with connect(p.port()) as s:
        s.sendall(request("GET", "/?mode=bad&kind=bad-chunk&split=0.3"))
        reader = ResponseReader(s)
        got = reader.read(1, timeout=5)
        assert got == [] and reader.eof
        assert reader.cur is not None and reader.cur.status == 200 and not reader.cur.complete
    assert b.wait_for(lambda: not b.open_connections(), 3)


def test_server_closing_mid_response_aborts_the_client(proxy: Any, backend: Any, port: Any) -> None:
    b = backend("b")
    p = proxy(http_config(port(), [server("b", b)]))
    with connect(p.port()) as s:
        s.sendall(request("GET", "/?mode=large&size=50M"))
        reader = ResponseReader(s, keep_body=False)
        time.sleep(0.2)
        b.close_all()
        got = reader.read(1, timeout=10)
    assert got == [] and reader.eof and reader.cur is not None and reader.cur.body_len < 50 << 20


# --------------------------------------------------------------------------
# Property: random request heads
# --------------------------------------------------------------------------

TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
FIELD_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
REQUEST_LINE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e]+ HTTP/1\.[01]$")
STATUS_LINE = re.compile(rb"^HTTP/1\.1 [1-5]\d\d [\t\x20-\x7e]*\r\n")


def assert_valid_head(head: bytes) -> None:
    """RFC 9112 grammar for what the proxy sends upstream: CRLF only, token names,
    no CTLs in values, no obs-fold."""
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    assert REQUEST_LINE.match(lines[0]), lines[0]
    for line in lines[1:]:
        assert b"\n" not in line and b"\r" not in line, line
        name, sep, value = line.partition(b":")
        assert sep and TOKEN.match(name), line
        assert FIELD_VALUE.match(value), line


@pytest.fixture(scope="module")
def fuzz(module_proxy: Any, module_backend: Any) -> tuple[Any, Any, dict[int, int]]:
    b = module_backend("fuzz")
    p = module_proxy(http_config(free_port(), [server("fuzz", b)], global_={"tune": LIMITS},
                                 defaults={"timeouts": {"http_request": "1s"}}))
    return p, b, {}


NAME_CHARS = st.one_of(
    st.sampled_from(list(b"abcXYZ-_0129!#$%&'*+.^`|~")),
    st.sampled_from(list(b" \t:;,()[]{}<>@?=\"/\\\x00\x01\x7f\x80\xff\r\n")),
)
names = st.one_of(
    st.sampled_from([b"X-Test", b"Accept", b"Cookie", b"Connection", b"Keep-Alive", b"TE", b"Trailer", b"Via",
                     b"X-Forwarded-For", b"X-Forwarded-Proto", b"Proxy-Connection", b"Host"]),
    st.lists(NAME_CHARS, min_size=0, max_size=12).map(bytes),
)
values = st.one_of(
    st.binary(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.encode),
    st.sampled_from([b"close", b"keep-alive", b"X-Test, close", b" padded ", b"a\r\n b", b"a\nb", b"\xff\xfe"]),
)
separators = st.sampled_from([b": ", b":", b":\t", b" : ", b":  "])
line_ends = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n"])
FRAMING = (b"content-length", b"transfer-encoding", b"expect", b"upgrade")


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"GET", b"GeT", b"G T"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"/%00", b"*", b"http://x.test/p", b"/\x7f", b"/a b"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1"]))
    lines = [method + b" " + target + b" " + version]
    if draw(st.integers(0, 9)):
        lines.append(b"Host: " + draw(st.sampled_from([b"a.test", b"a.test:80", b"[::1]", b"", b"a b"])))
    for _ in range(draw(st.integers(0, 6))):
        name = draw(names)
        if name.lower() in FRAMING:
            continue
        lines.append(name + draw(separators) + draw(values))
    ends = [draw(line_ends) for _ in lines]
    head = b"".join(line + end for line, end in zip(lines, ends, strict=True)) + draw(line_ends)
    if draw(st.integers(0, 19)) == 0:
        head = draw(st.binary(min_size=1, max_size=200))
    return head


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(head=heads())
@example(head=b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n")
@example(head=b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Drop\r\nX-Drop: 1\r\n\r\n")
def test_property_random_request_heads(fuzz: tuple[Any, Any, dict[int, int]], head: bytes) -> None:
    p, b, validated = fuzz
    assert p.running()
    with connect(p.port(), timeout=5) as s:
        try:
            s.sendall(head)
            s.shutdown(socket.SHUT_WR)  # the proxy closes once it answered
        except OSError:
            pass
        raw, closed = read_until_close(s, timeout=5)
    # Either a well-formed response, or (for an incomplete head) a silent close.
    if raw:
        assert STATUS_LINE.match(raw), raw[:200]
        head, sep, _ = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        status = int(head[9:12])
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        assert status in (200, 400, 405, 408, 414, 431, 501, 505), raw[:200]
        if status >= 400:
            assert closed and fields[b"Connection"] == b"close"
    else:
        assert closed
    # Whatever reached the server is a valid head.
    for conn in list(b.connections):
        data = bytes(conn.data)
        start = validated.get(conn.index, 0)
        while True:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                break
            assert_valid_head(data[start : end + 4])
            start = end + 4
        validated[conn.index] = start
        assert not conn.errors, (conn.errors, data[-500:])
    for req in b.requests:
        for name, _value in req.headers:
            assert name.lower() not in (b"connection", b"keep-alive", b"te", b"trailer", b"proxy-connection")
    assert p.running()


def test_property_proxy_still_serves_after_fuzzing(fuzz: tuple[Any, Any, dict[int, int]]) -> None:
    p, _b, _ = fuzz
    with Client(p.port()) as c:
        assert c.request("GET", "/still-alive").status == 200
    assert "Traceback" not in p.stderr() and "Error" not in p.stderr(), p.stderr()[-3000:]


def test_llhttp_and_the_grammar_agree_on_samples() -> None:
    """The head validator used above accepts what llhttp accepts for plain heads."""
    ok = b"GET /a?b HTTP/1.1\r\nHost: a\r\nX-A:  v v\t\r\nX-B:\r\n\r\n"
    assert_valid_head(ok)
    httptools.HttpRequestParser(object()).feed_data(ok)
    for bad in (b"GET / HTTP/1.1\r\nX A: b\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\x01\r\n\r\n"):
        with pytest.raises(AssertionError):
            assert_valid_head(bad)
