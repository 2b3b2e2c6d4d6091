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

Checks are raw asyncio protocols (no HTTP client library) to keep a thousand
servers at a 2 s interval well under 5% of a core.
"""

from __future__ import annotations

import asyncio
import random
import ssl
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
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.sleeping: dict[int, asyncio.Future[None]] = {}
        self.counts: dict[int, list[int]] = {}  # id(server) -> [consecutive ok, consecutive fail]
        self.fast: set[int] = set()  # servers switched to fastinter by passive checks

    def sync(self, servers: list[Server]) -> None:
        """Run exactly one check task per server with checks enabled."""
        wanted = {id(s): s for s in servers if s.check and s.check_enabled}
        for key in list(self.tasks):
            if key not in wanted:
                self.tasks.pop(key).cancel()
                self.sleeping.pop(key, None)
                self.counts.pop(key, None)
        for key, server in wanted.items():
            if key not in self.tasks:
                self.counts[key] = [0, 0]
                self.tasks[key] = self.loop.create_task(self._run(server))

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    def wake(self, server: Server, fast: bool = True) -> None:
        """Check now (passive checks saw errors: ``on_error: fastinter``)."""
        if fast:
            self.fast.add(id(server))
        fut = self.sleeping.get(id(server))
        if fut is not None and not fut.done():
            fut.set_result(None)

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

    async def _run(self, server: Server) -> None:
        key = id(server)
        cfg = server.cfg
        host, port = server.host, server.port
        if cfg.check_address:
            host, port = split_host_port(cfg.check_address, what="check address", allow_wildcard=False)
        request, expect = self._request(server)
        tls = None
        if server.cfg.tls is not None:
            from .tls import client_context

            try:
                tls = client_context(server.cfg.tls)
            except (OSError, ssl.SSLError) as exc:
                server.check_status, server.check_desc = "L6RSP", f"TLS setup: {exc}"
                return
        sni = server.cfg.tls.sni or "" if server.cfg.tls is not None else ""
        never_up = server.health == DOWN and cfg.init_state == "down"
        await self._sleep(key, random.uniform(0, min(cfg.inter, 2.0)))  # type: ignore[arg-type]
        last_health = server.health
        while True:
            timeout = server.backend.timeouts.check or cfg.inter
            result = await run_check(self.loop, host, port, timeout, request, expect,  # type: ignore[arg-type]
                                     tls, sni)
            server.check_status = result.status
            server.check_desc = result.desc
            server.check_duration = result.duration
            if self.on_result is not None:
                self.on_result(server, result)
            counts = self.counts[key]
            if server.health != last_health:
                # Changed outside the checks (passive check, admin): count afresh,
                # so a server marked down needs `rise` successes to come back.
                counts[0] = counts[1] = 0
            if result.ok:
                counts[0] += 1
                counts[1] = 0
                self.fast.discard(key)
                if server.health == DOWN and (counts[0] >= cfg.rise or never_up):  # type: ignore[operator]
                    self.on_change(server, UP, f"{result.status} ({result.desc}), {counts[0]} check(s) passed")
                never_up = False
            else:
                counts[0] = 0
                counts[1] += 1
                server.check_fails += 1
                if server.health == UP and counts[1] >= cfg.fall:  # type: ignore[operator]
                    self.on_change(server, DOWN, f"{result.status} ({result.desc}), {counts[1]} check(s) failed")
            last_health = server.health
            await self._sleep(key, self._interval(server))

    async def _sleep(self, key: int, seconds: float) -> None:
        """Sleep ``seconds`` unless :meth:`wake` is called first."""
        fut = self.loop.create_future()
        self.sleeping[key] = fut
        handle = self.loop.call_later(seconds, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            handle.cancel()
            if self.sleeping.get(key) is fut:
                del self.sleeping[key]
