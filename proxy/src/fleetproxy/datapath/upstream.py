"""Connections to servers and their per-server pool.

An :class:`Upstream` is a raw protocol that belongs either to the pool of its
server (idle, LIFO) or to exactly one client transaction, to which it hands
every event.  It is returned to the pool only after a response completed
cleanly and the whole request was sent; anything else closes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from httptools import HttpResponseParser

from .common import R_HEAD

POOL_MAX_IDLE = 256  # idle connections kept per server


class Upstream(asyncio.Protocol):
    __slots__ = (
        "client",
        "closed",
        "idle_since",
        "loop",
        "mc",
        "parser",
        "reused",
        "server",
        "transport",
    )

    def __init__(self, loop: Any, server: Any, http: bool = True) -> None:
        self.loop = loop
        self.server = server
        self.transport: Any = None
        self.client: Any = None
        self.parser = HttpResponseParser(self) if http else None
        self.mc = False
        self.closed = False
        self.reused = False
        self.idle_since = 0.0

    # -- llhttp callbacks (kept trivial) --------------------------------------
    def on_message_complete(self) -> None:
        self.mc = True

    def new_parser(self) -> None:
        """After a response whose framing llhttp could not know (HEAD, upgrade)."""
        self.parser = HttpResponseParser(self)

    # -- asyncio ---------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            if client.rstate == R_HEAD:  # the common case, one call less
                client._response_head(data)
            else:
                client.upstream_data(data)
        else:
            # An idle connection must stay silent; anything else is a broken server.
            self.close()

    def eof_received(self) -> bool:
        client = self.client
        if client is not None:
            # Under TLS (a close_notify) staying half-open is not possible: uvloop warns
            # when asked to, and closes once the writes are flushed.
            return client.upstream_eof() and self.server.tls is None
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost(exc)
        else:
            try:
                self.server.idle.remove(self)
            except ValueError:
                pass

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_paused()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_resumed()

    # -- pool --------------------------------------------------------------------
    def attach(self, client: Any) -> None:
        self.client = client
        self.mc = False

    def release(self) -> None:
        """Back to the server's pool (the caller checked that it is clean)."""
        self.client = None
        if self.closed or self.transport.is_closing():
            return
        idle = self.server.idle
        if len(idle) >= POOL_MAX_IDLE:
            self.close()
            return
        self.reused = True
        self.idle_since = self.loop.time()
        idle.append(self)

    def close(self) -> None:
        self.client = None
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.client = None
        if self.transport is not None and not self.closed:
            self.transport.abort()


def take_idle(server: Any, now: float, max_idle: float) -> Upstream | None:
    """The most recently used idle connection that is still fresh, or None."""
    idle = server.idle
    while idle:
        conn = idle.pop()
        if not conn.closed and now - conn.idle_since < max_idle and not conn.transport.is_closing():
            return conn
        conn.close()
    return None


def sweep_idle(servers: Any, now: float, max_idle: float) -> None:
    """Close idle connections older than ``max_idle`` (oldest are first in the list)."""
    for server in servers:
        idle = server.idle
        while idle and now - idle[0].idle_since >= max_idle:
            idle.pop(0).close()
