"""Health sources: the proxy's admin socket (a fake UNIX-socket HTTP server here, until
the admin API exists), TCP connect, commands; fall/rise counting."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time

import pytest

from fleetproxy.vrrp.config import Track
from fleetproxy.vrrp.track import Tracker, check_exec, check_proxy, check_tcp


class FakeAdmin:
    """GET /v1/health over a UNIX socket: answers ``status``, or never answers."""

    def __init__(self, path: str, status: int = 200, hang: bool = False) -> None:
        self.path, self.status, self.hang = path, status, hang
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_unix_server(self._serve, path=self.path)
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        if self.hang:
            await asyncio.sleep(10)
        reason = {200: "OK", 503: "Service Unavailable"}.get(self.status, "X")
        body = b'{"status": "ok"}' if self.status == 200 else b"{}"
        writer.write(f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()


@pytest.fixture
def sock_path():
    with tempfile.TemporaryDirectory(prefix="fpv-track-") as d:
        yield os.path.join(d, "admin.sock")


def test_proxy_check_healthy(sock_path):
    async def go():
        async with FakeAdmin(sock_path) as fake:
            ok, detail = await check_proxy(sock_path, 1.0)
            return ok, detail, fake.requests
    ok, detail, reqs = asyncio.run(go())
    assert ok and detail == "status 200"
    assert reqs[0].startswith(b"GET /v1/health HTTP/1.1\r\n")
    assert b"\r\nHost: " in reqs[0]


def test_proxy_check_unhealthy_status(sock_path):
    async def go():
        async with FakeAdmin(sock_path, status=503):
            return await check_proxy(sock_path, 1.0)
    assert asyncio.run(go()) == (False, "status 503")


def test_proxy_check_no_socket(sock_path):
    ok, detail = asyncio.run(check_proxy(sock_path, 1.0))
    assert not ok and detail


def test_proxy_check_times_out(sock_path):
    async def go():
        async with FakeAdmin(sock_path, hang=True):
            t0 = time.monotonic()
            res = await check_proxy(sock_path, 0.2)
            return res, time.monotonic() - t0
    (ok, detail), took = asyncio.run(go())
    assert not ok and "0.2s" in detail
    assert took < 1.0


def test_tcp_check():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        assert asyncio.run(check_tcp("127.0.0.1", port, 1.0))[0]
    finally:
        srv.close()
    assert not asyncio.run(check_tcp("127.0.0.1", port, 1.0))[0]


def test_exec_check(tmp_path):
    assert asyncio.run(check_exec(["/bin/true"], 1.0)) == (True, "exit status 0")
    assert asyncio.run(check_exec(["/bin/false"], 1.0)) == (False, "exit status 1")
    ok, detail = asyncio.run(check_exec(["/bin/sleep", "5"], 0.2))
    assert not ok and "timed out" in detail
    ok, detail = asyncio.run(check_exec([str(tmp_path / "missing")], 1.0))
    assert not ok and "cannot run" in detail


def test_fall_and_rise():
    changes = []
    t = Tracker(Track(tcp="127.0.0.1:1", fall=3, rise=2), lambda tr: changes.append(tr.healthy))
    t.result(True, "ok")  # the first result decides at once
    assert t.healthy is True and changes == [True]
    t.result(False, "x")
    t.result(False, "x")
    t.result(True, "ok")  # the run of failures is broken
    t.result(False, "x")
    t.result(False, "x")
    assert t.healthy is True
    t.result(False, "x")
    assert t.healthy is False and changes == [True, False]
    t.result(True, "ok")
    assert t.healthy is False
    t.result(True, "ok")
    assert t.healthy is True and changes == [True, False, True]


def test_polling_tracker_follows_the_proxy(sock_path):
    spec = Track(proxy=sock_path, interval="50ms", timeout="100ms", fall=2, rise=2)

    async def go():
        seen = []
        t = Tracker(spec, lambda tr: seen.append((tr.healthy, tr.detail)))
        async with FakeAdmin(sock_path) as fake:
            t.start()
            await asyncio.wait_for(t.first_result.wait(), 2)
            assert t.healthy is True
            fake.status = 503
            t0 = time.monotonic()
            while t.healthy and time.monotonic() - t0 < 2:
                await asyncio.sleep(0.01)
            took = time.monotonic() - t0
        await t.stop()
        return seen, took

    seen, took = asyncio.run(go())
    assert seen[0] == (True, "status 200")
    assert seen[1] == (False, "status 503")
    assert took < 0.5  # two failed checks 50ms apart


def test_proxy_check_against_the_real_admin_api(tmp_path):
    """The contract with the proxy: its admin socket answers GET /v1/health with 200
    while it serves, and nothing once it is gone. Skipped until the admin API exists."""
    import importlib.util
    import signal
    import subprocess
    import sys

    if importlib.util.find_spec("fleetproxy.admin") is None:
        pytest.skip("the proxy's admin API (fleetproxy.admin) is not in this tree yet")
    sock = tmp_path / "admin.sock"
    cfg = tmp_path / "proxy.yml"
    cfg.write_text(f"global:\n  admin:\n    socket: {sock}\nfrontends: []\nbackends: []\n")
    log = tmp_path / "proxy.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "fleetproxy", "run", "-c", str(cfg)], stdout=fh, stderr=fh)
    try:
        deadline = time.monotonic() + 20
        result = (False, "not started")
        while time.monotonic() < deadline and proc.poll() is None:
            result = asyncio.run(check_proxy(str(sock), 1.0))
            if result[0]:
                break
            time.sleep(0.1)
        assert result == (True, "status 200"), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert not asyncio.run(check_proxy(str(sock), 1.0))[0]
