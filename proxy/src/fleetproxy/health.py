"""Active health checks, run once in the master for every worker.

Each checked server has one task: a TCP connect, or with the backend's
``httpchk`` an HTTP/1.1 request whose status must be in ``expect_status``.
A server goes DOWN after ``fall`` consecutive failures and UP after ``rise``
consecutive successes; a server that starts DOWN (``init_state: down``, the
default with ``check``) comes UP on its first success.  Intervals follow
HAProxy: ``inter`` while stable, ``fastinter`` while changing, ``downinter``
while down; the first check of each server is delayed by a random share of
its interval so that checks are spread.  Results use HAProxy's check status
names (L4OK, L4TOUT, L4CON, L7OK, L7STS, L7RSP, L7TOUT).

Checks are non-blocking sockets driven by callbacks (no task, no HTTP client
library) to keep a thousand servers at a 2 s interval under 5% of a core.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from .config import split_host_port
from .runtime import DOWN, UP, Server


class CheckResult:
    __slots__ = ("desc", "duration", "ok", "status")

    def __init__(self, ok: bool, status: str, desc: str, duration: int) -> None:
        self.ok = ok
        self.status = status
        self.desc = desc
        self.duration = duration


class _Probe(asyncio.Protocol):
    """Connect, optionally send a request, and read the status line."""

    def __init__(self, request: bytes | None, done: asyncio.Future[tuple[str, str]]) -> None:
        self.request = request
        self.done = done
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.request is None:
            self._finish("L4OK", "")
        else:
            transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > 4096:
                self._finish("L7RSP", "status line too long")
            return
        parts = self.buf[:end].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._finish("L7RSP", "invalid status line")
            return
        self._finish("L7", parts[1].decode())

    def eof_received(self) -> bool:
        self._finish("L7RSP", "connection closed before a status line")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("L7RSP", "connection lost")

    def _finish(self, status: str, detail: str) -> None:
        if not self.done.done():
            self.done.set_result((status, detail))
        if self.transport is not None:
            self.transport.abort() if status != "L4OK" else self.transport.close()


async def run_check(loop: asyncio.AbstractEventLoop, host: str, port: int, timeout: float,
                    request: bytes | None, expect: frozenset[int] | None,
                    tls: Any = None, sni: str = "") -> CheckResult:
    start = time.monotonic()
    done: asyncio.Future[tuple[str, str]] = loop.create_future()

    def ms() -> int:
        return int((time.monotonic() - start) * 1000)

    try:
        if tls is None:
            connect = loop.create_connection(lambda: _Probe(request, done), host, port)
        else:
            connect = loop.create_connection(lambda: _Probe(request, done), host, port,
                                             ssl=tls, server_hostname=sni)
        await asyncio.wait_for(connect, timeout)
    except asyncio.TimeoutError:
        return CheckResult(False, "L4TOUT", "connection timeout", ms())
    except ssl.SSLError as exc:
        return CheckResult(False, "L6RSP", f"TLS: {exc.reason or exc}", ms())
    except OSError as exc:
        return CheckResult(False, "L4CON", exc.strerror or str(exc), ms())
    try:
        status, detail = await asyncio.wait_for(done, max(0.001, timeout - (time.monotonic() - start)))
    except asyncio.TimeoutError:
        done.cancel()
        return CheckResult(False, "L7TOUT", "timeout waiting for the response", ms())
    if status == "L4OK":
        return CheckResult(True, "L4OK", "connected", ms())
    if status == "L7":
        code = int(detail)
        if expect is None or code in expect:
            return CheckResult(True, "L7OK", f"status {code}", ms())
        return CheckResult(False, "L7STS", f"status {code}", ms())
    return CheckResult(False, status, detail, ms())


class _Check:
    """One server's checks, as a chain of callbacks (no task, no future): a
    non-blocking connect watched with ``add_writer``, for HTTP a request and the
    status line read with ``add_reader``, a timeout, and the next check scheduled
    with ``call_later``.  TCP checks do what HAProxy's do: the final ACK of the
    handshake is held back (TCP_QUICKACK off) and the socket is closed with a reset
    as soon as the connect succeeded, so the server never has to accept it.
    Checks over TLS use the asyncio path (:func:`run_check`)."""

    __slots__ = ("buf", "checker", "connected", "counts", "expect", "family", "handle", "host",
                 "last_health", "never_up", "port", "request", "server", "sni", "sock", "t0",
                 "task", "timer", "tls")

    def __init__(self, checker: HealthChecker, server: Server) -> None:
        self.checker = checker
        self.server = server
        cfg = server.cfg
        self.host, self.port = server.host, server.port
        if cfg.check_address:
            self.host, self.port = split_host_port(cfg.check_address, what="check address",
                                                   allow_wildcard=False)
        self.family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
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
        self.timer: Any = None
        self.task: Any = None
        self.buf = b""
        self.connected = False
        self.t0 = 0.0
        # First checks are spread over (up to 2 s of) the interval.
        self.handle: Any = checker.loop.call_later(random.uniform(0, min(cfg.inter, 2.0)), self.start)  # type: ignore[arg-type]

    # -- one check ------------------------------------------------------------------------
    def start(self) -> None:
        self.handle = None
        loop = self.checker.loop
        cfg = self.server.cfg
        timeout = self.server.backend.timeouts.check or cfg.inter
        self.t0 = time.monotonic()
        if self.tls is not None:
            self.task = loop.create_task(self._tls_check(timeout))  # type: ignore[arg-type]
            return
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.request is None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            except (OSError, AttributeError):
                pass
        self.sock = sock
        self.connected = False
        self.buf = b""
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            self._done(False, "L4CON", os.strerror(err))
            return
        self.timer = loop.call_later(timeout, self._on_timeout)  # type: ignore[arg-type]
        loop.add_writer(sock.fileno(), self._on_connected)

    def _on_connected(self) -> None:
        sock = self.sock
        if sock is None:
            return
        loop = self.checker.loop
        fd = sock.fileno()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._done(False, "L4CON", os.strerror(err))
            return
        self.connected = True
        if self.request is None:
            self._done(True, "L4OK", "connected")
            return
        try:
            sock.send(self.request)
        except OSError as exc:
            self._done(False, "L7RSP", exc.strerror or str(exc))
            return
        # The reader first: the event loop then keeps its watcher of this fd.
        loop.add_reader(fd, self._on_readable)
        loop.remove_writer(fd)

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
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
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > 4096:
                self._done(False, "L7RSP", "status line too long")
            return
        parts = self.buf[:end].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self._done(False, "L7RSP", "invalid status line")
            return
        code = int(parts[1])
        expect = self.expect
        if expect is None or code in expect:
            self._done(True, "L7OK", f"status {code}")
        else:
            self._done(False, "L7STS", f"status {code}")

    def _on_timeout(self) -> None:
        self.timer = None
        if self.connected:
            self._done(False, "L7TOUT", "timeout waiting for the response")
        else:
            self._done(False, "L4TOUT", "connection timeout")

    async def _tls_check(self, timeout: float) -> None:
        result = await run_check(self.checker.loop, self.host, self.port, timeout, self.request,
                                 self.expect, self.tls, self.sni)
        self.task = None
        self._record(result)

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock = self.sock
        if sock is not None:
            self.sock = None
            loop = self.checker.loop
            fd = sock.fileno()
            loop.remove_writer(fd)
            loop.remove_reader(fd)
            if self.request is None:
                # Reset instead of FIN: no TIME_WAIT here, nothing to accept there.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()

    def _done(self, ok: bool, status: str, desc: str) -> None:
        self._release()
        self._record(CheckResult(ok, status, desc, int((time.monotonic() - self.t0) * 1000)))

    # -- bookkeeping ----------------------------------------------------------------------
    def _record(self, result: CheckResult) -> None:
        checker = self.checker
        server = self.server
        cfg = server.cfg
        server.check_status = result.status
        server.check_desc = result.desc
        server.check_duration = result.duration
        server.check_count += 1
        server.check_at = checker.loop.time()
        if checker.on_result is not None:
            checker.on_result(server, result)
        counts = self.counts
        if server.health != self.last_health:
            # Changed outside the checks (passive check, admin): count afresh,
            # so a server marked down needs `rise` successes to come back.
            counts[0] = counts[1] = 0
        if result.ok:
            counts[0] += 1
            counts[1] = 0
            checker.fast.discard(id(server))
            if server.health == DOWN and (counts[0] >= cfg.rise or self.never_up):  # type: ignore[operator]
                checker.on_change(server, UP, f"{result.status} ({result.desc}), {counts[0]} check(s) passed")
            self.never_up = False
        else:
            counts[0] = 0
            counts[1] += 1
            server.check_fails += 1
            if server.health == UP and counts[1] >= cfg.fall:  # type: ignore[operator]
                checker.on_change(server, DOWN, f"{result.status} ({result.desc}), {counts[1]} check(s) failed")
        self.last_health = server.health
        if self.handle is None and not checker.stopped:
            self.handle = checker.loop.call_later(checker._interval(server), self.start)

    def wake(self) -> None:
        """Check now, unless a check is running."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            self.start()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._release()


_LINGER_RESET = struct.pack("ii", 1, 0)


class HealthChecker:
    """Runs the checks and reports state changes through ``on_change``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[Server, str, str], None],
        on_result: Callable[[Server, CheckResult], None] | None = None,
    ) -> None:
        self.loop = loop
        self.on_change = on_change
        self.on_result = on_result
        self.checks: dict[int, _Check] = {}
        self.counts: dict[int, list[int]] = {}  # id(server) -> [consecutive ok, consecutive fail]
        self.fast: set[int] = set()  # servers switched to fastinter by passive checks
        self.stopped = False

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
        self.stopped = True
        for check in self.checks.values():
            check.cancel()
        self.checks.clear()

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
