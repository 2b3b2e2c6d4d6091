"""Health sources that move a virtual router's priority or put it in FAULT.

- ``proxy``: ``GET /v1/health`` over the proxy's admin UNIX socket (HTTP/1.1); healthy
  iff the status is 200 within ``timeout``;
- ``tcp``: a TCP connection to host:port is accepted within ``timeout``;
- ``exec``: a command (no shell) exits 0 within ``timeout``;
- ``interface``: the link is up with carrier, from netlink events (no polling).

A polled check turns *down* after ``fall`` failures in a row and *up* after ``rise``
successes in a row; its very first result decides its initial state, so the daemon
never starts as master on top of a dead proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Callable

from ..config import split_host_port
from .config import Track

log = logging.getLogger("fleetproxy.vrrp")

_HEALTH_REQUEST = b"GET /v1/health HTTP/1.1\r\nHost: fleetproxy\r\nUser-Agent: fleetproxy-vrrp\r\nConnection: close\r\n\r\n"


async def check_proxy(path: str, timeout: float) -> tuple[bool, str]:
    async def go() -> tuple[bool, str]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(_HEALTH_REQUEST)
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            return False, f"not an HTTP response: {line[:40]!r}"
        if parts[1] != "200":
            return False, f"status {parts[1]}"
        return True, "status 200"

    try:
        return await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        return False, f"no answer within {timeout:g}s"
    except OSError as exc:
        return False, exc.strerror or str(exc)


async def check_tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return False, f"connect timed out after {timeout:g}s"
    except OSError as exc:
        return False, exc.strerror or str(exc)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True, "connected"


async def check_exec(argv: list[str], timeout: float) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"cannot run {argv[0]}: {exc.strerror or exc}"
    try:
        rc = await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"timed out after {timeout:g}s"
    return rc == 0, f"exit status {rc}"


class Tracker:
    """The state of one ``track`` entry; the owner is told of every change."""

    def __init__(self, spec: Track, on_change: Callable[[Tracker], None]) -> None:
        self.spec = spec
        self.on_change = on_change
        self.healthy: bool | None = None  # None until the first result
        self.detail = "not checked yet"
        self._fails = 0
        self._oks = 0
        self._task: asyncio.Task | None = None
        self.first_result = asyncio.Event()

    @property
    def kind(self) -> str:
        return self.spec.kind

    def describe(self) -> str:
        return self.spec.describe()

    def result(self, ok: bool, detail: str) -> None:
        """Feed one check result (or a link state)."""
        self.detail = detail
        if self.healthy is None:
            self.healthy = ok
            self._fails = self._oks = 0
            self.first_result.set()
            self.on_change(self)
            return
        if ok:
            self._oks += 1
            self._fails = 0
            if not self.healthy and self._oks >= self.spec.rise:
                self.healthy = True
                self.on_change(self)
        else:
            self._fails += 1
            self._oks = 0
            if self.healthy and self._fails >= self.spec.fall:
                self.healthy = False
                self.on_change(self)

    def start(self) -> None:
        if self.kind != "interface":
            self._task = asyncio.get_running_loop().create_task(self._poll(), name=f"track {self.describe()}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check_once(self) -> tuple[bool, str]:
        spec = self.spec
        timeout = float(spec.timeout or 1.0)
        if spec.proxy is not None:
            return await check_proxy(spec.proxy, timeout)
        if spec.tcp is not None:
            host, port = split_host_port(spec.tcp, what="tcp address", allow_wildcard=False)
            return await check_tcp(host, port, timeout)
        assert spec.exec is not None
        return await check_exec(shlex.split(spec.exec), timeout)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        interval = float(self.spec.interval or 1.0)
        next_at = loop.time()
        while True:
            try:
                ok, detail = await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a check must never kill the daemon
                ok, detail = False, f"check failed: {exc!r}"
            self.result(ok, detail)
            next_at = max(next_at + interval, loop.time())
            await asyncio.sleep(next_at - loop.time())
