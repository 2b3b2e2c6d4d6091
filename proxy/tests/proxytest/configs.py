"""Configuration builders for tests."""

from __future__ import annotations

from typing import Any

from .backend import Backend


def http_config(
    listen_port: int,
    servers: list[dict[str, Any]],
    balance: str = "roundrobin",
    defaults: dict[str, Any] | None = None,
    frontend: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
    global_: dict[str, Any] | None = None,
    extra_backends: list[dict[str, Any]] | None = None,
    mode: str = "http",
) -> dict[str, Any]:
    """A one-frontend, one-backend configuration (plus ``extra_backends``)."""
    return {
        "global": {"maxconn": 1000, "log": {"access": "stdout"}, **(global_ or {})},
        "defaults": {
            "mode": mode,
            "timeouts": {"connect": "2s", "client": "10s", "server": "10s", "queue": "2s"},
            **(defaults or {}),
        },
        "frontends": [
            {"name": "fe", "bind": [f"127.0.0.1:{listen_port}"], "default_backend": "be", **(frontend or {})}
        ],
        "backends": [
            {"name": "be", "balance": balance, "servers": servers, **(backend or {})},
            *(extra_backends or []),
        ],
    }


def server(name: str, b: Backend | str, **kw: Any) -> dict[str, Any]:
    """A server entry for a test backend (or an address)."""
    return {"name": name, "address": b if isinstance(b, str) else b.address, **kw}

