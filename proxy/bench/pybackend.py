"""A fast Python origin for the benchmark when nginx is not installed.

``GET /`` answers ``--body`` plus a newline (the nginx backends' 21 bytes), ``GET /1m`` the
1 MiB file; keep-alive and pipelining per HTTP/1.1, ``Connection: close``
honoured.  uvloop + httptools, responses prebuilt, so it stays well ahead of
one proxy core (it is still slower than nginx; the results say which ran).

    python pybackend.py --port 9101 --large-file www/1m
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httptools


def _response(body: bytes, ctype: bytes, close: bool) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nServer: fpb-pybackend\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body)


STATUS_PATH = b"/fpb-status"
COUNTS = {"accepts": 0, "requests": 0}


def _status(close: bool) -> bytes:
    """The counters in nginx's stub_status format."""
    a, r = COUNTS["accepts"], COUNTS["requests"]
    text = f"Active connections: 0\nserver accepts handled requests\n {a} {a} {r}\nReading: 0 Writing: 0 Waiting: 0\n"
    return _response(text.encode(), b"text/plain", close)


class Origin(asyncio.Protocol):
    def __init__(self, responses: dict[tuple[bytes, bool], bytes]) -> None:
        COUNTS["accepts"] += 1
        self.responses = responses
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        keep = self.parser.should_keep_alive()
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        COUNTS["requests"] += 1
        resp = _status(not keep) if path == STATUS_PATH else self.responses.get((path, not keep)) or (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
            + (b"Connection: close\r\n" if not keep else b"") + b"\r\n")
        self.transport.write(resp)
        if not keep:
            self.transport.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--large-file", required=True)
    ap.add_argument("--body", default="fleetproxy backend 1")
    args = ap.parse_args(argv)
    with open(args.large_file, "rb") as f:
        large = f.read()
    responses = {}
    for close in (False, True):
        responses[(b"/", close)] = _response(args.body.encode() + b"\n", b"text/plain", close)
        responses[(b"/1m", close)] = _response(large, b"application/octet-stream", close)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Origin(responses), args.host, args.port, backlog=4096)
        async with server:
            await server.serve_forever()

    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:
        (uvloop.run if uvloop is not None else asyncio.run)(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
