"""Active health checks, run once in the master for every worker.

Each checked server has one chain of checks: a TCP connect, or with the backend's
``httpchk`` an HTTP/1.1 request whose status must be in ``expect_status``.
A server goes DOWN after ``fall`` consecutive failures and UP after ``rise``
consecutive successes; a server that starts DOWN (``init_state: down``, the
default with ``check``) comes UP on its first success.  Intervals follow
HAProxy: ``inter`` while stable, ``fastinter`` while changing, ``downinter``
while down; the first check of each server is delayed by a random share of
its interval so that checks are spread.  Results use HAProxy's check status
names (L4OK, L4TOUT, L4CON, L7OK, L7STS, L7RSP, L7TOUT).

Checks are non-blocking sockets on one epoll set of their own, started and
timed out by one timer on a 10 ms grid (no task, no per-check timer or loop
watcher, no HTTP client library), to keep a thousand servers at a 2 s interval
under 5% of a core.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
import logging
import math
import os
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from .config import split_host_port
from .runtime import DOWN, UP, Server, resolve_host

log = logging.getLogger("fleetproxy")


class CheckResult:
    __slots__ = ("desc", "duration", "ok", "status")

    def __init__(self, ok: bool, status: str, desc: str, duration: int) -> None:
        self.ok = ok
        self.status = status
        self.desc = desc
        self.duration = duration


def _status_line(buf: bytes, expect: frozenset[int] | None) -> tuple[bool, str, str] | None:
    """The verdict on a response that starts with ``buf``; None until its status line is whole."""
    end = buf.find(b"\r\n")
    if end < 0:
        return (False, "L7RSP", "status line too long") if len(buf) > 4096 else None
    parts = buf[:end].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False, "L7RSP", "invalid status line"
    code = int(parts[1])
    if expect is None or code in expect:
        return True, "L7OK", f"status {code}"
    return False, "L7STS", f"status {code}"


class _Probe(asyncio.Protocol):
    """Connect, optionally send a request, and read the status line."""

    def __init__(self, request: bytes | None, expect: frozenset[int] | None,
                 done: asyncio.Future[tuple[bool, str, str]]) -> None:
        self.request = request
        self.expect = expect
        self.done = done
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.request is None:
            self._finish(True, "L4OK", "connected")
        else:
            transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        verdict = _status_line(self.buf, self.expect)
        if verdict is not None:
            self._finish(*verdict)

    def eof_received(self) -> bool:
        self._finish(False, "L7RSP", "connection closed before a status line")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(False, "L7RSP", "connection lost")

    def _finish(self, ok: bool, status: str, desc: str) -> None:
        if not self.done.done():
            self.done.set_result((ok, status, desc))
        if self.transport is not None:
            self.transport.abort() if status != "L4OK" else self.transport.close()


async def run_check(loop: asyncio.AbstractEventLoop, host: str, port: int, timeout: float,
                    request: bytes | None, expect: frozenset[int] | None,
                    tls: Any = None, sni: str = "") -> CheckResult:
    start = time.monotonic()
    done: asyncio.Future[tuple[bool, str, str]] = loop.create_future()

    def ms() -> int:
        return int((time.monotonic() - start) * 1000)

    try:
        if tls is None:
            connect = loop.create_connection(lambda: _Probe(request, expect, done), host, port)
        else:
            connect = loop.create_connection(lambda: _Probe(request, expect, done), host, port,
                                             ssl=tls, server_hostname=sni)
        await asyncio.wait_for(connect, timeout)
    except asyncio.TimeoutError:
        return CheckResult(False, "L4TOUT", "connection timeout", ms())
    except ssl.SSLError as exc:
        return CheckResult(False, "L6RSP", f"TLS: {exc.reason or exc}", ms())
    except OSError as exc:
        return CheckResult(False, "L4CON", exc.strerror or str(exc), ms())
    try:
        ok, status, desc = await asyncio.wait_for(done, max(0.001, timeout - (time.monotonic() - start)))
    except asyncio.TimeoutError:
        done.cancel()
        return CheckResult(False, "L7TOUT", "timeout waiting for the response", ms())
    return CheckResult(ok, status, desc, ms())


# Starts and timeouts are kept to a 10 ms grid: checks due within one tick start together,
# so 1 000 servers at a 2 s interval cost about 100 wake-ups a second instead of 1 000.
TICK = 0.01
_EARLY = 0.002  # loop time has millisecond resolution: "due" allows for rounding
_IDLE, _CONNECTING, _READING = 0, 1, 2
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # no fcntl/ioctl per check
_LINGER_RESET = struct.pack("ii", 1, 0)


class _Check:
    """One server's checks, as a small state machine driven by :class:`HealthChecker`:
    a non-blocking connect watched on the checker's own epoll, for HTTP a request and
    the status line, a deadline, and the next start on the checker's schedule.  TCP
    checks do what HAProxy's do: the final ACK of the handshake is held back
    (TCP_QUICKACK off) and the socket is closed with a reset as soon as the connect
    succeeded, so the server never has to accept it.  HTTP checks hold the ACK back
    too, so that it leaves with the request.  Checks over TLS use the asyncio path
    (:func:`run_check`)."""

    __slots__ = ("addr", "attempt", "buf", "cancelled", "checker", "counts", "expect", "family", "fd",
                 "last_health", "never_up", "next_at", "phase", "request", "server", "sni",
                 "sock", "t0", "task", "tls")

    def __init__(self, checker: HealthChecker, server: Server) -> None:
        self.checker = checker
        self.server = server
        cfg = server.cfg
        host, port = server.host, server.port
        if cfg.check_address:
            host, port = split_host_port(cfg.check_address, what="check address", allow_wildcard=False)
            host = resolve_host(host)  # once, not a blocking lookup per check
        self.addr = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.request, self.expect = checker._request(server)
        self.tls: Any = None
        self.sni = ""
        if cfg.tls is not None:
            from .tls import client_context

            self.tls = client_context(cfg.tls)
            self.sni = cfg.tls.sni or ""
        self.counts = [0, 0]  # consecutive successes, consecutive failures
        self.never_up = server.health == DOWN and cfg.init_state == "down"
        self.last_health = server.health
        self.sock: socket.socket | None = None
        self.fd = -1
        self.phase = _IDLE
        self.attempt = 0
        self.next_at = -1.0  # when the next check starts; -1: not scheduled
        self.task: Any = None
        self.buf = b""
        self.t0 = 0.0
        self.cancelled = False
        # First checks are spread over (up to 2 s of) the interval.
        checker._schedule(self, random.uniform(0, min(cfg.inter, 2.0)))  # type: ignore[arg-type]

    # -- one check ------------------------------------------------------------------------
    def start(self) -> None:
        self.next_at = -1.0
        checker = self.checker
        server = self.server
        timeout = server.backend.timeouts.check or server.cfg.inter
        self.t0 = time.monotonic()
        if self.tls is not None:
            self.task = checker.loop.create_task(self._tls_check(timeout))  # type: ignore[arg-type]
            return
        try:
            sock = socket.socket(self.family, _STREAM_NONBLOCK)
        except OSError as exc:  # out of file descriptors: a failed check, not a dead chain
            self._record(False, "L4CON", f"socket: {exc.strerror or exc}")
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        except (OSError, AttributeError):
            pass
        err = sock.connect_ex(self.addr)
        if err and err != errno.EINPROGRESS:
            sock.close()
            self._record(False, "L4CON", os.strerror(err))
            return
        try:
            checker._ep.register(sock.fileno(), select.EPOLLOUT)
        except OSError as exc:  # ENOSPC (max_user_watches), ENOMEM
            sock.close()
            self._record(False, "L4CON", f"epoll: {exc.strerror or exc}")
            return
        self.sock = sock
        self.fd = sock.fileno()
        self.phase = _CONNECTING
        self.buf = b""
        self.attempt += 1
        checker._watch(self, timeout)  # type: ignore[arg-type]

    def on_event(self) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.phase == _CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._done(False, "L4CON", os.strerror(err))
            elif self.request is None:
                self._done(True, "L4OK", "connected")
            else:
                try:
                    sock.send(self.request)
                except OSError as exc:
                    self._done(False, "L7RSP", exc.strerror or str(exc))
                    return
                self.phase = _READING
                self.checker._ep.modify(self.fd, select.EPOLLIN)
            return
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._done(False, "L7RSP", exc.strerror or str(exc))
            return
        if not data:
            self._done(False, "L7RSP", "connection closed before a status line")
            return
        self.buf += data
        verdict = _status_line(self.buf, self.expect)
        if verdict is not None:
            self._done(*verdict)

    def on_timeout(self) -> None:
        if self.phase == _READING:
            self._done(False, "L7TOUT", "timeout waiting for the response")
        else:
            self._done(False, "L4TOUT", "connection timeout")

    async def _tls_check(self, timeout: float) -> None:
        try:
            result = await run_check(self.checker.loop, self.addr[0], self.addr[1], timeout,
                                     self.request, self.expect, self.tls, self.sni)
        except Exception as exc:  # a failed check, never a dead chain
            result = CheckResult(False, "L6RSP", f"TLS check: {exc}", -1)
        self.task = None
        self.checker._guarded(self, lambda: self._record(result.ok, result.status, result.desc, result.duration))

    def _release(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        self.phase = _IDLE
        # close() also takes the socket out of the epoll set: check sockets are
        # close-on-exec and never shared, so no other reference keeps it there.
        self.checker._fds.pop(self.fd, None)
        self.fd = -1
        if self.request is None:
            # Reset instead of FIN: no TIME_WAIT here, nothing to accept there.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()

    def _done(self, ok: bool, status: str, desc: str) -> None:
        self._release()
        self._record(ok, status, desc)

    # -- bookkeeping ----------------------------------------------------------------------
    def _record(self, ok: bool, status: str, desc: str, duration: int = -1) -> None:
        if self.cancelled:
            return  # a TLS check whose cancellation asyncio.wait_for swallowed (3.10, 3.11)
        checker = self.checker
        server = self.server
        server.check_status = status
        server.check_desc = desc
        server.check_duration = duration if duration >= 0 else int((time.monotonic() - self.t0) * 1000)
        server.check_count += 1
        server.check_at = checker.loop.time()
        counts = self.counts
        if server.health != self.last_health:
            # Changed outside the checks (passive check, admin): count afresh,
            # so a server marked down needs `rise` successes to come back.
            counts[0] = counts[1] = 0
        if ok:
            counts[0] += 1
            counts[1] = 0
            if checker.fast:
                checker.fast.discard(id(server))
            if server.health == DOWN and (counts[0] >= server.cfg.rise or self.never_up):  # type: ignore[operator]
                checker.on_change(server, UP, f"{status} ({desc}), {counts[0]} check(s) passed")
            self.never_up = False
        else:
            counts[0] = 0
            counts[1] += 1
            server.check_fails += 1
            if server.health == UP and counts[1] >= server.cfg.fall:  # type: ignore[operator]
                checker.on_change(server, DOWN, f"{status} ({desc}), {counts[1]} check(s) failed")
        self.last_health = server.health
        if not checker.stopped and self.next_at < 0:
            checker._schedule(self, checker._interval(server))

    def wake(self) -> None:
        """Check at the next tick, unless a check is running."""
        if self.sock is None and self.task is None:
            self.checker._schedule(self, 0.0)

    def cancel(self) -> None:
        self.cancelled = True
        self.next_at = -1.0
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._release()


class HealthChecker:
    """Runs the checks and reports state changes through ``on_change``.

    One epoll set (registered once with the event loop) watches every check
    socket, and one timer on a :data:`TICK` grid starts due checks and expires
    the running ones: no per-check timer or loop watcher.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[Server, str, str], None],
    ) -> None:
        self.loop = loop
        self.on_change = on_change
        self.checks: dict[int, _Check] = {}
        self.counts: dict[int, list[int]] = {}  # id(server) -> [consecutive ok, consecutive fail]
        self.fast: set[int] = set()  # servers switched to fastinter by passive checks
        self.stopped = False
        self._ep = select.epoll()
        self._fds: dict[int, _Check] = {}  # socket fd -> its running check
        self._due: list[tuple[float, int, _Check]] = []  # (start at, seq, check); stale if next_at differs
        self._deadlines: list[tuple[float, int, _Check, int]] = []  # (expires, seq, check, attempt)
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._ticking = False
        loop.add_reader(self._ep.fileno(), self._on_events)

    def sync(self, servers: list[Server]) -> None:
        """Run exactly one check chain per server with checks enabled."""
        wanted = {id(s): s for s in servers if s.check and s.check_enabled}
        for key in list(self.checks):
            if key not in wanted:
                self.checks.pop(key).cancel()
                self.counts.pop(key, None)
        for key, server in wanted.items():
            if key not in self.checks:
                try:
                    check = _Check(self, server)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    server.check_status, server.check_desc = "L6RSP", f"check setup: {exc}"
                    continue
                self.checks[key] = check
                self.counts[key] = check.counts

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for check in self.checks.values():
            check.cancel()
        self.checks.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
        self._deadlines.clear()
        self.loop.remove_reader(self._ep.fileno())
        self._ep.close()

    def wake(self, server: Server, fast: bool = True) -> None:
        """Check now (passive checks saw errors: ``on_error: fastinter``)."""
        if fast:
            self.fast.add(id(server))
        check = self.checks.get(id(server))
        if check is not None:
            check.wake()

    def _interval(self, server: Server) -> float:
        cfg = server.cfg
        ok, fail = self.counts.get(id(server), [0, 0])
        if id(server) in self.fast:
            return cfg.fastinter  # type: ignore[return-value]
        if server.health == DOWN:
            return cfg.fastinter if ok else cfg.downinter  # type: ignore[return-value]
        return cfg.fastinter if fail else cfg.inter  # type: ignore[return-value]

    # -- scheduling -------------------------------------------------------------------------
    def _schedule(self, check: _Check, delay: float) -> None:
        """Start ``check`` in ``delay`` seconds (replacing a start already scheduled)."""
        when = self.loop.time() + delay
        check.next_at = when
        heapq.heappush(self._due, (when, next(self._seq), check))
        self._arm(when)

    def _watch(self, check: _Check, timeout: float) -> None:
        """``check`` is connecting (its socket registered): wait at most ``timeout`` seconds."""
        self._fds[check.fd] = check
        expires = self.loop.time() + timeout
        heapq.heappush(self._deadlines, (expires, next(self._seq), check, check.attempt))
        self._arm(expires)

    def _arm(self, when: float) -> None:
        if self._ticking or self.stopped:
            return
        at = math.ceil(when / TICK) * TICK
        if at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._ticking = True
        try:
            now = self.loop.time() + _EARLY
            due = self._due
            while due and due[0][0] <= now:
                when, _, check = heapq.heappop(due)
                if check.next_at == when:
                    self._guarded(check, check.start)
            deadlines = self._deadlines
            while deadlines and deadlines[0][0] <= now:
                _, _, check, attempt = heapq.heappop(deadlines)
                if check.attempt == attempt and check.sock is not None:
                    self._guarded(check, check.on_timeout)
        finally:
            self._ticking = False
            if not self.stopped:
                self._rearm()

    def _guarded(self, check: _Check, step: Callable[[], None]) -> None:
        """Run one step of ``check``; a bug in it (or in ``on_change``) is logged, and that
        server is checked again after its interval instead of never again."""
        try:
            step()
        except Exception:
            log.exception("health check of server %s failed unexpectedly", check.server.log_prefix)
            check._release()
            if check.next_at < 0 and not check.cancelled:
                self._schedule(check, self._interval(check.server))

    def _rearm(self) -> None:
        """Arm the timer for the first start or live deadline; stale entries go."""
        due, deadlines = self._due, self._deadlines
        while due and due[0][2].next_at != due[0][0]:
            heapq.heappop(due)
        while deadlines and (deadlines[0][2].attempt != deadlines[0][3] or deadlines[0][2].sock is None):
            heapq.heappop(deadlines)
        first = min(due[0][0] if due else math.inf, deadlines[0][0] if deadlines else math.inf)
        if first < math.inf:
            self._arm(first)

    def _on_events(self) -> None:
        fds = self._fds
        for fd, _ in self._ep.poll(0, 256):
            check = fds.get(fd)
            if check is not None:
                self._guarded(check, check.on_event)

    def _request(self, server: Server) -> tuple[bytes | None, frozenset[int] | None]:
        chk = server.backend.httpchk
        if chk is None:
            return None, None
        host = chk.host or (f"{server.host}:{server.port}" if ":" not in server.host else server.host)
        req = (
            f"{chk.method} {chk.path} HTTP/1.1\r\nHost: {host}\r\n"
            "User-Agent: fleetproxy-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        return req, frozenset(chk.expect_status)
