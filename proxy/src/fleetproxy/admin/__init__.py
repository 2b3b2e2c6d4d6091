"""The control plane of the master: JSON API, HAProxy runtime API, stats, metrics.

``global.admin`` keys:

``socket``          JSON API over HTTP on a UNIX socket (admin access)
``runtime_socket``  HAProxy's Runtime API (text commands) on a UNIX socket
``socket_mode``     mode of both socket files (default ``0660``)
``socket_group``    group of both socket files (default: the process's group)
``listen``          TCP address of the stats page (``/stats``), ``/metrics``, and the
                    JSON API with a token
``token_file``      tokens for the JSON API over TCP: ``admin TOKEN`` / ``user TOKEN`` lines
``stats_refresh``   refresh period of the stats page (default 5s)
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import stat
from typing import Any

from aiohttp import web

from ..config import split_host_port
from .api import MASTER_KEY, TOKENS_KEY, add_routes, load_tokens, token_auth
from .runtime_api import RuntimeAPI
from .stats import metrics_handler, stats_page

log = logging.getLogger("fleetproxy.admin")


def _prepare_socket_path(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # left by a process that is gone
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another running process")


def _secure_socket(path: str, mode: str, group: str | None) -> None:
    os.chmod(path, int(mode, 8))
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)


class AdminServer:
    def __init__(self, master: Any) -> None:
        self.master = master
        self.runners: list[web.AppRunner] = []
        self.runtime_server: asyncio.AbstractServer | None = None
        self.tokens: list[tuple[str, str]] = []
        self.paths: list[str] = []
        self.key: tuple[Any, ...] | None = None

    def _app(self, with_tokens: bool) -> web.Application:
        app = web.Application(middlewares=[token_auth] if with_tokens else [])
        app[MASTER_KEY] = self.master
        app[TOKENS_KEY] = lambda: self.tokens
        add_routes(app)
        return app

    async def start(self) -> None:
        cfg = self.master.cfg.global_.admin
        self.key = (cfg.socket, cfg.runtime_socket, cfg.listen, cfg.socket_mode, cfg.socket_group)
        self.load_tokens()
        if cfg.socket:
            _prepare_socket_path(cfg.socket)
            runner = web.AppRunner(self._app(with_tokens=False), access_log=None)
            await runner.setup()
            await web.UnixSite(runner, cfg.socket).start()
            _secure_socket(cfg.socket, cfg.socket_mode, cfg.socket_group)
            self.runners.append(runner)
            self.paths.append(cfg.socket)
            log.info("JSON API on unix:%s", cfg.socket)
        if cfg.runtime_socket:
            _prepare_socket_path(cfg.runtime_socket)
            api = RuntimeAPI(self.master)
            self.runtime_server = await asyncio.start_unix_server(api.handle, cfg.runtime_socket)
            _secure_socket(cfg.runtime_socket, cfg.socket_mode, cfg.socket_group)
            self.paths.append(cfg.runtime_socket)
            log.info("HAProxy runtime API on unix:%s", cfg.runtime_socket)
        if cfg.listen:
            host, port = split_host_port(cfg.listen, what="admin listen", allow_wildcard=True)
            app = self._app(with_tokens=True)
            app.router.add_get("/stats", stats_page)
            app.router.add_get("/stats;{fmt}", stats_page)
            app.router.add_get("/metrics", metrics_handler(self.master))
            app.router.add_get("/", lambda r: web.HTTPFound("/stats"))  # type: ignore[arg-type, return-value]
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            self.runners.append(runner)
            log.info("stats page on http://%s/stats, metrics on /metrics", cfg.listen)

    def load_tokens(self) -> None:
        path = self.master.cfg.global_.admin.token_file
        try:
            self.tokens = load_tokens(path)
        except (OSError, ValueError) as exc:
            log.error("cannot read admin token file: %s (the JSON API over TCP refuses everything)", exc)
            self.tokens = []

    async def reconfigure(self) -> None:
        """After a reload: restart the endpoints whose settings changed; re-read tokens."""
        cfg = self.master.cfg.global_.admin
        key = (cfg.socket, cfg.runtime_socket, cfg.listen, cfg.socket_mode, cfg.socket_group)
        if key != self.key:
            await self.stop()
            await self.start()
        else:
            self.load_tokens()

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        self.runners = []
        if self.runtime_server is not None:
            self.runtime_server.close()
            self.runtime_server = None
        for path in self.paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.paths = []
