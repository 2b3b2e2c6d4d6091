"""Many idle keep-alive HTTP clients, for the RSS-per-idle-connection measurement.

Opens ``--count`` connections to ``127.0.0.1:--port`` (at most
``--concurrency`` being set up at a time), sends one ``GET /`` on each and
reads the complete response, then leaves every connection open and idle.
Prints one JSON line when all are set up (``{"open": N, "failed": F}``),
waits for a line on stdin, prints ``{"closed_early": C}`` (connections the
server closed meanwhile), closes everything and exits.  Bounded: every
connection has a 30 s deadline, the whole set-up 300 s.

    python idleclients.py --port 8080 --count 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import httptools

REQUEST = b"GET / HTTP/1.1\r\nHost: fpb-idle\r\nUser-Agent: fpb-idleclients\r\n\r\n"


class IdleClient(asyncio.Protocol):
    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.done.done():
                self.done.set_exception(exc)

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before the response"))


async def main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    clients: list[IdleClient] = []
    failed = 0
    gate = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        nonlocal failed
        async with gate:
            done = loop.create_future()
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: IdleClient(done), "127.0.0.1", args.port), 30)
                status = await asyncio.wait_for(done, 30)
            except (OSError, asyncio.TimeoutError, httptools.HttpParserError, ConnectionError):
                failed += 1
                return
            clients.append(proto)
            if status != 200:
                failed += 1

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(args.count))), 300)
    print(json.dumps({"open": len(clients), "failed": failed}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    print(json.dumps({"closed_early": sum(c.closed for c in clients)}), flush=True)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.5)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    sys.exit(run(main(ap.parse_args())))
