"""The Python peer in the benchmark: a naive aiohttp reverse proxy.

What someone would write first: an ``aiohttp.web.Application`` with one
catch-all handler and one shared ``ClientSession``, round robin over the
backends, ``X-Forwarded-For`` appended, hop-by-hop headers dropped, each
response read whole and sent back.  It is here to show what the raw-protocol
data path of fleetproxy buys over the obvious approach; it has no TCP mode.

    python naive_aiohttp.py --listen 127.0.0.1:8081 --backend 127.0.0.1:9101 --backend 127.0.0.1:9102
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Proxy-Authenticate", "Proxy-Authorization",
))
# Recomputed by aiohttp for the response it sends.
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}


def make_app(backends: list[str]) -> web.Application:
    targets = itertools.cycle([f"http://{b}" for b in backends])
    app = web.Application()

    async def start(app: web.Application) -> None:
        app["session"] = ClientSession(
            connector=TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=ClientTimeout(total=50), auto_decompress=False,
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        body = await request.read() if request.body_exists else None
        async with app["session"].request(
            request.method, next(targets) + request.rel_url.raw_path_qs, headers=headers,
            data=body, allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            out = [(k, v) for k, v in resp.headers.items() if k.lower() not in RESPONSE_DROP]
            return web.Response(status=resp.status, body=payload, headers=out)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(host: str, port: int, backends: list[str]) -> None:
    runner = web.AppRunner(make_app(backends), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="host:port")
    ap.add_argument("--backend", action="append", required=True, help="host:port (repeat)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    runner = asyncio.run
    if args.loop == "uvloop":
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        runner(serve(host, int(port), args.backend))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
