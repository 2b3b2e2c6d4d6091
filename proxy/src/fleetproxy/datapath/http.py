"""HTTP/1.1 frontend connections: one :class:`HttpClient` per client socket.

A request head is located by its terminating CRLFCRLF and fed, and only it,
to llhttp (httptools), which validates the request line, every header and the
framing (Content-Length / Transfer-Encoding).  The raw head bytes are then
forwarded with only the necessary edits: hop-by-hop headers removed,
``X-Forwarded-For`` appended and ``X-Forwarded-Proto`` set.  Bodies are
forwarded raw, measured by Content-Length or by :class:`ChunkedEnd` and
validated by llhttp, so bytes after a message are never forwarded as part of
it.  Responses take the same road back.

The transaction (request, server choice, retries, response, log line) lives
here; :class:`~fleetproxy.datapath.upstream.Upstream` hands every server-side
event to the client that owns it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from .common import (
    ERROR_PAGES,
    INF,
    R_CHUNKED,
    R_CLOSE,
    R_HEAD,
    R_LENGTH,
    R_NONE,
    R_TUNNEL,
    REQUEST_HEADERS,
    REQUEST_STRIP,
    RESPONSE_HEADERS,
    RESPONSE_STRIP,
    ChunkedEnd,
    LazyTimer,
    connection_tokens,
    strip_headers,
)
from .upstream import Upstream, take_idle

# Request-side states
IDLE, HEAD, BODY, DONE, TUNNEL, CLOSED = range(6)
# Timeout kinds
T_REQUEST, T_KEEPALIVE, T_CLIENT, T_QUEUE, T_CONNECT, T_SERVER, T_TUNNEL = range(7)
# Reasons reading from the client is paused
P_PIPELINE, P_UPSTREAM, P_PENDING = 1, 2, 4

SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS"))
PENDING_LIMIT = 256 * 1024
PIPELINE_LIMIT = 64 * 1024
WRITE_JOIN_LIMIT = 16 * 1024
RETRY_TURNAROUND = 0.02
STOP_GRACE = 1.0  # idle keep-alive connections on stop or reload

_TUNNEL_STRIP = REQUEST_STRIP - {b"upgrade"}
_CLASS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
_NUM = {i: str(i) for i in range(-1, 4096)}.get  # status // 100 -> responses index (0: other)
_STRIP_RESPONSE = re.compile(
    rb"\r\n(?:" + b"|".join(sorted(RESPONSE_STRIP)) + rb"):[^\r\n]*", re.IGNORECASE
).sub


class HttpClient(LazyTimer, asyncio.Protocol):
    def __init__(self, worker: Any, frontend: Any, bind: Any = None) -> None:
        # Global state
        self.worker = worker
        self._loop = worker.loop
        self.frontend = frontend
        self.bind = bind
        self.limits = worker.limits
        # Per-connection state
        self.transport: Any = None
        self.parser: Any = None  # created in connection_made (no cycle before it)
        self.state = IDLE
        self.buf = b""
        self.fed = 0
        self.paused = 0
        self.write_paused = False
        self.client_eof = False
        self.nreq = 0
        self.peer = "-"
        self.src_ip = ""
        self.fwd = b""
        self.fwd_end = b"\r\n"
        self.tls = False
        self.hsts = b""
        self.mc = False
        self._wheel = worker.wheel
        self._timer = 0
        self._deadline = 0.0
        self._timer_at = INF
        self._tkind = 0
        # Per-request state (set when a request starts, or reset by _new_request)
        self.head = b""
        self.method = b""
        self.target = b""
        self.v11 = True
        self.keep_alive = True
        self.host_b = b""
        self.pending_size = 0
        self.sent = False
        self.rbuf = b""
        self.rfed = 0
        self.rleft = 0
        self.up_keep = False
        self.t_start = 0.0
        self.t_mark = 0.0
        self._new_request()

    def _new_request(self) -> None:
        """Reset what a finished transaction may leave behind (the rest is always
        set before it is read)."""
        self.backend: Any = None
        self.server: Any = None
        self.upstream: Upstream | None = None
        self.pinned: Any = None
        self.cookie_first: float | None = None
        self.pending: list[bytes] | None = None
        self.waiter: Any = None
        self.connecting: Any = None
        self.head = b""
        self.upgrade = False
        self.body_left = 0
        self.chunks: ChunkedEnd | None = None
        self.retries = 0
        self.replayed = False
        self.txn = False
        self.rstate = R_NONE
        self.rchunks: ChunkedEnd | None = None
        self.resp_started = False
        self.keep_client = True
        self.status = -1
        self.bytes_out = 0
        self.bytes_up = 0
        self.term = "--"
        self.t_head = self.t_queue = self.t_connect = self.t_resp = -1

    # -- llhttp callbacks -------------------------------------------------------
    def on_message_complete(self) -> None:
        self.mc = True

    # -- the request view used by routing ---------------------------------------
    @property
    def path(self) -> str:
        target = self.target
        if not target.startswith(b"/"):
            # absolute-form: scheme://authority/path
            i = target.find(b"://")
            j = target.find(b"/", i + 3) if i >= 0 else -1
            target = target[j:] if j >= 0 else b"/"
        q = target.find(b"?")
        return (target if q < 0 else target[:q]).decode("latin-1")

    @property
    def host(self) -> str:
        host = self.host_b.lower()
        if host.startswith(b"["):
            end = host.find(b"]")
            return host[: end + 1].decode("latin-1")
        colon = host.rfind(b":")
        return (host if colon < 0 else host[:colon]).decode("latin-1")

    @property
    def src(self) -> Any:
        return ipaddress.ip_address(self.src_ip)

    sni = None
    server_eof = False  # the server half-closed a tunnel (set per connection when it does)

    def header(self, name: str) -> str | None:
        value = self.header_bytes(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def header_bytes(self, name: bytes) -> bytes | None:
        head = self.head
        lower = head.lower()
        needle = b"\r\n" + name.lower() + b":"
        i = lower.find(needle)
        if i < 0:
            return None
        start = i + len(needle)
        end = head.find(b"\r\n", start)
        return head[start:end].strip(b" \t")

    # -- connection ----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = HttpRequestParser(self)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "0.0.0.0"
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        self.src_ip = ip
        self.peer = f"{ip}:{peer[1]}" if peer else "-"
        fe = self.frontend
        fwd = b"X-Forwarded-For: " + ip.encode() + b"\r\n" if fe.forwardfor else b""
        bind = self.bind
        if bind is not None and bind.tls is not None:
            self.tls = True
            self.hsts = fe.hsts
            fwd += b"X-Forwarded-Proto: https\r\n"
            if bind.subject_header:
                from ..tls import subject_string

                sslobj = transport.get_extra_info("ssl_object")
                subject = subject_string(sslobj.getpeercert() if sslobj is not None else None)
                if subject:
                    fwd += bind.subject_header + b": " + subject.encode("utf-8", "replace") + b"\r\n"
        else:
            fwd += b"X-Forwarded-Proto: http\r\n"
        self.fwd = fwd
        self.fwd_end = fwd + b"\r\n"
        if not self.worker.conn_opened(self):
            return  # over maxconn: parked by the worker, which calls connection_made again
        self.t_start = self._loop.time()
        self._arm(fe.timeouts.http_request, T_REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            # The client went away by itself.
            if self.txn and self.term == "--":
                self.term = "CD" if self.resp_started else ("CR" if self.state == HEAD else "CH")
            self._close(abort=True)
        if self.txn:
            self._end_transaction(log=bool(self.head or self.buf))
        self.worker.conn_closed(self)
        self.transport = None

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state in (IDLE, HEAD):
            return False
        up = self.upstream
        if self.state == TUNNEL and up is not None and up.transport.can_write_eof():
            up.transport.write_eof()
            if self.server_eof:  # both directions are finished
                self._close()
                return False
        # Keep the connection to send the response; close after it.
        self.keep_client = False
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()
        if self.state == TUNNEL:  # timeout tunnel supersedes client and server timeouts
            self._arm(self._tunnel_timeout(), T_TUNNEL)
        else:
            self._arm(self.frontend.timeouts.client, T_CLIENT)

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.resume_reading()
            if self.state == TUNNEL:
                self._arm(self._tunnel_timeout(), T_TUNNEL)
            else:
                self._arm(self._server_timeout(), T_SERVER)

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.state != CLOSED:
                self.transport.resume_reading()

    def upstream_paused(self) -> None:
        self._pause(P_UPSTREAM)

    def upstream_resumed(self) -> None:
        self._resume(P_UPSTREAM)

    def _server_timeout(self) -> float:
        be = self.backend
        return be.timeouts.server if be is not None else self.frontend.timeouts.client

    # -- client data -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.frontend.bytes_in += len(data)
        state = self.state
        if state <= HEAD:
            self._head_data(data)
        elif state == BODY:
            self._body_data(data)
        elif state == TUNNEL:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
            self.bytes_up += len(data)
            self._arm(self._tunnel_timeout(), T_TUNNEL)
        elif state == DONE:
            # The next request, pipelined: parsed once this one is answered.
            self.buf += data
            if len(self.buf) > PIPELINE_LIMIT:
                self._pause(P_PIPELINE)

    def _head_data(self, data: bytes) -> None:
        limits = self.limits
        if self.state == IDLE:
            self.state = HEAD
            self.txn = True
            if self.nreq:
                now = self.t_start = self._loop.time()
                deadline = now + self.frontend.timeouts.http_request
                self._deadline = deadline
                self._tkind = T_REQUEST
                if deadline < self._timer_at:
                    self._rearm(deadline)
        if self.buf:
            buf = self.buf + data
            end = buf.find(b"\r\n\r\n", max(0, len(self.buf) - 3))
        else:
            buf = data
            end = data.find(b"\r\n\r\n")
        if not self.fed and buf[:2] == b"\r\n":
            # Empty lines before a request line are ignored (RFC 9112 2.2), as HAProxy does.
            stripped = buf
            while stripped[:2] == b"\r\n":
                stripped = stripped[2:]
            if not stripped:
                self.buf = b""
                self.state = IDLE
                self.txn = False
                return
            return self._head_data_again(stripped)
        if end < 0:
            if len(buf) > limits.max_header_size:
                self._reject(414 if buf.find(b"\r\n") < 0 else 431, "PR")
                return
            if buf.find(b"\r\n") < 0 and len(buf) > limits.max_request_line:
                self._reject(414, "PR")
                return
            try:
                self.parser.feed_data(buf[self.fed :] if self.fed else buf)
            except HttpParserUpgrade:
                pass
            except HttpParserError:
                self._reject(400, "PR")
                return
            self.fed = len(buf)
            self.buf = buf
            return
        end += 4
        if end > limits.max_header_size:
            self._reject(414 if buf.find(b"\r\n") >= limits.max_request_line else 431, "PR")
            return
        self.mc = False
        try:
            self.parser.feed_data(buf[self.fed : end] if self.fed or end != len(buf) else buf)
        except HttpParserUpgrade:
            self.upgrade = True
        except HttpParserError:
            self.fed = 0
            self._reject(400, "PR")
            return
        self.fed = 0
        self.buf = b""
        self._request(buf[:end] if end != len(buf) else buf, buf[end:])

    def _head_data_again(self, data: bytes) -> None:
        self.buf = b""
        self._head_data(data)

    def _request(self, head: bytes, rest: bytes) -> None:
        limits = self.limits
        loop = self._loop
        self.nreq += 1
        now = loop.time()
        self.t_head = int((now - self.t_start) * 1000)
        self.t_mark = now
        self.head = head
        le = head.find(b"\r\n")
        if le > limits.max_request_line:
            self._reject(414, "PR")
            return
        sp1 = head.find(b" ", 0, le)
        sp2 = head.rfind(b" ", 0, le)
        if sp2 <= sp1:
            self._reject(400, "PR")
            return
        version = head[sp2 + 1 : le]
        if version == b"HTTP/1.1":
            self.v11 = True
        elif version == b"HTTP/1.0":
            self.v11 = False
        else:
            self._reject(505, "PR")
            return
        method = head[:sp1]
        self.method = method
        self.target = head[sp1 + 1 : sp2]
        if method == b"CONNECT":
            self._reject(405, "PR")
            return
        # A header line takes at least 4 bytes: short heads need no count.
        if len(head) > 4 * limits.max_headers and head.count(b"\r\n") - 2 > limits.max_headers:
            self._reject(431, "PR")
            return

        host = None
        strip = False
        extra: set[bytes] | None = None
        chunked = False
        length = 0
        conn_close = conn_keep = False
        for name, value in REQUEST_HEADERS.findall(head):
            name = name.lower()
            if name == b"host":
                if host is not None:
                    self._reject(400, "PR")
                    return
                host = value.rstrip(b" \t")
            elif name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            else:
                strip = True
                if name == b"connection":
                    for token in connection_tokens(value):
                        if token == b"close":
                            conn_close = True
                        elif token == b"keep-alive":
                            conn_keep = True
                        elif token != b"upgrade":
                            if extra is None:
                                extra = set()
                            extra.add(token)
        if host is None:
            if self.v11:
                self._reject(400, "PR")
                return
            host = b""
        if chunked and not self.v11:
            # HTTP/1.0 has no chunked coding: the framing is faulty (RFC 9112 6.1).
            self._reject(400, "PR")
            return
        self.host_b = host
        # llhttp resets its keep-alive flags once a message completes, so decide here.
        self.keep_alive = not conn_close if self.v11 else conn_keep and not conn_close

        # The head as the server will see it.
        upgrade = self.upgrade
        if strip:
            names = _TUNNEL_STRIP if upgrade else REQUEST_STRIP
            if extra:
                names = frozenset(names | extra)
            up_head = strip_headers(head, names)
        else:
            up_head = head
        bind = self.bind
        if bind is not None and bind.subject_header:
            # Only the proxy may vouch for a client certificate.
            up_head = strip_headers(up_head, frozenset((bind.subject_header.lower(),)))
        if upgrade:
            up_head = up_head[:-2] + self.fwd + b"Connection: upgrade\r\n\r\n"
        else:
            up_head = up_head[:-2] + self.fwd_end

        # The body bytes that arrived with the head.
        part = b""
        if self.mc:
            self.state = DONE
            self.buf = rest
        elif chunked:
            self.chunks = ChunkedEnd()
            try:
                e = self.chunks.feed(rest)
            except ValueError:
                self._reject(400, "PR")
                return
            part = rest if e < 0 else rest[:e]
            self.buf = b"" if e < 0 else rest[e:]
            if not self._feed_body(part):
                return
        else:
            part = rest[:length]
            self.body_left = length - len(part)
            self.buf = rest[length:]
            if not self._feed_body(part):
                return
        if self.state == HEAD:
            self.state = BODY
            self._arm(self.frontend.timeouts.client, T_CLIENT)
        if self.buf and self.state == DONE and len(self.buf) > PIPELINE_LIMIT:
            self._pause(P_PIPELINE)
        self.pending = [up_head, part] if part else [up_head]
        self.pending_size = len(part)

        fe = self.frontend
        fe.requests += 1
        if fe.redirect_code and not self.tls:
            self._redirect_https()
            return
        backend = fe.route(self) if fe.has_rules else fe.default_backend
        if backend is None:
            self._reply_error(503, "PR" if not fe.has_rules else "P-")
            return
        self.backend = backend
        rules = backend.cookie_rules
        if rules is not None:
            value, self.cookie_first = rules.server_value(head, time.time())
            if value is not None:
                self.pinned = backend.by_cookie.get(value.decode("latin-1"))
            edited = rules.request_head(up_head)
            if edited is not up_head:
                self.pending[0] = edited  # type: ignore[index]
        self._dispatch()

    def _feed_body(self, part: bytes) -> bool:
        """Give body bytes to llhttp for validation; False (and a 400) if invalid."""
        if part:
            try:
                self.parser.feed_data(part)
            except HttpParserError:
                self._reject(400, "PR")
                return False
        if self.mc:
            self.state = DONE
            if self.chunks is None and self.body_left:
                self._reject(400, "PR")
                return False
        elif self.chunks is not None and self.chunks.state == ChunkedEnd.SIZE and not self.chunks.line \
                and self.buf:
            # ChunkedEnd saw the end but llhttp did not: they disagree.
            self._reject(400, "PR")
            return False
        return True

    def _body_data(self, data: bytes) -> None:
        self._arm(self.frontend.timeouts.client, T_CLIENT)
        if self.chunks is not None:
            try:
                e = self.chunks.feed(data)
            except ValueError:
                self._body_error()
                return
            if e < 0:
                part = data
            else:
                part, self.buf = data[:e], data[e:]
        else:
            left = self.body_left
            if len(data) <= left:
                part = data
            else:
                part, self.buf = data[:left], data[left:]
            self.body_left = left - len(part)
        try:
            self.parser.feed_data(part)
        except HttpParserError:
            self._body_error()
            return
        if self.mc:
            self.state = DONE
            if self.upstream is not None:
                self._arm(self._server_timeout(), T_SERVER)
        elif self.chunks is not None and self.buf:
            self._body_error()
            return
        up = self.upstream
        if up is not None:
            up.transport.write(part)
            self.bytes_up += len(part)
        elif self.pending is not None:
            self.pending.append(part)
            self.pending_size += len(part)
            if self.pending_size > PENDING_LIMIT:
                self._pause(P_PENDING)
        if self.buf and self.state == DONE and len(self.buf) > PIPELINE_LIMIT:
            self._pause(P_PIPELINE)

    def _body_error(self) -> None:
        """Invalid body framing after the head was accepted."""
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if self.resp_started:
            self.term = "PD"
            self._close(abort=True)
        else:
            self._reject(400, "PR")

    # -- choosing a server ---------------------------------------------------------------
    def _hash_key(self, backend: Any) -> bytes | None:
        kind = backend.key_kind
        if kind is None:
            return None
        if kind == "source":
            return self.src_ip.encode()
        if kind == "uri":
            return self.path.encode("latin-1")
        return self.header_bytes(kind[4:].encode())

    def _dispatch(self) -> None:
        be = self.backend
        if be.plain and be.usable:  # no persistence: the common case
            server = be.balancer.pick(self._hash_key(be) if be.key_kind else None)
            if server is not None:
                self._use(server)
                return
        stick = be.stick
        if self.pinned is not None:
            # Cookie persistence: the pinned server if it may still take the client.
            server = be.persistent(self.pinned)
            if server is not None:
                self._use(server)
                return
            self.pinned = None
        if stick is not None:
            key = self.src_ip.encode()
            server = be.persistent(be.by_name.get(stick.get(key, self._loop.time()) or ""))
            if server is not None:
                stick.put(key, server.name, self._loop.time())
                self._use(server)
                return
        if not be.usable:
            be.no_server += 1
            self._reply_error(503, "SC")
            return
        server = be.pick(self._hash_key(be) if be.key_kind else None)
        if server is None:
            # Every usable server is at its maxconn: wait in the backend queue.
            self.waiter = be.enqueue(self._dequeued)
            self._arm(be.timeouts.queue, T_QUEUE)
            return
        self._use(server)

    def _dequeued(self, server: Any) -> None:
        self.waiter = None
        if self.state == CLOSED:
            return
        self.t_queue = int((self._loop.time() - self.t_mark) * 1000)
        self._use(server)

    def _use(self, server: Any) -> None:
        if self.t_queue < 0:
            self.t_queue = 0
        be = self.backend
        be.acquire(server)
        server.sessions.add(self)
        self.server = server
        if not be.plain and be.stick is not None and self.pinned is None:
            key = self.src_ip.encode()
            be.stick.put(key, server.name, self._loop.time())
            sync = self.worker.stick_sync
            if sync is not None:
                sync(be.name, key, server.name)
        now = self.t_mark = self._loop.time()
        idle = server.idle
        if idle:
            conn = idle.pop()
            if conn.closed or now - conn.idle_since >= self.worker.pool_idle_timeout \
                    or conn.transport.is_closing():
                conn.close()
                conn = take_idle(server, now, self.worker.pool_idle_timeout)
            if conn is not None:
                self.t_connect = 0
                self._send(conn, now)
                return
        self._connect()

    def _connect(self) -> None:
        self._arm(self.backend.timeouts.connect, T_CONNECT)
        self.connecting = self._loop.create_task(self._open(self.server))

    async def _open(self, server: Any) -> None:
        loop = self._loop
        try:
            if server.tls is None:
                _, conn = await loop.create_connection(
                    lambda: Upstream(loop, server), server.host, server.port
                )
            else:
                _, conn = await loop.create_connection(
                    lambda: Upstream(loop, server), server.host, server.port,
                    ssl=server.tls, server_hostname=server.tls_sni,
                )
        except OSError as exc:
            self.connecting = None
            self._connect_failed(exc)
            return
        self.connecting = None
        if self.state == CLOSED or self.server is not server:
            conn.release()
            return
        self.t_connect = int((loop.time() - self.t_mark) * 1000)
        if server.obs_errors and server.observe == 4:
            server.obs_errors = 0
        self._send(conn)

    def _connect_failed(self, exc: Exception | None) -> None:
        server = self.server
        be = self.backend
        server.conn_errors += 1
        if server.observe:
            self._observe_error(server, "L4CON: connection failed" if exc is not None else "L4TOUT: connect timeout")
        if self.state == CLOSED:
            return
        if self.retries >= be.retries:
            self._reply_error(503, "SC")
            return
        self.retries += 1
        server.retries += 1
        if be.redispatch and self.retries == be.retries and (len(be.usable) > 1 or server not in be.usable):
            other = be.pick_other(server, self._hash_key(be) if be.key_kind else None)
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
        if self.state != CLOSED and self.server is server and self.upstream is None:
            self.t_mark = self._loop.time()
            self._connect()

    def _send(self, conn: Upstream, now: float = 0.0) -> None:
        self.upstream = conn
        conn.client = self
        conn.mc = False
        pending = self.pending
        self.pending = None
        if self.paused & P_PENDING:
            self._resume(P_PENDING)
        if self.write_paused:
            conn.transport.pause_reading()
        self.rstate = R_HEAD
        self.sent = True
        data = pending[0] if len(pending) == 1 else b"".join(pending)  # type: ignore[index]
        conn.transport.write(data)
        self.bytes_up += len(data)
        if self.state != BODY:
            deadline = (now or self._loop.time()) + self.backend.timeouts.server
            self._deadline = deadline
            self._tkind = T_SERVER
            if deadline < self._timer_at:
                self._rearm(deadline)
        else:  # more body to come: replaces the connect timer
            self._arm(self.frontend.timeouts.client, T_CLIENT)

    # -- server data ------------------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        rstate = self.rstate
        if rstate == R_HEAD:
            self._response_head(data)
        elif rstate == R_LENGTH:
            self._arm(self.backend.timeouts.server, T_SERVER)
            left = self.rleft
            n = len(data)
            if n > left:
                # Bytes after the response: the server is broken; do not forward them.
                data = data[:left]
                self.upstream.transport.pause_reading()  # type: ignore[union-attr]
                self.upstream.mc = False  # type: ignore[union-attr]
                self.rleft = 0
                self.transport.write(data)
                self.bytes_out += left
                self._response_done(reusable=False)
                return
            self.rleft = left - n
            self.upstream.parser.feed_data(data)  # type: ignore[union-attr]
            self.transport.write(data)
            self.bytes_out += n
            if not self.rleft:
                self._response_done(reusable=True)
        elif rstate == R_CHUNKED:
            self._arm(self.backend.timeouts.server, T_SERVER)
            self._response_chunks(data)
        elif rstate == R_CLOSE:
            self._arm(self.backend.timeouts.server, T_SERVER)
            self.transport.write(data)
            self.bytes_out += len(data)
        elif rstate == R_TUNNEL:
            self._arm(self._tunnel_timeout(), T_TUNNEL)
            self.transport.write(data)
            self.bytes_out += len(data)
        else:
            # Data while no response is expected (after a complete one): broken server.
            up = self.upstream
            if up is not None:
                self.upstream = None
                up.abort()

    def _response_head(self, data: bytes) -> None:
        up = self.upstream
        assert up is not None
        buf = self.rbuf + data if self.rbuf else data
        end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(data) - 3))
        if end < 0:
            if len(buf) > self.limits.max_header_size:
                self._bad_response()
                return
            try:
                up.parser.feed_data(buf[self.rfed :] if self.rfed else buf)
            except HttpParserUpgrade:
                pass
            except HttpParserError:
                self._bad_response()
                return
            self.rfed = len(buf)
            self.rbuf = buf
            self._arm(self.backend.timeouts.server, T_SERVER)
            return
        end += 4
        if end > self.limits.max_header_size:
            self._bad_response()
            return
        n = len(buf)

        # The framing headers first (a scan of the raw head; llhttp validates it
        # below), so that a response that came whole in one read is fed once.
        strip = False
        extra: set[bytes] | None = None
        length = -1
        chunked = False
        until_close = False
        conn_close = conn_keep = False
        only_keepalive = False  # the only hop-by-hop header is "Connection: keep-alive"
        for name, value in RESPONSE_HEADERS.findall(buf, 0, end):
            name = name.lower()
            if name == b"content-length":
                value = value.rstrip(b" \t")
                length = int(value) if value.isdigit() else -2  # llhttp rejects it below
            elif name == b"transfer-encoding":
                if value.rstrip(b" \t").lower().endswith(b"chunked"):
                    chunked = True
                else:
                    until_close = True
            else:
                if name == b"connection" and not strip and value.rstrip(b" \t").lower() == b"keep-alive":
                    conn_keep = only_keepalive = True
                    strip = True
                    continue
                strip = True
                only_keepalive = False
                if name == b"connection":
                    for token in connection_tokens(value):
                        if token == b"close":
                            conn_close = True
                        elif token == b"keep-alive":
                            conn_keep = True
                        elif token != b"upgrade":
                            if extra is None:
                                extra = set()
                            extra.add(token)
        whole = (
            end + length == n and not self.rfed and not chunked and not until_close
            and buf[9] != 49 and self.method != b"HEAD"  # not 1xx, not a HEAD answer
        )
        upgraded = False
        try:
            if whole or (not self.rfed and end == n):
                up.parser.feed_data(buf)
            else:
                up.parser.feed_data(buf[self.rfed : end])
        except HttpParserUpgrade:
            upgraded = True
        except HttpParserError:
            self._bad_response()
            return
        self.rfed = 0
        self.rbuf = b""
        status = up.parser.get_status_code()
        now = self._loop.time()
        if self.t_resp < 0:
            self.t_resp = int((now - self.t_mark) * 1000)

        if status < 200:
            head, rest = (buf, b"") if end == n else (buf[:end], buf[end:])
            if status == 101:
                if not (self.upgrade and upgraded):
                    self._bad_response()
                    return
                self._start_tunnel(head, rest)
                return
            # Interim response (100 Continue, 103 Early Hints): forward, then wait.
            up.mc = False
            if self.v11:
                self.transport.write(strip_headers(head, RESPONSE_STRIP))
            if rest:
                self._response_head(rest)
            else:
                self._arm(self.backend.timeouts.server, T_SERVER)
            return
        if upgraded:
            # A 2xx to CONNECT-like upgrade without 101: not something we relay.
            self._bad_response()
            return
        self.up_keep = not conn_close if buf[5:8] == b"1.1" else conn_keep and not conn_close

        if self.method == b"HEAD" or status in (204, 304):
            rstate = R_NONE
            if self.method == b"HEAD":
                up.new_parser()
                up.mc = True
        elif chunked:
            rstate = R_CHUNKED
        elif length >= 0 and not until_close:
            rstate = R_LENGTH
        else:
            rstate = R_CLOSE
        self.status = status

        keep = (
            self.keep_alive
            and self.keep_client
            and rstate != R_CLOSE
            and self.state == DONE
            and not self.worker.stopping
        )
        self.keep_client = keep
        rules = self.backend.cookie_rules
        if whole and keep and (only_keepalive or not strip) and (self.v11 or only_keepalive) \
                and not self.hsts and rules is None and n <= WRITE_JOIN_LIMIT:
            # Nothing to change in the head, the body is all here: forward the bytes
            # exactly as read, in one write.
            self.resp_started = True
            self.rstate = rstate
            self.rleft = 0
            self.transport.write(buf)
            self.bytes_out += n
            self._response_done(up.mc)
            return
        head, rest = (buf, b"") if end == n else (buf[:end], buf[end:])
        if strip and not (only_keepalive and keep):
            # (A lone "Connection: keep-alive" may stay when the proxy keeps the
            # client connection: it is then the proxy's own option, RFC 9110 7.6.1.)
            head = _STRIP_RESPONSE(b"", head) if not extra else \
                strip_headers(head, frozenset(RESPONSE_STRIP | extra))
            only_keepalive = False
        if not keep:
            if self.v11 or self.keep_alive:
                head = head[:-2] + b"Connection: close\r\n\r\n"
        elif not self.v11 and not only_keepalive:
            head = head[:-2] + b"Connection: keep-alive\r\n\r\n"

        if self.hsts:
            head = head[:-2] + self.hsts + b"\r\n"
        if rules is not None and self.server is not None:
            head = rules.response_head(head, self.server.cookie, self.pinned is self.server,
                                       time.time(), self.cookie_first)
        self.resp_started = True
        self.rstate = rstate
        self.bytes_out += len(head)
        if rstate == R_NONE:
            if not up.mc:
                self._bad_response()
                return
            self.transport.write(head)
            self._response_done(reusable=not rest)
        elif rstate == R_LENGTH:
            n = len(rest)
            if whole:
                # The whole body came with the head (the common small response),
                # and llhttp has seen all of it.
                self.rleft = 0
                if n <= WRITE_JOIN_LIMIT:
                    self.transport.write(head + rest)
                else:
                    self.transport.write(head)
                    self.transport.write(rest)
                self.bytes_out += n
                self._response_done(up.mc)
                return
            part = rest[:length] if n > length else rest
            self.rleft = length - len(part)
            if part:
                try:
                    up.parser.feed_data(part)
                except HttpParserError:
                    self._bad_response()
                    return
            self._write_head_and(head, part)
            if not self.rleft:
                self._response_done(reusable=n == len(part) and up.mc)
            else:
                deadline = now + self.backend.timeouts.server
                self._deadline = deadline
                self._tkind = T_SERVER
                if deadline < self._timer_at:
                    self._rearm(deadline)
        elif rstate == R_CHUNKED:
            self.rchunks = ChunkedEnd()
            if rest:
                # Chunks that came with the head are checked before the head goes out,
                # so that invalid framing there is still a 502.
                self.resp_started = False
                self.bytes_out -= len(head)
                self._response_chunks(rest, head)
            else:
                self.transport.write(head)
                self._arm(self.backend.timeouts.server, T_SERVER)
        else:
            self.keep_client = False
            self._write_head_and(head, rest)
            self._arm(self.backend.timeouts.server, T_SERVER)

    def _write_head_and(self, head: bytes, part: bytes) -> None:
        if not part:
            self.transport.write(head)
        elif len(part) <= WRITE_JOIN_LIMIT:
            self.transport.write(head + part)
            self.bytes_out += len(part)
        else:
            self.transport.write(head)
            self.transport.write(part)
            self.bytes_out += len(part)

    def _response_chunks(self, data: bytes, head: bytes = b"") -> None:
        up = self.upstream
        assert up is not None and self.rchunks is not None
        try:
            e = self.rchunks.feed(data)
        except ValueError:
            self._bad_response()
            return
        part = data if e < 0 else data[:e]
        try:
            up.parser.feed_data(part)
        except HttpParserError:
            self._bad_response()
            return
        if e >= 0 and not up.mc:
            self._bad_response()
            return
        if head:
            self.resp_started = True
            self.bytes_out += len(head)
            self._write_head_and(head, part)
        else:
            self.transport.write(part)
            self.bytes_out += len(part)
        if e >= 0:
            self._response_done(reusable=e == len(data))

    def _start_tunnel(self, head: bytes, rest: bytes) -> None:
        self.status = 101
        self.resp_started = True
        self.rstate = R_TUNNEL
        self.state = TUNNEL
        self.keep_client = False
        self.transport.write(head + rest if rest else head)
        self.bytes_out += len(head) + len(rest)
        if self.buf:
            self.upstream.transport.write(self.buf)  # type: ignore[union-attr]
            self.bytes_up += len(self.buf)
            self.buf = b""
        self._resume(P_PIPELINE)
        self._arm(self._tunnel_timeout(), T_TUNNEL)

    def _tunnel_timeout(self) -> float:
        t = self.frontend.timeouts
        be = self.backend.timeouts
        return be.tunnel if be.tunnel is not None else (t.tunnel if t.tunnel is not None else min(t.client, be.server))

    def upstream_eof(self) -> bool:
        rstate = self.rstate
        if rstate == R_CLOSE:
            self._response_done(reusable=False)
            return False
        if rstate == R_TUNNEL:
            self.server_eof = True
            if self.transport is not None and self.transport.can_write_eof():
                self.transport.write_eof()
            if self.client_eof:
                self._close()
            return True
        self._upstream_gone()
        return False

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.upstream is None:
            return
        if self.rstate == R_CLOSE:
            self.upstream = None
            self._response_done(reusable=False)
            return
        if self.rstate == R_TUNNEL:
            self.upstream = None
            self._close()
            return
        self._upstream_gone()

    def _upstream_gone(self) -> None:
        """The server closed before the response was complete."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.abort()
        if self.state == CLOSED:
            return
        if self.resp_started:
            self.term = "SD"
            self.server.resp_errors += 1
            self._close(abort=True)
            return
        if (
            up is not None
            and up.reused
            and not self.rbuf
            and self.state == DONE
            and self.method in SAFE_METHODS
            and self.chunks is None
            and not self.body_left
            and not self.replayed
        ):
            # A pooled connection that the server closed as we reused it: the
            # request was not processed.  Safe methods are sent again, once,
            # on a new connection (HAProxy's retry-on empty-response).
            self.replayed = True
            self.pending = [self._replay_head()]
            self.rstate = R_NONE
            self.t_mark = self._loop.time()
            self._connect()
            return
        self.server.resp_errors += 1
        self._reply_error(502, "SH")

    def _replay_head(self) -> bytes:
        head = self.head
        for name, _ in REQUEST_HEADERS.findall(head):
            if name.lower() in REQUEST_STRIP:
                head = strip_headers(head, REQUEST_STRIP)
                break
        return head[:-2] + self.fwd + b"\r\n"

    def _bad_response(self) -> None:
        """Invalid or unframeable response: 502 if nothing was sent yet."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.abort()
        if self.server is not None:
            self.server.resp_errors += 1
        if self.resp_started:
            self.term = "SD"
            self._close(abort=True)
        else:
            self._reply_error(502, "PH")

    def _response_done(self, reusable: bool) -> None:
        up = self.upstream
        self.upstream = None
        self.rstate = R_NONE
        state = self.state
        if up is not None:
            if reusable and up.mc and self.up_keep and state == DONE and self.v11 \
                    and not self.upgrade:
                up.release()
            else:
                up.close()
        self._end_transaction()
        if state == CLOSED or self.state == CLOSED:
            return
        if self.keep_client and state == DONE and not self.client_eof:
            self._next_request()
        else:
            self._close()

    def _next_request(self) -> None:
        if self.upgrade:
            self.parser = HttpRequestParser(self)
        self._new_request()
        self.state = IDLE
        self.mc = False
        if self.paused:
            self._resume(P_PIPELINE)
        if self.worker.stopping:
            self._close()
            return
        deadline = self._loop.time() + self.frontend.timeouts.http_keep_alive
        self._deadline = deadline
        self._tkind = T_KEEPALIVE
        if deadline < self._timer_at:
            self._rearm(deadline)
        if self.buf:
            data = self.buf
            self.buf = b""
            self._head_data(data)

    # -- ending -----------------------------------------------------------------------------
    def _end_transaction(self, log: bool = True) -> None:
        """Counters, the server slot and the log line for the current request."""
        self.txn = False
        server = self.server
        be = self.backend
        fe = self.frontend
        status = self.status
        nbytes = self.bytes_out
        cls = _CLASS.get(status // 100, 0)
        fe.responses[cls] += 1
        fe.bytes_out += nbytes
        if be is not None:
            be.responses[cls] += 1
            be.bytes_out += nbytes
            be.bytes_in += self.bytes_up
        if server is not None:
            self.server = None
            server.responses[cls] += 1
            server.bytes_out += nbytes
            server.bytes_in += self.bytes_up
            server.sessions.discard(self)
            be.release(server)
            if server.observe:
                if status >= 500 and (server.observe == 7 or self.term[0] == "S"):
                    self._observe_error(server, f"status {status}")
                elif server.obs_errors and 100 <= status < 500:
                    server.obs_errors = 0
        if self.waiter is not None:
            self.waiter.cancelled = True
            self.waiter = None
        if log and fe.log and self.worker.log.enabled:
            self._log(server)

    def _log(self, server: Any) -> None:
        """One httplog line (one f-string: this runs for every request)."""
        log = self.worker.log
        now = self._loop.time()
        t_start = self.t_start
        head = self.head
        line = head[: head.find(b"\r\n")].decode("latin-1") if head else "<BADREQ>"
        be = self.backend
        fe = self.frontend
        if server is not None:
            target = server.log_prefix
            srv_active = server.active
        else:
            target = f"{be.name if be is not None else fe.name}/<NOSRV>"
            srv_active = 0
        if be is not None:
            be_active = be.active
            queued = len(be.queue)
        else:
            be_active = queued = 0
        wall = time.time() - (now - t_start)
        if log.format != "httplog":
            log.http(self.peer, wall, fe.name, target, self.t_head, self.t_queue, self.t_connect,
                     self.t_resp, int((now - t_start) * 1000), self.status, self.bytes_out, self.term,
                     f"{self.worker.conns}/{fe.conns}/{be_active}/{srv_active}/{self.retries}",
                     f"0/{queued}", line)
            return
        n = _NUM  # small numbers as ready-made strings (most fields are)
        th, tw, tc, tr, ta = self.t_head, self.t_queue, self.t_connect, self.t_resp, int((now - t_start) * 1000)
        status, nbytes, conns, fconns = self.status, self.bytes_out, self.worker.conns, fe.conns
        log.write(
            f"{self.peer} [{log.date(wall)}] {fe.name} {target} {n(th) or th}/{n(tw) or tw}/"
            f"{n(tc) or tc}/{n(tr) or tr}/{n(ta) or ta} {n(status) or status} {n(nbytes) or nbytes} - - "
            f"{self.term}-- {n(conns) or conns}/{n(fconns) or fconns}/{n(be_active) or be_active}/"
            f"{n(srv_active) or srv_active}/{self.retries} 0/{queued} \"{line}\"\n"
        )

    def _reject(self, code: int, term: str) -> None:
        """A bad request: answer and close; nothing has been or will be forwarded."""
        self.frontend.bad_requests += 1
        if not self.head:
            self.head = self.buf
            if self.t_head < 0:
                self.t_head = int((self._loop.time() - self.t_start) * 1000)
        self.buf = b""
        self.pending = None
        self._reply_error(code, term)

    def _reply_error(self, code: int, term: str) -> None:
        if self.state == CLOSED:
            return
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self.status = code
        self.term = term
        if not self.resp_started:
            page = ERROR_PAGES[code]
            self.transport.write(page)
            self.bytes_out += len(page)
            self.resp_started = True
        self.keep_client = False
        self._end_transaction()
        self._close()

    def _close(self, abort: bool = False) -> None:
        """Close the client connection; connection_lost finishes the accounting."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._cancel_timer()
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if self.waiter is not None:
            self.waiter.cancelled = True
            self.waiter = None
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    # -- timeouts ------------------------------------------------------------------------
    def _timeout(self, kind: int) -> None:
        if self.state == CLOSED:
            return
        if kind == T_KEEPALIVE:
            self._close()
        elif kind == T_REQUEST:
            if self.state == HEAD:
                self._reject(408, "cR")
            else:
                self._close()
        elif kind == T_QUEUE:
            if self.waiter is not None:
                self.waiter.cancelled = True
                self.waiter = None
            self.backend.queue_timeouts += 1
            self.t_queue = int((self._loop.time() - self.t_mark) * 1000)
            self._reply_error(503, "sQ")
        elif kind == T_CONNECT:
            if self.connecting is not None:
                self.connecting.cancel()
                self.connecting = None
            self._connect_failed(None)
        elif kind == T_SERVER:
            if self.resp_started:
                self.term = "sD"
                self._close(abort=True)
            else:
                self._reply_error(504, "sH")
        elif kind == T_CLIENT:
            self.term = "cD"
            self._close(abort=True)
        elif kind == T_TUNNEL:
            self.term = "cD"
            self._close()

    # -- graceful stop -------------------------------------------------------------------
    def stop_if_idle(self) -> bool:
        """Graceful stop: nothing is cut.  A connection that has not sent its first
        request yet may have it on the way: it is served, then closed.  A keep-alive
        connection between requests gets a short grace (STOP_GRACE) for a request
        already sent, answered with ``Connection: close``; then it closes while its
        input is empty, so the client sees a FIN, not a reset."""
        self.keep_client = False
        if self.state == IDLE and self.nreq:
            self._arm(min(STOP_GRACE, self.frontend.timeouts.http_keep_alive), T_KEEPALIVE)
        return False

    def kill_session(self) -> None:
        """``shutdown sessions``: abort this transaction at once (termination K)."""
        if self.state != CLOSED:
            self.term = "KD" if self.resp_started else "KC"
            self._close(abort=True)

    def _observe_error(self, server: Any, reason: str) -> None:
        """Passive check: report after ``error_limit`` consecutive errors."""
        server.obs_errors += 1
        if server.obs_errors >= server.cfg.error_limit:
            server.obs_errors = 0
            observer = self.worker.observer
            if observer is not None:
                observer(server.backend.name, server.name, False, reason)

    def _redirect_https(self) -> None:
        """``redirect_to_https`` on a plain bind: 301 (or the configured code) to https."""
        fe = self.frontend
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = "" if fe.https_port == 443 else f":{fe.https_port}"
        target = self.target.decode("latin-1")
        if not target.startswith("/"):
            target = "/" + target.split("://", 1)[-1].partition("/")[2]
        code = fe.redirect_code
        if code == 301 and self.method not in (b"GET", b"HEAD"):
            code = 308  # keep the method and body
        reason = {301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect",
                  308: "Permanent Redirect"}[code]
        location = f"https://{host}{port}{target}"
        keep = self.keep_alive and self.state == DONE and not self.worker.stopping
        head = (f"HTTP/1.1 {code} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                + ("" if keep else "Connection: close\r\n") + "\r\n").encode("latin-1", "replace")
        self.transport.write(head)
        self.status = code
        self.resp_started = True
        self.bytes_out += len(head)
        self.keep_client = keep
        self.pending = None
        self._end_transaction()
        if keep:
            self._next_request()
        else:
            self._close()


class TlsHttpClient(HttpClient):
    """A client on a TLS bind.  asyncio creates the protocol before the handshake
    and calls ``connection_made`` only after it succeeded, so a protocol dropped
    without ``connection_made`` is a failed (or abandoned) handshake: counted."""

    def eof_received(self) -> bool:
        # The client's close_notify: handled as a FIN, but a TLS connection cannot
        # stay half-open: uvloop closes it once what was written is flushed, and
        # logs a warning for every True returned here.
        super().eof_received()
        return False

    def __del__(self) -> None:
        if self.peer == "-" and self.bind is not None and self.bind.tls is not None:
            self.bind.tls.handshake_failures += 1
            self.frontend.tls_failures += 1
