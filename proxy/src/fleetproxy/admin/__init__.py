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


SHUTDOWN_TIMEOUT = 5.0  # a stopping endpoint waits this long for requests in progress


class _Endpoint:
    """One listening endpoint and the settings it was opened with."""

    def __init__(self, key: tuple[Any, ...], path: str | None) -> None:
        self.key = key
        self.path = path
        self.runner: web.AppRunner | None = None
        self.server: asyncio.AbstractServer | None = None

    async def stop_listening(self) -> None:
        """Take no new connections; requests in progress go on."""
        if self.server is not None:
            self.server.close()
        if self.runner is not None:
            for site in list(self.runner.sites):
                await site.stop()

    async def close(self, keep_path: bool) -> None:
        """Stop, waiting up to SHUTDOWN_TIMEOUT for requests in progress."""
        await self.stop_listening()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.path and not keep_path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


class AdminServer:
    """The three endpoints.  A reload restarts only those whose settings changed, and
    closes the replaced ones in the background: the request that asked for the reload
    may be running on one of them."""

    def __init__(self, master: Any) -> None:
        self.master = master
        self.endpoints: dict[str, _Endpoint] = {}
        self.tokens: list[tuple[str, str]] = []
        self._closing: set[asyncio.Task[None]] = set()

    def _app(self, with_tokens: bool) -> web.Application:
        app = web.Application(middlewares=[token_auth] if with_tokens else [])
        app[MASTER_KEY] = self.master
        app[TOKENS_KEY] = lambda: self.tokens
        add_routes(app)
        return app

    def _wanted(self) -> dict[str, tuple[Any, ...]]:
        cfg = self.master.cfg.global_.admin
        out: dict[str, tuple[Any, ...]] = {}
        if cfg.socket:
            out["socket"] = (cfg.socket, cfg.socket_mode, cfg.socket_group)
        if cfg.runtime_socket:
            out["runtime_socket"] = (cfg.runtime_socket, cfg.socket_mode, cfg.socket_group)
        if cfg.listen:
            out["listen"] = (cfg.listen,)
        return out

    async def _open(self, name: str, key: tuple[Any, ...]) -> _Endpoint:
        if name == "socket":
            path, mode, group = key
            ep = _Endpoint(key, path)
            _prepare_socket_path(path)
            ep.runner = web.AppRunner(self._app(with_tokens=False), access_log=None,
                                      shutdown_timeout=SHUTDOWN_TIMEOUT)
            await ep.runner.setup()
            await web.UnixSite(ep.runner, path).start()
            _secure_socket(path, mode, group)
            log.info("JSON API on unix:%s", path)
            return ep
        if name == "runtime_socket":
            path, mode, group = key
            ep = _Endpoint(key, path)
            _prepare_socket_path(path)
            ep.server = await asyncio.start_unix_server(RuntimeAPI(self.master).handle, path)
            _secure_socket(path, mode, group)
            log.info("HAProxy runtime API on unix:%s", path)
            return ep
        (listen,) = key
        ep = _Endpoint(key, None)
        host, port = split_host_port(listen, what="admin listen", allow_wildcard=True)
        app = self._app(with_tokens=True)
        app.router.add_get("/stats", stats_page)
        app.router.add_get("/stats;{fmt}", stats_page)
        app.router.add_get("/metrics", metrics_handler(self.master))
        app.router.add_get("/", lambda r: web.HTTPFound("/stats"))  # type: ignore[arg-type, return-value]
        ep.runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await ep.runner.setup()
        await web.TCPSite(ep.runner, host, port, reuse_address=True).start()
        log.info("stats page on http://%s/stats, metrics on /metrics", listen)
        return ep

    async def start(self) -> None:
        self.load_tokens()
        for name, key in self._wanted().items():
            self.endpoints[name] = await self._open(name, key)

    def load_tokens(self) -> None:
        path = self.master.cfg.global_.admin.token_file
        try:
            self.tokens = load_tokens(path)
        except (OSError, ValueError) as exc:
            log.error("cannot read admin token file: %s (the JSON API over TCP refuses everything)", exc)
            self.tokens = []

    async def reconfigure(self) -> None:
        """After a reload: re-read the tokens; reopen the endpoints whose settings changed.

        A replaced endpoint stops listening at once (its address may be reused right away)
        and finishes its requests in the background: one of them may be the very request
        that asked for this reload, which waits for this method to return."""
        self.load_tokens()
        wanted = self._wanted()
        old = [self.endpoints.pop(name) for name, ep in list(self.endpoints.items())
               if wanted.get(name) != ep.key]
        try:
            for ep in old:
                await ep.stop_listening()
            if old:
                await asyncio.sleep(0)  # uvloop closes listening handles on the next iteration
            for name, key in wanted.items():
                if name not in self.endpoints:
                    self.endpoints[name] = await self._open(name, key)
        finally:
            keep = {ep.path for ep in self.endpoints.values() if ep.path}
            for ep in old:
                task = asyncio.get_running_loop().create_task(ep.close(keep_path=ep.path in keep))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        endpoints, self.endpoints = list(self.endpoints.values()), {}
        for ep in endpoints:
            await ep.close(keep_path=False)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
