"""A tiny HTTP/1.1 backend for the quick-start demo: it names itself in every answer.

``GET /health`` answers 200 ``ok``; anything else answers 200 with
``served by NAME (path)``.  Keep-alive, no dependencies beyond asyncio.
"""

from __future__ import annotations

import asyncio

from .config import split_host_port


class _Backend(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            line = head.split(b"\r\n", 1)[0].split(b" ")
            path = line[1].decode("latin-1") if len(line) > 1 else "/"
            body = b"ok\n" if path == "/health" else f"served by {self.name} ({path})\n".encode()
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Served-By: "
                + self.name.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )


def serve_backend(listen: str, name: str) -> int:
    host, port = split_host_port(listen, what="listen address", allow_wildcard=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Backend(name), host, port)
        print(f"demo backend {name} on http://{host}:{port}/", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def run_demo(config_path: str, requests: int = 12, keep: bool = True) -> int:
    """Start a demo backend for every server of ``config_path``, the proxy in front
    of them, show where a few requests went, and keep running until Ctrl-C."""
    import collections
    import http.client
    import signal
    import socket
    import subprocess
    import sys
    import time

    from .config import ConfigError, load

    try:
        cfg = load(config_path)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return 1
    addresses = sorted({s.address: s.name for b in cfg.backends for s in b.servers}.items())
    fe = next(f for f in cfg.frontends if f.mode == "http")
    host, port = split_host_port(fe.addresses[0], what="bind", allow_wildcard=True)
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    procs: list[subprocess.Popen[bytes]] = []

    def wait_port(h: str, p: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((h, p)) == 0:
                    return
            if any(pr.poll() is not None for pr in procs):
                raise RuntimeError("a demo process exited early")
            time.sleep(0.05)
        raise RuntimeError(f"{h}:{p} did not come up")

    try:
        for address, name in addresses:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "fleetproxy", "demo-backend", "--listen", address, "--name", name],
                stdout=subprocess.DEVNULL,
            ))
        for address, _ in addresses:
            wait_port(*split_host_port(address, what="server", allow_wildcard=False))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fleetproxy", "run", "-c", config_path],
            stdout=subprocess.DEVNULL if not keep else None,
        ))
        wait_port(host, port)
        seen: collections.Counter[str] = collections.Counter()
        conn = http.client.HTTPConnection(host, port, timeout=5)
        for i in range(requests):
            conn.request("GET", f"/demo/{i}")
            resp = conn.getresponse()
            resp.read()
            seen[resp.getheader("X-Served-By", "?")] += 1
        conn.close()
        print(f"\n{requests} requests to http://{host}:{port}/ were served by:", flush=True)
        for name, count in sorted(seen.items()):
            print(f"  {name:10} {count:3}  {'#' * count}")
        if keep:
            print(f"\nfleetproxy is running: try  curl -i http://{host}:{port}/  (Ctrl-C stops the demo)\n",
                  flush=True)

            def _stop(signum: int, frame: object) -> None:
                raise KeyboardInterrupt

            signal.signal(signal.SIGTERM, _stop)
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for pr in reversed(procs):
            pr.terminate()
        for pr in procs:
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pr.kill()
