"""Data-path pieces that are hard to reach deterministically through sockets: the
chunked-body end finder, header stripping, error pages, and the TCP relay's handling of
a server that speaks (or closes) before its connection is handed to the client."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetproxy.config import parse
from fleetproxy.datapath.common import (
    ERROR_PAGES,
    ChunkedEnd,
    TimerWheel,
    connection_tokens,
    strip_headers,
)
from fleetproxy.datapath.http import T_TUNNEL, TUNNEL, HttpClient
from fleetproxy.datapath.tcp import TcpClient
from fleetproxy.runtime import Runtime


def chunked(pieces: list[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n" + trailers + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=300), max_size=8),
    trailers=st.sampled_from([b"", b"X-T: 1\r\n", b"A: b\r\nC: d\r\n"]),
    after=st.binary(max_size=20),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_chunked_end_is_found_at_any_split(pieces: list[bytes], trailers: bytes, after: bytes,
                                           cuts: list[int]) -> None:
    body = chunked(pieces, trailers)
    data = body + after
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    finder = ChunkedEnd()
    end = None
    for lo, hi in itertools.pairwise(bounds):
        e = finder.feed(data[lo:hi])
        if e >= 0:
            end = lo + e
            break
    assert end == len(body)


@pytest.mark.parametrize("bad", [b"zz\r\n", b"-1\r\n", b"\r\n", b"1234567890abcdef0\r\n", b"0x5\r\n"])
def test_chunked_end_rejects_invalid_sizes(bad: bytes) -> None:
    with pytest.raises(ValueError):
        ChunkedEnd().feed(bad)


def test_chunked_end_limits_line_length() -> None:
    with pytest.raises(ValueError):
        ChunkedEnd().feed(b"5;" + b"x" * 5000)


def test_strip_headers_removes_only_whole_names() -> None:
    head = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection-Extra: keep\r\nTE: x\r\n"
            b"Tea: keep\r\nkeep-alive: 1\r\n\r\n")
    out = strip_headers(head, frozenset((b"connection", b"te", b"keep-alive")))
    assert out == b"GET / HTTP/1.1\r\nHost: a\r\nConnection-Extra: keep\r\nTea: keep\r\n\r\n"


def test_connection_tokens() -> None:
    assert connection_tokens(b" Close ,X-Foo,, keep-alive ") == [b"close", b"x-foo", b"keep-alive"]


@pytest.mark.parametrize("code", sorted(ERROR_PAGES))
def test_error_pages_are_complete_responses(code: int) -> None:
    page = ERROR_PAGES[code]
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % code)
    assert b"\r\nConnection: close" in head
    assert b"\r\nContent-Length: %d" % len(body) in head


# --------------------------------------------------------------------------
# TCP: the server speaks first, before the relay is attached
# --------------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.eof = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000)


class EagerServerLoop:
    """The real loop, except that create_connection delivers the server's first bytes
    (and FIN) to the new protocol before returning it, as a fast server does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, early: list[bytes], close: bool = False) -> None:
        self._loop = loop
        self.early = early
        self.close = close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_connection(self, factory: Any, host: str, port: int) -> tuple[Any, Any]:
        proto = factory()
        transport = FakeTransport()
        proto.connection_made(transport)
        for data in self.early:
            if data:
                proto.data_received(data)
            elif not proto.eof_received():
                transport.close()
        if self.close:
            proto.connection_lost(None)
        return transport, proto


def tcp_client(loop: Any) -> tuple[TcpClient, Any]:
    cfg = parse({"frontends": [{"name": "fe", "mode": "tcp", "bind": ["127.0.0.1:1"], "default_backend": "be"}],
                 "backends": [{"name": "be", "mode": "tcp", "servers": [{"name": "s", "address": "127.0.0.1:2"}]}]})
    rt = Runtime(cfg)
    worker = SimpleNamespace(loop=loop, wheel=TimerWheel(loop))
    client = TcpClient(worker, rt.frontends["fe"])
    client.transport = FakeTransport()
    client.backend = rt.backends["be"]
    client.server = rt.backends["be"].servers[0]
    return client, client.server


@pytest.mark.parametrize(("early", "close"), [
    ([b"220 greeting\r\n"], False),
    ([b"220 greeting\r\n", b""], False),
    ([b"220 ", b"greeting\r\n", b""], True),
])
def test_tcp_server_bytes_before_attach_are_relayed(early: list[bytes], close: bool) -> None:
    async def run() -> TcpClient:
        client, server = tcp_client(EagerServerLoop(asyncio.get_running_loop(), early, close))
        await client._open(server)
        return client

    client = asyncio.run(run())
    assert b"".join(client.transport.written) == b"220 greeting\r\n"
    assert client.transport.eof == (b"" in early)
    if close:
        assert client.closed and client.upstream is None


# --------------------------------------------------------------------------
# HTTP tunnel: backpressure must not swap the tunnel timeout for another
# --------------------------------------------------------------------------


def test_tunnel_timeout_survives_backpressure() -> None:
    cfg = parse({
        "defaults": {"timeouts": {"tunnel": "1h", "server": "1s", "client": "2s"}},
        "frontends": [{"name": "fe", "bind": ["127.0.0.1:1"], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [{"name": "s", "address": "127.0.0.1:2"}]}],
    })
    rt = Runtime(cfg)
    loop = asyncio.new_event_loop()
    try:
        client = HttpClient(SimpleNamespace(loop=loop, limits=cfg.global_.tune, wheel=TimerWheel(loop)),
                            rt.frontends["fe"])
        client.transport = FakeTransport()
        client.backend = rt.backends["be"]
        client.upstream = SimpleNamespace(transport=FakeTransport())  # type: ignore[assignment]
        client.state = TUNNEL
        for event in (client.pause_writing, client.resume_writing):
            event()  # the client stops reading, then catches up
            assert client._tkind == T_TUNNEL, event.__name__
            assert client._deadline - loop.time() > 3000, event.__name__
        client._cancel_timer()
    finally:
        loop.close()
