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
from .datapath.common import TimerWheel
from .datapath.http import HttpClient, TlsHttpClient
from .datapath.tcp import TcpClient
from .datapath.upstream import sweep_idle
from .runtime import Runtime
from .tls import ServerTls, client_context

log = logging.getLogger("fleetproxy")

SWEEP_INTERVAL = 1.0


def make_listener(address: str, backlog: int, reuseport: bool = False, listen: bool = True) -> socket.socket:
    """A bound, listening, non-blocking socket for ``host:port``.

    ``reuseport`` joins the address's SO_REUSEPORT group (one socket per worker);
    ``listen=False`` only holds the port (a group member that takes no connection)."""
    host, port = split_host_port(address, what="bind address", allow_wildcard=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class BindInfo:
    """What a client connection needs to know about the address it came in on."""

    __slots__ = ("subject_header", "tls")

    def __init__(self, tls: Any = None) -> None:
        self.tls = tls  # a ServerTls, or None
        header = tls.cfg.client_subject_header if tls is not None else None
        self.subject_header = header.encode() if header else None


class Listener:
    """One bound address of a frontend; accepting can be paused and resumed."""

    def __init__(self, worker: Worker, frontend: Any, bind: Any, sock: socket.socket) -> None:
        self.worker = worker
        self.frontend = frontend
        self.address = bind.address
        self.sock = sock
        self.server: asyncio.AbstractServer | None = None
        self.want_accepting = False
        self._busy = False
        self.tls = ServerTls(bind.tls) if bind.tls is not None else None
        self.info = BindInfo(self.tls)
        self._rotation: asyncio.TimerHandle | None = None
        self.reported_failures = 0
        if frontend.mode == "tcp":
            proto: Any = TcpClient
        else:
            proto = TlsHttpClient if self.tls is not None else HttpClient
        info = self.info
        self.factory: Callable[[], asyncio.Protocol] = lambda: proto(worker, frontend, info)

    async def _serve(self) -> asyncio.AbstractServer:
        dup = socket.socket(fileno=os.dup(self.sock.fileno()))
        dup.setblocking(False)
        if self.tls is None:
            return await self.worker.loop.create_server(self.factory, sock=dup)
        return await self.worker.loop.create_server(
            self.factory, sock=dup, ssl=self.tls.context,
            ssl_handshake_timeout=self.frontend.timeouts.http_request,
        )

    def _schedule_rotation(self) -> None:
        if self.tls is not None and self.tls.cfg.ticket_rotation > 0:
            self._rotation = self.worker.loop.call_later(self.tls.cfg.ticket_rotation, self._rotate)

    def _rotate(self) -> None:
        """New session-ticket keys: serve from fresh contexts, then drop the old server."""
        assert self.tls is not None

        async def rotate() -> None:
            try:
                self.tls.rotate()  # type: ignore[union-attr]
            except (OSError, ValueError) as exc:
                log.error("%s: keeping the current TLS contexts: %s", self.address, exc)
                return
            if self.server is not None and not self._busy:
                old = self.server
                self.server = await self._serve()
                old.close()

        self.worker.loop.create_task(rotate())
        self._schedule_rotation()

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
                    self.server = await self._serve()
                else:
                    server, self.server = self.server, None
                    server.close()  # type: ignore[union-attr]
        finally:
            self._busy = False

    async def start(self) -> None:
        self.want_accepting = True
        await self._apply()
        self._schedule_rotation()

    def close(self) -> None:
        self.want_accepting = False
        if self._rotation is not None:
            self._rotation.cancel()
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
        # Hooks the worker process sets to report to the master.
        self.observer: Callable[[str, str, bool, str], None] | None = None
        self.stick_sync: Callable[[str, bytes, str], None] | None = None
        self.wheel = TimerWheel(loop)

    # -- lifecycle -------------------------------------------------------------------
    def prepare_server(self, server: Any) -> None:
        """TLS towards the server, if configured (contexts are per process)."""
        tls = server.cfg.tls
        if tls is not None:
            server.tls = client_context(tls)
            server.tls_sni = tls.sni or ""

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        """Bind (or adopt) every listener and start accepting."""
        for server in self.runtime.servers():
            self.prepare_server(server)
        sockets = dict(sockets or {})
        try:
            for fe in self.runtime.frontends.values():
                backlog = fe.cfg.backlog or fe.maxconn or self.maxconn
                for bind in fe.cfg.bind:
                    sock = sockets.pop(bind.address, None) or make_listener(bind.address, min(backlog, 65535))
                    self.listeners.append(Listener(self, fe, bind, sock))
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
        now = self.loop.time()
        for listener in self.listeners:
            tls = listener.tls
            if tls is not None and tls.handshake_failures != listener.reported_failures:
                new = tls.handshake_failures - listener.reported_failures
                listener.reported_failures = tls.handshake_failures
                log.warning("frontend %s, %s: %d TLS handshake(s) failed (plain HTTP on the TLS port, "
                            "no common protocol or cipher, refused SNI or client certificate, or "
                            "abandoned); %d in total", listener.frontend.name, listener.address, new,
                            tls.handshake_failures)
        sweep_idle(self.runtime.servers(), now, self.pool_idle_timeout)
        for be in self.runtime.backends.values():
            if be.stick is not None:
                be.stick.purge(now)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def stop(self, hard_stop_after: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish, then close everything."""
        if hard_stop_after is None:
            hard_stop_after = self.cfg.global_.hard_stop_after
        self.stopping = True
        for listener in self.listeners:
            listener.close()
        await asyncio.sleep(0)  # connections accepted just before get their connection_made first
        # Connections accepted past maxconn: each is served (one request) rather than cut.
        parked, self.parked = self.parked, deque()
        for p in parked:
            if not p.lost:
                p.admit()
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
        self.wheel.close()
        self.log.close()

    # -- connection accounting -------------------------------------------------------
    def conn_opened(self, client: Any) -> bool:
        """Count a new connection; False if over a limit (then it is parked)."""
        fe = client.frontend
        if (self.conns >= self.maxconn or (fe.maxconn and fe.conns >= fe.maxconn)) and not self.stopping:
            self.parked.append(Parked(client))
            return False
        self.clients.add(client)
        self.conns += 1
        fe.conns += 1
        if fe.conns > fe.max_conns:
            fe.max_conns = fe.conns
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

    # -- runtime changes from the master ---------------------------------------------
    def shutdown_sessions(self, backend: str, server: str) -> int:
        """Abort every client transaction currently using the server."""
        s = self.runtime.backends[backend].by_name.get(server)
        if s is None:
            return 0
        sessions = list(s.sessions)
        for client in sessions:
            client.kill_session()
        return len(sessions)

    def snapshot(self) -> dict[str, Any]:
        """Counters for the master, which sums them over workers."""
        rt = self.runtime
        return {
            "op": "stats",
            "conns": self.conns,
            "fe": {
                f.name: [f.conns, f.max_conns, f.total_conns, f.requests, f.bytes_in, f.bytes_out,
                         f.bad_requests, *f.responses, f.tls_failures]
                for f in rt.frontends.values()
            },
            "be": {
                b.name: [b.active, b.total, b.bytes_in, b.bytes_out, b.no_server, b.queue_timeouts,
                         b.queue_length(), *b.responses]
                for b in rt.backends.values()
            },
            "srv": {
                s.log_prefix: [s.active, s.max_active, s.total, s.bytes_in, s.bytes_out, s.conn_errors,
                               s.resp_errors, s.retries, s.redispatches, *s.responses]
                for s in rt.servers()
            },
        }


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


# --------------------------------------------------------------------------
# A worker process: the data path, driven by the master over a socketpair
# --------------------------------------------------------------------------

STATS_INTERVAL = 0.1


class WorkerProcess:
    def __init__(self, loop: asyncio.AbstractEventLoop, channel_sock: socket.socket) -> None:
        self.loop = loop
        self.channel_sock = channel_sock
        self.channel: Any = None
        self.worker: Worker | None = None
        self.init: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.stopped = asyncio.Event()
        self.stopping = False
        self.early: list[dict[str, Any]] = []
        self._last_stats: Any = None

    async def run(self) -> int:
        from . import config as config_mod
        from .ipc import Channel

        loop = self.loop
        _, self.channel = await loop.connect_accepted_socket(
            lambda: Channel(self.on_message, self.on_lost), self.channel_sock
        )
        init = await self.init
        cfg = config_mod.parse(init["config"], init.get("source"))
        worker = self.worker = Worker(cfg, loop)
        worker.observer = self.observe
        worker.stick_sync = self.stick_created
        worker.runtime.divide_maxconn(init.get("workers", 1))
        now = loop.time()
        for change in init.get("changes", []):
            worker.runtime.apply(change, now)
        for be_name, entries in (init.get("sticks") or {}).items():
            be = worker.runtime.backends.get(be_name)
            if be is not None and be.stick is not None:
                for key, server, ttl in entries:
                    be.stick.entries[key.encode("latin-1")] = (server, now + ttl)
        early, self.early = self.early, []
        for msg in early:
            self.on_message(msg)
        sockets = {addr: socket.socket(fileno=fd) for addr, fd in init["listeners"].items()}
        for sock in sockets.values():
            sock.setblocking(False)
        await worker.start(sockets)
        self.channel.send({"op": "ready", "pid": os.getpid()})
        loop.call_later(STATS_INTERVAL, self.send_stats)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, lambda: self.stop(None))
        await self.stopped.wait()
        self.send_stats(final=True)
        return 0

    def on_message(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "init":
            self.init.set_result(msg)
            return
        worker = self.worker
        if worker is None:
            # Sent while the runtime is still being built from the init message:
            # applied right after it, before any listener accepts.
            self.early.append(msg)
            return
        if op in ("server", "add_server", "del_server"):
            try:
                server = worker.runtime.apply(msg, self.loop.time())
            except KeyError:
                return  # a server this (older) worker's configuration does not have
            if op == "add_server" and server is not None:
                worker.prepare_server(server)
        elif op == "shutdown":
            worker.shutdown_sessions(msg["backend"], msg["server"])
        elif op == "stick":
            be = worker.runtime.backends.get(msg["backend"])
            if be is not None and be.stick is not None:
                be.stick.put(msg["key"].encode("latin-1"), msg["server"], self.loop.time())
        elif op == "stop":
            self.stop(msg.get("hard_stop_after"))

    def on_lost(self, exc: Exception | None) -> None:
        # The master is gone: serve what is in flight, then exit.
        self.stop(None)

    def stop(self, hard_stop_after: float | None) -> None:
        if self.stopping:
            return
        self.stopping = True

        async def _stop() -> None:
            if self.worker is not None:
                await self.worker.stop(hard_stop_after)
            self.stopped.set()

        self.loop.create_task(_stop())

    def send_stats(self, final: bool = False) -> None:
        if self.worker is None or self.channel is None or self.channel.closed:
            return
        worker = self.worker
        # Every counter moves with one of these: skip the full snapshot when idle.
        activity = (worker.conns, *[(f.requests, f.total_conns, f.bytes_in, f.bytes_out, f.conns,
                                     f.tls_failures, f.bad_requests)
                                    for f in worker.runtime.frontends.values()])
        if activity != self._last_stats or final:
            self._last_stats = activity
            snap = worker.snapshot()
            if final:
                snap["final"] = True
            self.channel.send(snap)
        if not final and not self.stopped.is_set():
            self.loop.call_later(STATS_INTERVAL, self.send_stats)

    def observe(self, backend: str, server: str, ok: bool, reason: str) -> None:
        if self.channel is not None:
            self.channel.send({"op": "observe", "backend": backend, "server": server, "ok": ok,
                               "reason": reason})

    def stick_created(self, backend: str, key: bytes, server: str) -> None:
        if self.channel is not None:
            self.channel.send({"op": "stick", "backend": backend, "key": key.decode("latin-1"),
                               "server": server})


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process: ``python -m fleetproxy.process FD LOOP``."""
    argv = sys.argv[1:] if argv is None else argv
    fd, kind = int(argv[0]), argv[1] if len(argv) > 1 else "auto"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s fleetproxy[worker {os.getpid()}] %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master decides when we stop
    loop = new_event_loop(kind)
    asyncio.set_event_loop(loop)
    proc = WorkerProcess(loop, socket.socket(fileno=fd))
    try:
        return loop.run_until_complete(proc.run())
    finally:
        loop.close()


if __name__ == "__main__":
    raise SystemExit(worker_main())
