"""Running the proxy: listeners, connection limits, graceful stop.

A :class:`Worker` owns one event loop, the live :class:`~fleetproxy.runtime.Runtime`
and the listening sockets of every frontend.  When ``global.maxconn`` (or a
frontend's ``maxconn``) is reached the listener stops accepting, so further
clients wait in the kernel's accept backlog instead of being reset, and it
accepts again as soon as a connection ends.  The event loop accepts in batches,
so a few connections may arrive after the limit was reached: those are parked
(:class:`Parked`: not read, not served, no timers) until a slot frees.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from .config import Config, split_host_port
from .datapath.accesslog import AccessLog
from .datapath.http import HttpClient
from .datapath.tcp import TcpClient
from .datapath.upstream import sweep_idle
from .runtime import Runtime

log = logging.getLogger("fleetproxy")

SWEEP_INTERVAL = 1.0


def make_listener(address: str, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking socket for ``host:port``."""
    host, port = split_host_port(address, what="bind address", allow_wildcard=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """One bound address of a frontend; accepting can be paused and resumed."""

    def __init__(self, worker: Worker, frontend: Any, address: str, sock: socket.socket) -> None:
        self.worker = worker
        self.frontend = frontend
        self.address = address
        self.sock = sock
        self.server: asyncio.AbstractServer | None = None
        self.want_accepting = False
        self._busy = False
        proto = HttpClient if frontend.mode == "http" else TcpClient
        self.factory: Callable[[], asyncio.Protocol] = lambda: proto(worker, frontend)

    def set_accepting(self, accepting: bool) -> None:
        if self.want_accepting != accepting:
            self.want_accepting = accepting
            if not self._busy:
                self.worker.loop.create_task(self._apply())

    async def _apply(self) -> None:
        # Serving is driven from a duplicate of the socket: closing the asyncio
        # server then stops accepting while the original keeps listening.
        self._busy = True
        try:
            while (self.server is not None) != self.want_accepting:
                if self.want_accepting:
                    dup = socket.socket(fileno=os.dup(self.sock.fileno()))
                    dup.setblocking(False)
                    self.server = await self.worker.loop.create_server(self.factory, sock=dup)
                else:
                    server, self.server = self.server, None
                    server.close()  # type: ignore[union-attr]
        finally:
            self._busy = False

    async def start(self) -> None:
        self.want_accepting = True
        await self._apply()

    def close(self) -> None:
        self.want_accepting = False
        if self.server is not None:
            self.server.close()
            self.server = None
        self.sock.close()


class Worker:
    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.runtime = Runtime(cfg)
        g = cfg.global_
        self.limits = g.tune
        self.pool_idle_timeout = g.tune.pool_idle_timeout
        self.log = AccessLog(loop, g.log.access, g.log.format)
        self.maxconn = g.maxconn
        self.conns = 0
        self.clients: set[Any] = set()
        self.stopping = False
        self.listeners: list[Listener] = []
        self.parked: deque[Parked] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        """Bind (or adopt) every listener and start accepting."""
        sockets = dict(sockets or {})
        try:
            for fe in self.runtime.frontends.values():
                backlog = fe.cfg.backlog or fe.maxconn or self.maxconn
                for address in fe.binds:
                    sock = sockets.pop(address, None) or make_listener(address, min(backlog, 65535))
                    self.listeners.append(Listener(self, fe, address, sock))
        except OSError:
            for listener in self.listeners:
                listener.close()
            raise
        for listener in self.listeners:
            await listener.start()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def bound_addresses(self) -> list[tuple[str, str, int]]:
        """(frontend, host, port) of every listener, with the real port for ``:0``."""
        out = []
        for listener in self.listeners:
            host, port = listener.sock.getsockname()[:2]
            out.append((listener.frontend.name, host, port))
        return out

    def _sweep(self) -> None:
        sweep_idle(self.runtime.servers(), self.loop.time(), self.pool_idle_timeout)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def stop(self, hard_stop_after: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish, then close everything."""
        if hard_stop_after is None:
            hard_stop_after = self.cfg.global_.hard_stop_after
        self.stopping = True
        for listener in self.listeners:
            listener.close()
        parked, self.parked = self.parked, deque()
        for p in parked:
            p.close()
        for client in list(self.clients):
            client.stop_if_idle()
        if self.clients:
            try:
                await asyncio.wait_for(self._drained.wait(), hard_stop_after)
            except asyncio.TimeoutError:
                log.warning("hard_stop_after (%.1fs) reached: closing %d connection(s)",
                            hard_stop_after, len(self.clients))
                for client in list(self.clients):
                    if client.transport is not None:
                        client.transport.abort()
                await asyncio.sleep(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self.runtime.servers():
            server.close_idle()
        self.log.close()

    # -- connection accounting -------------------------------------------------------
    def conn_opened(self, client: Any) -> bool:
        """Count a new connection; False if over a limit (then it is parked)."""
        fe = client.frontend
        if self.conns >= self.maxconn or (fe.maxconn and fe.conns >= fe.maxconn):
            self.parked.append(Parked(client))
            return False
        self.clients.add(client)
        self.conns += 1
        fe.conns += 1
        fe.total_conns += 1
        if self.conns >= self.maxconn:
            for listener in self.listeners:
                listener.set_accepting(False)
        elif fe.maxconn and fe.conns >= fe.maxconn:
            for listener in self.listeners:
                if listener.frontend is fe:
                    listener.set_accepting(False)
        return True

    def conn_closed(self, client: Any) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        self.conns -= 1
        fe = client.frontend
        fe.conns -= 1
        if self.stopping:
            if not self.clients:
                self._drained.set()
            return
        parked = self.parked
        for _ in range(len(parked)):
            if self.conns >= self.maxconn:
                break
            p = parked.popleft()
            if p.lost:
                continue
            pfe = p.client.frontend
            if pfe.maxconn and pfe.conns >= pfe.maxconn:
                parked.append(p)
                continue
            p.admit()
        if self.conns < self.maxconn:
            for listener in self.listeners:
                if not listener.want_accepting:
                    lfe = listener.frontend
                    if not lfe.maxconn or lfe.conns < lfe.maxconn:
                        listener.set_accepting(True)


class Parked(asyncio.Protocol):
    """A connection accepted past maxconn: it holds the transport, reads at most one
    chunk (then pauses), and hands everything to the real protocol when admitted."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.transport = client.transport
        self.data: list[bytes] = []
        self.eof = False
        self.lost = False
        self.transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        self.data.append(data)
        self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def admit(self) -> None:
        client, transport = self.client, self.transport
        transport.set_protocol(client)
        transport.resume_reading()
        client.connection_made(transport)  # counted by conn_opened this time
        if self.data:
            client.data_received(b"".join(self.data))
        if self.eof and client.transport is not None and not client.eof_received():
            transport.close()

    def close(self) -> None:
        if not self.lost:
            self.transport.close()


# --------------------------------------------------------------------------
# The foreground process
# --------------------------------------------------------------------------


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop when available (or asked for), else the standard asyncio loop."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            if kind == "uvloop":
                raise
    return asyncio.new_event_loop()


def sd_notify(message: str) -> None:
    """systemd's notify protocol: one datagram, no library needed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


async def serve(cfg: Config, ready: Callable[[Worker], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(cfg, loop)
    await worker.start()
    for fe_name, host, port in worker.bound_addresses():
        log.info("frontend %s listening on %s:%d", fe_name, host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sd_notify("READY=1\nSTATUS=serving")
    if ready is not None:
        ready(worker)
    await stop.wait()
    sd_notify("STOPPING=1")
    log.info("stopping: no new connections, waiting for %d in flight", len(worker.clients))
    await worker.stop()
    log.info("stopped")


def run(cfg: Config, event_loop: str = "auto") -> int:
    loop = new_event_loop(event_loop)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(cfg))
    except OSError as exc:
        print(f"fleetproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0
