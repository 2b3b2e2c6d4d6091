"""Master <-> worker messages: length-prefixed JSON over a socketpair.

Each message is a 4-byte big-endian length and a JSON object with an ``op``
key.  The channel is tiny and never on the data path: runtime changes flow
master -> workers, counters and passive-check events flow workers -> master.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

_LEN = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


class Channel(asyncio.Protocol):
    """One end of the socketpair; ``on_message`` is called for every message."""

    def __init__(self, on_message: Callable[[dict[str, Any]], None],
                 on_lost: Callable[[Exception | None], None] | None = None) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            (n,) = _LEN.unpack_from(buf)
            if n > MAX_MESSAGE:
                self.transport.close()  # type: ignore[union-attr]
                return
            if len(buf) < 4 + n:
                return
            msg = json.loads(bytes(buf[4 : 4 + n]))
            del buf[: 4 + n]
            self.on_message(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost(exc)

    def send(self, msg: dict[str, Any]) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(msg))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
