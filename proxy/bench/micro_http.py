"""Pure-Python cost of one proxied HTTP request, without sockets.

Drives :class:`~fleetproxy.datapath.http.HttpClient` with in-memory transports:
a keep-alive request in, through a pooled upstream connection, a small
nginx-like response back.  What it measures is exactly the interpreter time the
data path adds per request (the part a profile of the real proxy attributes to
Python rather than to system calls).  Use it to compare changes to the hot
path: ``python proxy/bench/micro_http.py [-n 200000] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

from fleetproxy import config
from fleetproxy.datapath.http import HttpClient
from fleetproxy.datapath.upstream import Upstream
from fleetproxy.process import Worker, new_event_loop

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\nConnection: keep-alive\r\n\r\n"
    b"hello from backend 1\n"
)


class FakeTransport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.out: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def build(log: bool) -> tuple[HttpClient, list[Upstream], FakeTransport]:
    cfg = config.parse({
        "global": {"log": {"access": "/dev/null" if log else "none"}},
        "frontends": [{"name": "fe", "bind": ["127.0.0.1:1"], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [
            {"name": "s1", "address": "127.0.0.1:2"}, {"name": "s2", "address": "127.0.0.1:3"}]}],
    })
    loop = new_event_loop()
    worker = Worker(cfg, loop)
    fe = worker.runtime.frontends["fe"]
    client = HttpClient(worker, fe)
    ct = FakeTransport(("127.0.0.1", 40000))
    client.connection_made(ct)
    ups = []
    for server in worker.runtime.backends["be"].servers:
        up = Upstream(loop, server)
        up.connection_made(FakeTransport((server.host, server.port)))
        up.release()
        ups.append(up)
    return client, ups, ct


def run(n: int, log: bool) -> float:
    client, ups, ct = build(log)
    by_server = {id(u.server): u for u in ups}
    data_received = client.data_received
    t0 = time.perf_counter()
    for _ in range(n):
        data_received(REQUEST)
        up = by_server[id(client.server)]
        up.data_received(RESPONSE)
    elapsed = time.perf_counter() - t0
    assert ct.out[-1].endswith(b"hello from backend 1\n"), ct.out[-1]
    assert not ct.closing
    return elapsed / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--log", action="store_true", help="with the access log (to /dev/null)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--once", action="store_true",
                    help="one run of -n requests (for instruction counts under valgrind)")
    args = ap.parse_args()
    if args.once:
        run(args.n, args.log)
        return
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.n, args.log)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    results = sorted(run(args.n, args.log) for _ in range(5))
    print(f"{results[2]:.2f} us per request (median of 5 x {args.n}; min {results[0]:.2f})")


if __name__ == "__main__":
    main()
