"""Raw HTTP/1.1 clients for tests: bytes in, parsed responses out, every wait bounded."""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass, field

import httptools

DEFAULT_TIMEOUT = 10.0


@dataclass
class Response:
    status: int = 0
    version: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    body_len: int = 0
    sha: object = field(default_factory=hashlib.sha256)
    keep_alive: bool = True
    complete: bool = False
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == key]

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")

    @property
    def body_sha256(self) -> str:
        return self.sha.hexdigest()  # type: ignore[attr-defined]


class ResponseReader:
    """Parses responses from a socket, one by one (interim 1xx responses included).

    ``keep_body`` False keeps only the length and SHA-256 of bodies (large transfers).
    """

    def __init__(self, sock: socket.socket, keep_body: bool = True) -> None:
        self.sock = sock
        self.keep_body = keep_body
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.cur: Response | None = None
        self.eof = False
        self.raw = bytearray()
        self._in_headers = False

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.cur = Response()
        self._in_headers = True

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        (self.cur.headers if self._in_headers else self.cur.trailers).append((name, value))

    def on_headers_complete(self) -> None:
        assert self.cur is not None
        self._in_headers = False
        self.cur.status = self.parser.get_status_code()
        self.cur.version = self.parser.get_http_version()
        self.cur.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        assert self.cur is not None
        self.cur.body_len += len(body)
        self.cur.sha.update(body)  # type: ignore[attr-defined]
        if self.keep_body:
            self.cur.body += body

    def on_message_complete(self) -> None:
        assert self.cur is not None
        self.cur.complete = True
        self.done.append(self.cur)
        self.cur = None

    def feed(self, data: bytes) -> None:
        if len(self.raw) < 65536:
            self.raw += data[:65536]
        self.parser.feed_data(data)

    def read(self, n: int = 1, timeout: float = DEFAULT_TIMEOUT) -> list[Response]:
        """Until ``n`` responses are complete (or EOF, or the timeout: then what there is)."""
        deadline = time.monotonic() + timeout
        while len(self.done) < n and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.done)} of {n} responses after {timeout}s; got {bytes(self.raw[:500])!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 18)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                try:
                    self.parser.feed_data(b"")  # close-delimited bodies end here
                except httptools.HttpParserError:
                    pass
                break
            self.feed(data)
        out, self.done = self.done, []
        return out

    def read_one(self, timeout: float = DEFAULT_TIMEOUT) -> Response:
        got = self.read(1, timeout)
        if not got:
            raise AssertionError(f"no complete response; received {bytes(self.raw[:500])!r}")
        return got[0]


def connect(port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request(
    method: str = "GET",
    target: str = "/",
    host: str | None = "test.local",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers or ():
        lines.append(f"{k}: {v}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers or ()):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, data: bytes, n: int = 1, timeout: float = DEFAULT_TIMEOUT) -> list[Response]:
    """Send ``data`` on a new connection and read ``n`` responses."""
    with connect(port, timeout=timeout) as s:
        s.sendall(data)
        return ResponseReader(s).read(n, timeout)


def get(port: int, target: str = "/", **kw: object) -> Response:
    with connect(port) as s:
        s.sendall(request("GET", target, **kw))  # type: ignore[arg-type]
        return ResponseReader(s).read_one()


def read_until_close(sock: socket.socket, timeout: float = DEFAULT_TIMEOUT, limit: int = 1 << 24) -> tuple[bytes, bool]:
    """Everything until EOF; (data, closed) where closed is False on timeout."""
    deadline = time.monotonic() + timeout
    out = bytearray()
    while len(out) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return bytes(out), False
        except ConnectionResetError:
            return bytes(out), True
        if not data:
            return bytes(out), True
        out += data
    return bytes(out), False


def send_and_close_wait(port: int, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> tuple[bytes, bool]:
    """Send raw bytes; everything the proxy answers until it closes (or the timeout)."""
    with connect(port, timeout=timeout) as s:
        s.sendall(data)
        return read_until_close(s, timeout)


def status_of(raw: bytes) -> int:
    """The status code of the first response in ``raw`` (0 when there is none)."""
    if not raw.startswith(b"HTTP/1.") or len(raw) < 12:
        return 0
    try:
        return int(raw[9:12])
    except ValueError:
        return 0


class Client:
    """One keep-alive client connection (optionally from another loopback source address)."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, keep_body: bool = True) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = ResponseReader(self.sock, keep_body=keep_body)
        self.timeout = timeout

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", target: str = "/", headers: list[tuple[str, str]] | None = None,
                body: bytes = b"", host: str | None = "test.local", version: str = "HTTP/1.1") -> Response:
        self.send(request(method, target, host=host, headers=headers, body=body, version=version))
        return self.reader.read_one(self.timeout)

    def read(self, n: int = 1, timeout: float | None = None) -> list[Response]:
        return self.reader.read(n, timeout or self.timeout)

    def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True if the proxy closes this connection within ``timeout`` (nothing else arriving)."""
        if self.reader.eof:
            return True
        data, closed = read_until_close(self.sock, timeout)
        assert not data, f"unexpected bytes after the response: {data[:200]!r}"
        return closed

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_first(raw: bytes) -> Response:
    """The first complete response in ``raw`` (AssertionError if there is none)."""
    reader = ResponseReader(None)  # type: ignore[arg-type]
    try:
        reader.feed(raw)
    except httptools.HttpParserError:
        pass  # whatever follows the first response
    if reader.done:
        return reader.done[0]
    raise AssertionError(f"no complete response in {raw[:300]!r}")
