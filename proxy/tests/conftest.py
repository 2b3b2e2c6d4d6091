"""Fixtures shared by the proxy tests: ports, test backends, the proxy process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxytest.backend import Backend, TcpBackend, WsBackend
from proxytest.proxy import Proxy, free_port


@pytest.fixture
def port() -> Callable[[], int]:
    """``port()`` -> a free TCP port on 127.0.0.1."""
    return free_port


class _Backends:
    def __init__(self) -> None:
        self.started: list[Any] = []

    def __call__(self, name: str, mode: str = "small", **defaults: Any) -> Backend:
        b = Backend(name, mode, **defaults).start()
        self.started.append(b)
        return b

    def ws(self, name: str = "ws") -> WsBackend:
        b = WsBackend(name).start()
        self.started.append(b)
        return b

    def tcp(self, name: str, mode: str = "echo") -> TcpBackend:
        b = TcpBackend(name, mode).start()
        self.started.append(b)
        return b

    def stop(self) -> None:
        for b in self.started:
            b.stop()


@pytest.fixture
def backend() -> Iterator[_Backends]:
    """``backend(name, mode="small", **query_defaults)`` -> a started :class:`Backend`;
    ``backend.ws()`` -> a WebSocket echo backend; ``backend.tcp(name, mode)`` -> a raw
    TCP backend.  All are stopped after the test."""
    factory = _Backends()
    yield factory
    factory.stop()


@pytest.fixture(scope="module")
def module_backend() -> Iterator[_Backends]:
    factory = _Backends()
    yield factory
    factory.stop()


class _Proxies:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proxy] = []

    def __call__(self, config: dict[str, Any] | str, event_loop: str | None = None,
                 wait: bool = True) -> Proxy:
        p = Proxy(config, self.workdir, event_loop=event_loop, name=f"proxy{len(self.started)}")
        self.started.append(p)
        return p.start(wait=wait)

    def stop(self) -> None:
        """Every proxy must still be running and stop cleanly on SIGTERM, unless the test
        already stopped it (then the test checked how it ended)."""
        problems = []
        for p in self.started:
            if p.returncode is not None:
                continue
            try:
                p.assert_clean_exit()
            except (AssertionError, RuntimeError) as exc:
                problems.append(str(exc))
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[_Proxies]:
    """``proxy(config_dict_or_yaml)`` -> a running :class:`Proxy` (``python -m fleetproxy
    run``), ready when every bind accepts.  After the test each one must exit 0 on
    SIGTERM with no traceback."""
    factory = _Proxies(tmp_path)
    yield factory
    factory.stop()


@pytest.fixture(scope="module")
def module_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Proxies]:
    factory = _Proxies(tmp_path_factory.mktemp("proxy"))
    yield factory
    factory.stop()
