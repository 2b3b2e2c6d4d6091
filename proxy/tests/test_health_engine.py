"""The health-check engine in-process: a real event loop and real sockets on 127.0.0.1,
no proxy around it, so that a fault can be injected where the proxy has none."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from fleetproxy.config import parse
from fleetproxy.health import HealthChecker
from fleetproxy.runtime import UP, Runtime


def _servers(address: str, count: int) -> list:
    cfg = parse({"backends": [{"name": "be", "servers": [
        {"name": f"s{i}", "address": address, "check": True, "inter": "50ms", "rise": 1, "fall": 1}
        for i in range(count)]}]})
    return list(Runtime(cfg).servers())


def test_an_error_in_a_state_change_does_not_end_any_server_s_checks(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # TCP checks are half-open: nothing needs to accept
        servers = _servers(f"127.0.0.1:{listener.getsockname()[1]}", 3)
        changes: list[tuple[str, str]] = []

        def on_change(server, health: str, reason: str) -> None:
            changes.append((server.name, health))
            if len(changes) == 1:
                raise RuntimeError("injected")
            server.health = health

        async def run() -> None:
            checker = HealthChecker(asyncio.get_running_loop(), on_change)
            checker.sync(servers)
            await asyncio.sleep(1.0)
            checker.stop()
            checker.stop()  # twice: a reload can meet a shutdown

        with caplog.at_level(logging.ERROR, logger="fleetproxy"):
            asyncio.run(run())
    assert "failed unexpectedly" in caplog.text and "injected" in caplog.text
    # The server whose change raised came up at its next check; every chain kept going.
    assert all(s.health == UP for s in servers), [(s.name, s.health) for s in servers]
    assert all(s.check_count >= 5 for s in servers), [(s.name, s.check_count) for s in servers]
    assert len(changes) == 4
