"""Pieces shared by the HTTP and TCP data paths: error replies, header tables,
the lazy per-connection timer and the chunked-body end finder."""

from __future__ import annotations

import re
from typing import Any

# Response-side states of an HTTP transaction (shared with the upstream protocol)
R_NONE, R_HEAD, R_LENGTH, R_CHUNKED, R_CLOSE, R_TUNNEL = range(6)

# --------------------------------------------------------------------------
# Precomputed replies (HAProxy-style small bodies, always Connection: close)
# --------------------------------------------------------------------------

_REASONS = {
    400: ("Bad Request", "Your browser sent an invalid request."),
    403: ("Forbidden", "Request forbidden by administrative rules."),
    405: ("Method Not Allowed", "A request was made of a resource using a method it does not support."),
    408: ("Request Time-out", "Your browser didn't send a complete request in time."),
    414: ("URI Too Long", "The request line is too long."),
    431: ("Request Header Fields Too Large", "The request header fields are too large."),
    500: ("Internal Server Error", "An internal server error occurred."),
    501: ("Not Implemented", "The server does not support the functionality required."),
    502: ("Bad Gateway", "The server returned an invalid or incomplete response."),
    503: ("Service Unavailable", "No server is available to handle this request."),
    504: ("Gateway Time-out", "The server didn't respond in time."),
    505: ("HTTP Version Not Supported", "The HTTP version is not supported."),
}


def _error_page(code: int) -> bytes:
    reason, text = _REASONS[code]
    body = f"<html><body><h1>{code} {reason}</h1>\n{text}\n</body></html>\n".encode()
    head = (
        f"HTTP/1.1 {code} {reason}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache\r\n"
        "Content-Type: text/html\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


ERROR_PAGES: dict[int, bytes] = {code: _error_page(code) for code in _REASONS}

# --------------------------------------------------------------------------
# Header tables.  llhttp has validated every head before these run, so a
# header line is exactly "\r\nName:[ \t]*value" with no CR or LF in it.
# --------------------------------------------------------------------------

# The request headers the proxy must look at; everything else passes untouched.
REQUEST_HEADERS = re.compile(
    rb"\r\n(host|content-length|transfer-encoding|connection|keep-alive|proxy-connection"
    rb"|te|trailer|upgrade|x-forwarded-proto):[ \t]*([^\r\n]*)",
    re.IGNORECASE,
)
# Response headers of interest.
RESPONSE_HEADERS = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection"
    rb"|te|trailer|upgrade):[ \t]*([^\r\n]*)",
    re.IGNORECASE,
)

HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade")
# Names that are stripped from requests: hop-by-hop, and the client's own
# X-Forwarded-Proto which the proxy sets itself.
REQUEST_STRIP = frozenset((*HOP_BY_HOP, b"x-forwarded-proto"))
RESPONSE_STRIP = frozenset(HOP_BY_HOP)


def _strip_re(names: frozenset[bytes] | set[bytes]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(n) for n in sorted(names))
    return re.compile(rb"\r\n(?:" + alternatives + rb"):[^\r\n]*", re.IGNORECASE)


_STRIP_CACHE: dict[frozenset[bytes], re.Pattern[bytes]] = {}


def strip_headers(head: bytes, names: frozenset[bytes]) -> bytes:
    """Remove every header line whose (lower-case) name is in ``names``."""
    pattern = _STRIP_CACHE.get(names)
    if pattern is None:
        if len(_STRIP_CACHE) > 256:
            _STRIP_CACHE.clear()
        pattern = _STRIP_CACHE[names] = _strip_re(names)
    return pattern.sub(b"", head)


TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-case tokens of a Connection header value."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


# --------------------------------------------------------------------------
# Chunked transfer coding: where does the body end?
# --------------------------------------------------------------------------

_HEX = frozenset(b"0123456789abcdefABCDEF")


class ChunkedEnd:
    """Finds the offset where a chunked body ends.

    llhttp validates the syntax (it is fed exactly the same bytes); this only
    measures, so that bytes after the body (a pipelined request, or junk after a
    response) are never forwarded as part of it.  Raw chunks are forwarded as
    received.
    """

    __slots__ = ("left", "line", "state")

    SIZE, DATA, TRAILER = 0, 1, 2
    MAX_LINE = 4096

    def __init__(self) -> None:
        self.state = self.SIZE
        self.left = 0
        self.line = b""

    def feed(self, data: bytes, pos: int = 0) -> int:
        """Consume ``data[pos:]``; the end offset in ``data`` or -1 if not reached.

        Raises ``ValueError`` on framing that cannot be measured.
        """
        n = len(data)
        while pos < n:
            if self.state == self.DATA:
                take = n - pos
                if take >= self.left:
                    pos += self.left
                    self.left = 0
                    self.state = self.SIZE
                    continue
                self.left -= take
                return -1
            nl = data.find(b"\n", pos)
            if nl < 0:
                self.line += data[pos:]
                if len(self.line) > self.MAX_LINE:
                    raise ValueError("chunk line too long")
                return -1
            line = self.line + data[pos:nl] if self.line else data[pos:nl]
            self.line = b""
            pos = nl + 1
            if len(line) > self.MAX_LINE:
                raise ValueError("chunk line too long")
            if self.state == self.SIZE:
                size_text = line.split(b";", 1)[0].strip(b" \t\r")
                if not size_text or not _HEX.issuperset(size_text) or len(size_text) > 15:
                    raise ValueError("invalid chunk size")
                size = int(size_text, 16)
                if size:
                    self.left = size + 2  # the data and its CRLF
                    self.state = self.DATA
                else:
                    self.state = self.TRAILER
            elif line in (b"\r", b""):  # TRAILER: an empty line ends the message
                self.state = self.SIZE
                return pos
        return -1


# --------------------------------------------------------------------------
# A lazy timer: one TimerHandle per connection, re-armed only when it fires.
# --------------------------------------------------------------------------


INF = float("inf")
WHEEL_RESOLUTION = 0.1  # seconds per slot of the timer wheel


class TimerWheel:
    """Coarse timers for connections: one loop timer per process ticking every
    100 ms, and per slot the set of connections due then.  Arming or cancelling
    is a set insertion or removal (a loop timer per connection cost about 2 us to
    create and cancel, paid by every short connection).  Timeouts fire between 0
    and 100 ms after their deadline."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.slots: dict[int, set[Any]] = {}
        self.current = int(loop.time() / WHEEL_RESOLUTION)
        self.handle = loop.call_later(WHEEL_RESOLUTION, self._tick)

    def add(self, timed: Any, deadline: float) -> int:
        slot = int(deadline / WHEEL_RESOLUTION) + 1
        if slot <= self.current:
            slot = self.current + 1
        bucket = self.slots.get(slot)
        if bucket is None:
            bucket = self.slots[slot] = set()
        bucket.add(timed)
        return slot

    def remove(self, timed: Any, slot: int) -> None:
        bucket = self.slots.get(slot)
        if bucket is not None:
            bucket.discard(timed)

    def _tick(self) -> None:
        now_slot = int(self.loop.time() / WHEEL_RESOLUTION)
        slots = self.slots
        for slot in range(self.current + 1, now_slot + 1):
            bucket = slots.pop(slot, None)
            if bucket:
                for timed in bucket:
                    timed._on_timer()
        self.current = now_slot
        self.handle = self.loop.call_later(WHEEL_RESOLUTION, self._tick)

    def close(self) -> None:
        self.handle.cancel()
        self.slots.clear()


class LazyTimer:
    """Mixin: ``_arm(seconds, kind)`` sets a deadline; ``_timeout(kind)`` is
    called when it passes.  Moving a deadline later costs two attribute writes
    (hot paths inline exactly that: ``_deadline``, ``_tkind``, and ``_rearm`` only
    when the new deadline is earlier than the pending slot); the slot notices
    when it fires and files the connection again.  ``_timer_at`` is ``INF`` when
    nothing is pending.  The owner sets ``_wheel`` (its process's TimerWheel)."""

    _loop: Any
    _wheel: TimerWheel
    _deadline: float
    _timer: int  # the pending slot, 0 for none
    _timer_at: float
    _tkind: int

    def _arm(self, seconds: float, kind: int) -> None:
        deadline = self._loop.time() + seconds
        self._deadline = deadline
        self._tkind = kind
        if deadline < self._timer_at:
            self._rearm(deadline)

    def _rearm(self, deadline: float) -> None:
        wheel = self._wheel
        if self._timer:
            wheel.remove(self, self._timer)
        slot = self._timer = wheel.add(self, deadline)
        self._timer_at = slot * WHEEL_RESOLUTION

    def _disarm(self) -> None:
        self._deadline = 0.0

    def _cancel_timer(self) -> None:
        self._deadline = 0.0
        if self._timer:
            self._wheel.remove(self, self._timer)
            self._timer = 0
            self._timer_at = INF

    def _on_timer(self) -> None:
        self._timer = 0
        self._timer_at = INF
        deadline = self._deadline
        if not deadline:
            return
        if self._loop.time() < deadline:
            self._rearm(deadline)
            return
        self._deadline = 0.0
        self._timeout(self._tkind)

    def _timeout(self, kind: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError
