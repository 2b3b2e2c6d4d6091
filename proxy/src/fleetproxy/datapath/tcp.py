"""TCP (layer 4) frontend connections: a relay with half-close and backpressure.

The server is chosen when the client connects (``source`` hashes the client
address); connect failures are retried and redispatched exactly as in HTTP
mode.  Bytes the client sends before the server connection is up are held
(reading pauses past a limit).  Each direction's FIN is passed on with
``write_eof`` and the connection ends when both directions are closed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..tls import NEED_MORE, client_hello_sni
from .common import INF, LazyTimer
from .upstream import Upstream

T_QUEUE, T_CONNECT, T_IDLE, T_INSPECT = range(4)
CLIENT_HELLO_LIMIT = 16384 + 5
PENDING_LIMIT = 256 * 1024
RETRY_TURNAROUND = 0.02


class TcpUpstream(Upstream):
    """A server connection in TCP mode: every event goes to its client."""

    __slots__ = ("early",)

    def __init__(self, loop: Any, server: Any) -> None:
        super().__init__(loop, server, http=False)
        self.early: list[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client.upstream_data(data)
        else:
            # The server spoke first (a greeting) before its client was attached: keep it.
            if self.early is None:
                self.early = []
            self.early.append(data)

    def eof_received(self) -> bool:
        if self.client is None:
            if self.early is None:
                self.early = []
            self.early.append(b"")  # the server's FIN, delivered once attached
            return self.server.tls is None  # no half-open TLS (see Upstream.eof_received)
        return super().eof_received()


class TcpClient(LazyTimer, asyncio.Protocol):
    def __init__(self, worker: Any, frontend: Any, bind: Any = None) -> None:
        # Global state
        self.worker = worker
        self._loop = worker.loop
        self.frontend = frontend
        # Per-connection state
        self.transport: Any = None
        self.upstream: TcpUpstream | None = None
        self.backend: Any = None
        self.server: Any = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.paused = False
        self.client_eof = False
        self.server_eof = False
        self.closed = False
        self.waiter: Any = None
        self.connecting: Any = None
        self.retries = 0
        self.pinned = False
        self.inspecting = False
        self.sni: str | None = None
        self.peer = "-"
        self.src_ip = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.term = "--"
        self.t_start = 0.0
        self.t_mark = 0.0
        self.t_queue = -1
        self.t_connect = -1
        self.wall = 0.0
        self._wheel = worker.wheel
        self._timer = 0
        self._deadline = 0.0
        self._timer_at = INF
        self._tkind = 0

    # -- the request view used by routing (TCP rules: src, sni) ----------------------
    @property
    def src(self) -> Any:
        import ipaddress

        return ipaddress.ip_address(self.src_ip)

    def _idle_timeout(self) -> float:
        fe = self.frontend.timeouts
        be = self.backend.timeouts if self.backend is not None else fe
        if be.tunnel is not None:
            return be.tunnel
        return min(fe.client, be.server)

    # -- client side ----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "0.0.0.0"
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        self.src_ip = ip
        self.peer = f"{ip}:{peer[1]}" if peer else "-"
        if not self.worker.conn_opened(self):
            return  # over maxconn: parked by the worker, which calls connection_made again
        self.t_start = self.t_mark = self._loop.time()
        self.wall = time.time()
        fe = self.frontend
        fe.requests += 1
        if fe.needs_sni:
            # Rules look at the TLS server name: wait for the ClientHello (inspect_delay).
            self.inspecting = True
            self._arm(fe.inspect_delay, T_INSPECT)
            return
        self._route()

    def _route(self) -> None:
        fe = self.frontend
        backend = fe.route(self)
        if backend is None:
            self.term = "PR"
            self._close()
            return
        self.backend = backend
        if backend.stick is not None:
            now = self._loop.time()
            key = self.src_ip.encode()
            server = backend.persistent(backend.by_name.get(backend.stick.get(key, now) or ""))
            if server is not None:
                backend.stick.put(key, server.name, now)
                self.pinned = True
                self._use(server)
                return
        if not backend.usable:
            backend.no_server += 1
            self.term = "SC"
            self._close()
            return
        server = backend.pick(self.src_ip.encode() if backend.key_kind else None)
        if server is None:
            self.waiter = backend.enqueue(self._dequeued)
            self._arm(backend.timeouts.queue, T_QUEUE)
            return
        self._use(server)

    def _dequeued(self, server: Any) -> None:
        self.waiter = None
        if not self.closed:
            self._use(server)

    def _use(self, server: Any) -> None:
        self.t_queue = int((self._loop.time() - self.t_start) * 1000)
        be = self.backend
        be.acquire(server)
        server.sessions.add(self)
        self.server = server
        if be.stick is not None and not self.pinned:
            key = self.src_ip.encode()
            be.stick.put(key, server.name, self._loop.time())
            if self.worker.stick_sync is not None:
                self.worker.stick_sync(be.name, key, server.name)
        self._connect()

    def _connect(self) -> None:
        self.t_mark = self._loop.time()
        self._arm(self.backend.timeouts.connect, T_CONNECT)
        self.connecting = self._loop.create_task(self._open(self.server))

    async def _open(self, server: Any) -> None:
        loop = self._loop
        try:
            if server.tls is None:
                _, conn = await loop.create_connection(
                    lambda: TcpUpstream(loop, server), server.host, server.port
                )
            else:
                _, conn = await loop.create_connection(
                    lambda: TcpUpstream(loop, server), server.host, server.port,
                    ssl=server.tls, server_hostname=server.tls_sni,
                )
        except OSError:
            self.connecting = None
            self._connect_failed()
            return
        self.connecting = None
        if self.closed or self.server is not server:
            conn.close()
            return
        self.t_connect = int((loop.time() - self.t_mark) * 1000)
        if server.obs_errors:
            server.obs_errors = 0
        self.upstream = conn
        conn.attach(self)
        if self.pending:
            conn.transport.write(b"".join(self.pending))
            self.pending = []
            self.pending_size = 0
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.client_eof and conn.transport.can_write_eof():
            conn.transport.write_eof()
        if conn.early is not None:  # what the server sent (or its FIN) before we attached
            early, conn.early = conn.early, None
            for data in early:
                if data:
                    self.upstream_data(data)
                else:
                    self.upstream_eof()
        if conn.closed:
            self.upstream_lost(None)
        if not self.closed:
            self._arm(self._idle_timeout(), T_IDLE)

    def _connect_failed(self) -> None:
        server = self.server
        be = self.backend
        server.conn_errors += 1
        if server.observe:
            server.obs_errors += 1
            if server.obs_errors >= server.cfg.error_limit:
                server.obs_errors = 0
                if self.worker.observer is not None:
                    self.worker.observer(be.name, server.name, False, "L4CON: connection failed")
        if self.closed:
            return
        if self.retries >= be.retries:
            self.term = "SC"
            self._close()
            return
        self.retries += 1
        server.retries += 1
        if be.redispatch and self.retries == be.retries and (len(be.usable) > 1 or server not in be.usable):
            other = be.pick_other(server, self.src_ip.encode() if be.key_kind else None)
            if other is not None:
                be.release(server)
                server.sessions.discard(self)
                be.acquire(other)
                other.sessions.add(self)
                other.redispatches += 1
                self.server = other
        self._disarm()
        self._loop.call_later(RETRY_TURNAROUND, self._retry, self.server)

    def _retry(self, server: Any) -> None:
        if not self.closed and self.server is server and self.upstream is None:
            self._connect()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.inspecting:
            self.pending.append(data)
            self.pending_size += len(data)
            buf = b"".join(self.pending)
            sni = client_hello_sni(buf)
            if sni == NEED_MORE and len(buf) < CLIENT_HELLO_LIMIT:
                return
            self.pending = [buf]
            self.inspecting = False
            self.sni = None if sni == NEED_MORE else sni
            self._disarm()
            self._route()
            return
        up = self.upstream
        if up is not None:
            up.transport.write(data)
            self._arm(self._idle_timeout(), T_IDLE)
        else:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_LIMIT and not self.paused:
                self.paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        up = self.upstream
        if up is not None and up.transport.can_write_eof():
            up.transport.write_eof()
        if self.server_eof:
            self._close()
            return False
        return True

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            if self.term == "--" and not (self.client_eof and self.server_eof):
                self.term = "CD" if self.upstream is not None else "CC"
            self._close(abort=True)
        self._finish()

    # -- server side ------------------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.transport.write(data)
        self._arm(self._idle_timeout(), T_IDLE)

    def upstream_eof(self) -> bool:
        self.server_eof = True
        if not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()
        if self.client_eof:
            self._close()
            return False
        return True

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if not self.closed:
            if not self.server_eof and self.term == "--":
                self.term = "SD"
            self._close(abort=exc is not None)

    def upstream_paused(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def upstream_resumed(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resume_reading()

    # -- ending -----------------------------------------------------------------------
    def _timeout(self, kind: int) -> None:
        if self.closed:
            return
        if kind == T_INSPECT:
            if self.inspecting:
                self.inspecting = False
                self._route()
            return
        if kind == T_QUEUE:
            self.backend.queue_timeouts += 1
            self.term = "sQ"
            self._close()
        elif kind == T_CONNECT:
            if self.connecting is not None:
                self.connecting.cancel()
                self.connecting = None
            self._connect_failed()
        else:
            self.term = "cD"
            self._close(abort=True)

    def _close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        if self.waiter is not None:
            self.waiter.cancelled = True
            self.waiter = None
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        up = self.upstream
        self.upstream = None
        if up is not None:
            if abort:
                up.abort()
            else:
                up.close()
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _finish(self) -> None:
        """Once, when the client transport is gone: counters, slot, log line."""
        if self.transport is None:
            return
        self.transport = None
        fe = self.frontend
        fe.bytes_in += self.bytes_in
        fe.bytes_out += self.bytes_out
        server = self.server
        be = self.backend
        if server is not None:
            self.server = None
            server.bytes_in += self.bytes_in
            server.bytes_out += self.bytes_out
            be.bytes_in += self.bytes_in
            be.bytes_out += self.bytes_out
            server.sessions.discard(self)
            be.release(server)
        worker = self.worker
        worker.conn_closed(self)
        if fe.log and worker.log.enabled:
            now = self._loop.time()
            target = server.log_prefix if server is not None else (
                f"{be.name}/<NOSRV>" if be is not None else f"{fe.name}/<NOSRV>"
            )
            worker.log.tcp(
                self.peer, self.wall, fe.name, target, self.t_queue, self.t_connect,
                int((now - self.t_start) * 1000), self.bytes_out, self.term,
                f"{worker.conns}/{fe.conns}/{be.active if be is not None else 0}/"
                f"{server.active if server is not None else 0}/{self.retries}",
                f"0/{len(be.queue) if be is not None else 0}",
            )

    def stop_if_idle(self) -> bool:
        return False

    def kill_session(self) -> None:
        if not self.closed:
            self.term = "KD"
            self._close(abort=True)
