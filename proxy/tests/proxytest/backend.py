"""A configurable HTTP/1.1 test backend on its own event loop, in a thread.

Every connection and every raw byte received is recorded, so a test can assert
that "the backend received nothing".  The response is chosen per request by
the query string (``/x?mode=slow&delay=2``) or else by the backend's default
mode:

``small``    200 (or ``status=N``), body ``"<name> <METHOD> <path>\\n"``
``large``    ``size=N`` bytes of :func:`pattern` with Content-Length, streamed
             with backpressure (``size`` may be ``100M``, ``64K``)
``chunked``  the same bytes with Transfer-Encoding: chunked, in ``chunk=N``
             pieces (close-delimited for an HTTP/1.0 request)
``slow``     waits ``delay=S`` seconds, then as ``small``
``hang``     never answers
``close``    as ``small`` with ``Connection: close``, then closes
``eof``      no Content-Length: the body ends when the connection closes
``bad``      one of :data:`BAD_RESPONSES` (``kind=NAME``); the connection stays
             open after invalid framing (the proxy must drop it) and closes after a
             close-delimited body; ``split=S`` sends the head, the rest S seconds later
``reset``    aborts the connection without answering

Every response names the backend (``X-Served-By``), the connection (``X-Conn``,
an index into :attr:`Backend.connections`), the request number on it
(``X-Req``), and the request body's length and SHA-256 (``X-Body-Length``,
``X-Body-Sha256``).  ``Expect: 100-continue`` gets ``100 Continue`` first unless
``expect=ignore``.  ``rh=Name: value|Other: value`` adds response headers.
``stall_after=N&stall=S`` stops reading for S seconds once
N request-body bytes arrived (backpressure tests).

:class:`WsBackend` is a WebSocket echo server built on the ``websockets`` package.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httptools

BLOCK = bytes(range(256)) * 1024  # 256 KiB; the pattern is this block repeated
RECORD_LIMIT = 1 << 20  # raw bytes kept per connection (all are counted)

BAD_RESPONSES: dict[str, bytes] = {
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "dup-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-bare-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "bad-char": b"HTTP/1.1 200 OK\r\nX-A: b\x01c\r\nContent-Length: 2\r\n\r\nok",
    "bad-name": b"HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 2\r\n\r\nok",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
    "garbage": b"hello world\r\n\r\n",
    # Legal framings that still end the upstream connection:
    "extra-bytes": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    "te-not-final": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nbody-until-close",
}
# The cases above that are invalid framing (the proxy must answer 502).
INVALID_RESPONSES = (
    "cl-te", "dup-cl", "bad-chunk", "chunk-bare-lf", "obs-fold", "bare-lf", "bad-char",
    "bad-name", "bad-status", "bad-cl", "garbage",
)


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def pattern(size: int, piece: int = len(BLOCK)) -> Iterator[bytes]:
    """``size`` bytes of the repeating 0..255 pattern (byte i is i % 256), in pieces."""
    piece = min(piece, len(BLOCK) - 256)
    offset = 0
    while offset < size:
        start = offset % 256
        n = min(piece, size - offset)
        yield BLOCK[start : start + n]
        offset += n


@functools.lru_cache(maxsize=32)
def pattern_digest(size: int) -> str:
    h = hashlib.sha256()
    for part in pattern(size):
        h.update(part)
    return h.hexdigest()


@dataclass
class ConnRecord:
    index: int
    peer: tuple[str, int]
    opened: float = field(default_factory=time.monotonic)
    closed: float | None = None
    eof: bool = False
    nbytes: int = 0
    data: bytearray = field(default_factory=bytearray)
    requests: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class RequestRecord:
    conn: int
    seq: int
    method: str = ""
    url: bytes = b""
    version: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    keep_alive: bool = True
    body_len: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    complete: bool = False
    started: float = field(default_factory=time.monotonic)
    query: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return urlsplit(self.url.decode("latin-1")).path

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == key]

    @property
    def body_sha256(self) -> str:
        return self.sha.hexdigest()


class _LoopThread:
    """Runs ``self._serve()`` on a fresh event loop in a daemon thread."""

    name = "backend"
    port = 0
    host = "127.0.0.1"

    def start(self) -> _LoopThread:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._shutdown())
            self.loop.close()

        self.thread = threading.Thread(target=run, name=f"test-backend-{self.name}", daemon=True)
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError(f"backend {self.name} did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def call(self, fn: Callable[[], Any], timeout: float = 5) -> Any:
        """Run ``fn`` in the backend's loop and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _serve(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _shutdown(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class Backend(_LoopThread):
    def __init__(self, name: str, mode: str = "small", port: int = 0, **defaults: Any) -> None:
        self.name = name
        self.mode = mode
        self.port = port
        self.defaults = {k: str(v) for k, v in defaults.items()}
        self.connections: list[ConnRecord] = []
        self.requests: list[RequestRecord] = []
        self.total_bytes = 0
        self.conn_count = 0
        self.active = 0
        self.max_active = 0  # most requests in progress at once
        self._protocols: set[_BackendConn] = set()

    async def _serve(self) -> None:
        self.server = await self.loop.create_server(
            lambda: _BackendConn(self), self.host, self.port, backlog=1024
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self.server.close()
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.abort()
        await asyncio.sleep(0)

    # -- what tests look at ------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything recorded so far (open connections keep being recorded)."""

        def do() -> None:
            self.requests = []
            self.total_bytes = 0
            self.conn_count = 0
            self.max_active = self.active
            self.connections = [c for c in self.connections if c.closed is None]

        self.call(do)

    def open_connections(self) -> list[ConnRecord]:
        return [c for c in self.connections if c.closed is None]

    def close_all(self) -> None:
        """Close every client connection (e.g. to empty the proxy's pool)."""

        def do() -> None:
            for proto in list(self._protocols):
                if proto.transport is not None:
                    proto.transport.close()

        self.call(do)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


class _BackendConn(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.loop = backend.loop
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue[RequestRecord | None] = asyncio.Queue()
        self.cur: RequestRecord | None = None
        self.broken = False
        self.closing = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.task: asyncio.Task[None] | None = None
        self.inflight: set[int] = set()  # id() of requests whose head arrived, not yet answered
        self.drop_next = False  # set by a test: close on the next bytes, unanswered

    # -- asyncio ------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        b = self.b
        self.rec = ConnRecord(index=b.conn_count, peer=transport.get_extra_info("peername"))
        b.conn_count += 1
        b.connections.append(self.rec)
        b._protocols.add(self)
        self.task = self.loop.create_task(self._respond_loop())

    def connection_lost(self, exc: Exception | None) -> None:
        self.rec.closed = time.monotonic()
        self.b._protocols.discard(self)
        self.can_write.set()
        if self.task is not None:
            self.task.cancel()
        for key in list(self.inflight):
            self._done(key)
        if self.cur is not None and not self.cur.complete:
            self.b.requests.append(self.cur)  # recorded, incomplete

    def eof_received(self) -> bool:
        self.rec.eof = True
        self.queue.put_nowait(None)
        return True

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        b = self.b
        rec = self.rec
        b.total_bytes += len(data)
        rec.nbytes += len(data)
        room = RECORD_LIMIT - len(rec.data)
        if room > 0:
            rec.data += data[:room]
        if self.broken:
            return
        if self.drop_next:
            # As a server whose keep-alive timeout fires just as a request arrives.
            self.broken = True
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade this server does not do: answer the request normally (it was
            # queued complete) and ignore whatever follows on the connection.
            self.broken = True
        except httptools.HttpParserError as exc:
            rec.errors.append(f"parse error: {exc}")
            self.broken = True
            self._fail(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _fail(self, reply: bytes) -> None:
        if self.task is not None:
            self.task.cancel()
        self.transport.write(reply)
        self.transport.close()

    # -- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.rec.requests += 1
        self.cur = RequestRecord(conn=self.rec.index, seq=self.rec.requests)

    def on_url(self, url: bytes) -> None:
        assert self.cur is not None
        self.cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        p = self.parser
        cur.method = p.get_method().decode()
        cur.version = p.get_http_version()
        cur.keep_alive = p.should_keep_alive()
        query = dict(self.b.defaults)
        query.update(parse_qsl(urlsplit(cur.url.decode("latin-1")).query))
        cur.query = query
        expect = cur.header("expect")
        if expect is not None and expect.lower() == "100-continue" and query.get("expect") != "ignore":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        b = self.b
        self.inflight.add(id(cur))
        b.active += 1
        b.max_active = max(b.max_active, b.active)

    def _done(self, key: int) -> None:
        if key in self.inflight:
            self.inflight.discard(key)
            self.b.active -= 1

    def on_body(self, body: bytes) -> None:
        cur = self.cur
        assert cur is not None
        before = cur.body_len
        cur.body_len += len(body)
        cur.sha.update(body)
        stall_after = cur.query.get("stall_after")
        if stall_after is not None and before < parse_size(stall_after) <= cur.body_len:
            self.transport.pause_reading()
            self.loop.call_later(float(cur.query.get("stall", "1")), self._unstall)

    def _unstall(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def on_message_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        cur.complete = True
        self.cur = None
        self.b.requests.append(cur)
        self.queue.put_nowait(cur)

    # -- responses ----------------------------------------------------------------------------
    async def _write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise ConnectionError("closed")
        self.transport.write(data)
        await self.can_write.wait()

    async def _respond_loop(self) -> None:
        try:
            while True:
                req = await self.queue.get()
                if req is None:  # the client sent FIN: answer what is queued, then close
                    self.closing = True
                    if self.queue.empty():
                        break
                    continue
                try:
                    keep = await self._respond(req)
                finally:
                    self._done(id(req))
                if not keep or not req.keep_alive or (self.closing and self.queue.empty()):
                    break
            if self.transport is not None:
                self.transport.close()
        except (asyncio.CancelledError, ConnectionError):
            pass

    def _head(self, req: RequestRecord, status: int, extra: list[str]) -> bytes:
        b = self.b
        lines = [
            f"HTTP/1.1 {status} {_REASON.get(status, 'Status')}",
            f"X-Served-By: {b.name}",
            f"X-Conn: {req.conn}",
            f"X-Req: {req.seq}",
            f"X-Body-Length: {req.body_len}",
            f"X-Body-Sha256: {req.body_sha256}",
            *extra,
            *(h for h in req.query.get("rh", "").split("|") if h),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _respond(self, req: RequestRecord) -> bool:
        """Send one response; False to close the connection after it."""
        q = req.query
        mode = q.get("mode", self.b.mode)
        if mode == "slow":
            await asyncio.sleep(float(q.get("delay", "1")))
            mode = "small"
        if mode == "hang":
            await asyncio.sleep(3600)
            return False
        if mode == "reset":
            self.transport.abort()
            return False
        if mode == "bad":
            raw = BAD_RESPONSES[q.get("kind", "garbage")]
            split = float(q.get("split", "0"))
            if split:
                end = raw.find(b"\r\n\r\n") + 4
                await self._write(raw[:end])
                await asyncio.sleep(split)
                raw = raw[end:]
            await self._write(raw)
            # Invalid framing: stay connected, so a test sees that the proxy drops the
            # connection; a legal close-delimited body must end with the connection.
            return q.get("kind", "garbage") in INVALID_RESPONSES or q.get("kind") == "extra-bytes"
        status = int(q.get("status", "200"))
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if mode in ("small", "close", "eof"):
            body = f"{self.b.name} {req.method} {req.path}\n".encode()
            extra = ["Content-Type: text/plain"]
            if mode == "eof":
                extra.append("Connection: close")
            elif status not in (204, 304):
                extra.append(f"Content-Length: {len(body)}")
            if mode == "close":
                extra.append("Connection: close")
            await self._write(self._head(req, status, extra) + (b"" if no_body else body))
            return mode == "small"
        size = parse_size(q.get("size", "1M"))
        if mode == "large":
            await self._write(self._head(req, status, [f"Content-Length: {size}"]))
            if not no_body:
                for part in pattern(size, int(q.get("piece", str(len(BLOCK))))):
                    await self._write(part)
            return True
        if mode == "chunked":
            piece = parse_size(q.get("chunk", "16K"))
            if req.version == "1.0":
                await self._write(self._head(req, status, ["Connection: close"]))
                if not no_body:
                    for part in pattern(size, piece):
                        await self._write(part)
                return False
            await self._write(self._head(req, status, ["Transfer-Encoding: chunked"]))
            if not no_body:
                for part in pattern(size, piece):
                    await self._write(b"%x\r\n%s\r\n" % (len(part), part))
                await self._write(b"0\r\nX-Trailer: done\r\n\r\n")
            return True
        raise ValueError(f"unknown backend mode {mode!r}")


_REASON = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
    304: "Not Modified", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
    503: "Service Unavailable",
}


class WsBackend(_LoopThread):
    """A WebSocket echo server; records the handshake request headers it saw."""

    def __init__(self, name: str = "ws") -> None:
        self.name = name
        self.handshakes: list[dict[str, str]] = []
        self.messages = 0

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        async def echo(ws: Any) -> None:
            with contextlib.suppress(Exception):
                async for message in ws:
                    self.messages += 1
                    await ws.send(message)

        def record(connection: Any, request: Any) -> None:
            self.handshakes.append({k.lower(): v for k, v in request.headers.raw_items()})

        self.server = await serve(echo, self.host, 0, process_request=record)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)


class TcpBackend(_LoopThread):
    """A raw TCP server for TCP-mode tests; records connections and bytes like :class:`Backend`.

    ``echo``        echoes everything; when the client half-closes it sends
                    ``"EOF <name> <bytes received>\\n"`` and closes.
    ``server-first`` sends ``"hello <name>\\n"`` and half-closes at once, keeps reading,
                    and closes when the client half-closes.
    ``sink``        reads and counts; on the client's FIN answers the count and closes.
    """

    def __init__(self, name: str, mode: str = "echo") -> None:
        self.name = name
        self.mode = mode
        self.port = 0
        self.connections: list[ConnRecord] = []
        self.total_bytes = 0
        self.conn_count = 0
        self._protocols: set[_TcpConn] = set()

    async def _serve(self) -> None:
        self.server = await self.loop.create_server(lambda: _TcpConn(self), self.host, 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self.server.close()
        for proto in list(self._protocols):
            proto.transport.abort()
        await asyncio.sleep(0)

    def open_connections(self) -> list[ConnRecord]:
        return [c for c in self.connections if c.closed is None]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        return Backend.wait_for(self, predicate, timeout)  # type: ignore[arg-type]


class _TcpConn(asyncio.Protocol):
    def __init__(self, backend: TcpBackend) -> None:
        self.b = backend
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        b = self.b
        self.rec = ConnRecord(index=b.conn_count, peer=transport.get_extra_info("peername"))
        b.conn_count += 1
        b.connections.append(self.rec)
        b._protocols.add(self)
        if b.mode == "server-first":
            transport.write(f"hello {b.name}\n".encode())
            transport.write_eof()

    def data_received(self, data: bytes) -> None:
        rec = self.rec
        self.b.total_bytes += len(data)
        rec.nbytes += len(data)
        room = RECORD_LIMIT - len(rec.data)
        if room > 0:
            rec.data += data[:room]
        if self.b.mode == "echo":
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.rec.eof = True
        if self.b.mode in ("echo", "sink"):
            self.transport.write(f"EOF {self.b.name} {self.rec.nbytes}\n".encode())
        self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.rec.closed = time.monotonic()
        self.b._protocols.discard(self)
