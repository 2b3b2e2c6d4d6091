"""Cookie persistence, as HAProxy's ``cookie`` keyword: pure functions on raw heads.

Modes:

``insert``   the proxy adds ``Set-Cookie: NAME=<server cookie>`` to responses
             of clients that are not pinned yet (or pinned elsewhere), with
             ``Cache-Control: private`` if ``nocache``;
             ``indirect`` removes the cookie from requests so servers never
             see it;
             ``maxidle``/``maxlife`` put the last-seen and first-seen dates in
             the value (``srv|LAST|FIRST``, base 36 seconds) and ignore a
             cookie that is too old.
``prefix``   the application sets its own cookie NAME; the proxy prefixes its
             value with ``<server cookie>~`` in responses and removes the
             prefix from requests.
``rewrite``  the application sets NAME; the proxy rewrites its value to the
             server cookie.

All functions take and return raw head bytes that llhttp has validated.
"""

from __future__ import annotations

import re
from typing import Any

from .config import CookieConfig


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


class CookieRules:
    """Compiled per backend."""

    def __init__(self, cfg: CookieConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name.encode()
        self.mode = cfg.mode
        name = re.escape(self.name)
        # NAME=value inside any Cookie header line of a request.
        self.req_re = re.compile(rb"(\r\ncookie:[^\r\n]*?[:; ]|\r\ncookie:)[ \t]*" + name + rb"=([^;\r\n]*)", re.I)
        # A whole Set-Cookie header line of a response whose cookie is NAME.
        self.resp_re = re.compile(rb"\r\nset-cookie:[ \t]*" + name + rb"=([^;\r\n]*)", re.I)
        self.dated = bool(cfg.maxidle or cfg.maxlife)

    # -- requests ------------------------------------------------------------------------------
    def server_value(self, head: bytes, now: float) -> tuple[bytes | None, float | None]:
        """(the server cookie value the client presents or None, its first-seen date)."""
        m = self.req_re.search(head)
        if m is None:
            return None, None
        value = m.group(2).strip()
        if self.mode == "prefix":
            sep = value.find(b"~")
            return (value[:sep] if sep > 0 else None), None
        if self.mode == "insert" and self.dated:
            parts = value.split(b"|")
            try:
                last = int(parts[1], 36) if len(parts) > 1 and parts[1] else None
                first = int(parts[2], 36) if len(parts) > 2 and parts[2] else None
            except ValueError:
                return None, None
            cfg = self.cfg
            if cfg.maxidle and (last is None or now - last > cfg.maxidle):
                return None, None
            if cfg.maxlife and (first is None or now - first > cfg.maxlife):
                return None, None
            return parts[0], first
        return value, None

    def request_head(self, head: bytes) -> bytes:
        """The request as the server sees it (``indirect`` and ``prefix`` edits)."""
        if self.mode == "prefix":
            return self.req_re.sub(_strip_prefix, head)
        if self.cfg.indirect:
            return _remove_cookie(head, self.req_re, self.name)
        return head

    # -- responses -----------------------------------------------------------------------------
    def response_head(self, head: bytes, server_cookie: str, pinned: bool, now: float,
                      first_seen: float | None = None) -> bytes:
        cfg = self.cfg
        if self.mode == "insert":
            if pinned and not self.dated:
                return head  # the client's cookie already names this server (HAProxy)
            value = server_cookie
            if self.dated:
                t = _b36(int(now))
                value = f"{server_cookie}|{t if cfg.maxidle else ''}|{_b36(int(first_seen or now))}"
            attrs = "; path=/"
            if cfg.domain:
                attrs += f"; domain={cfg.domain}"
            if cfg.maxlife:
                attrs += f"; Max-Age={int(cfg.maxlife)}"
            if cfg.httponly:
                attrs += "; HttpOnly"
            if cfg.secure:
                attrs += "; Secure"
            extra = f"Set-Cookie: {cfg.name}={value}{attrs}\r\n".encode()
            if cfg.nocache:
                extra += b"Cache-Control: private\r\n"
            return head[:-2] + extra + b"\r\n"
        prefix = server_cookie.encode()
        if self.mode == "prefix":
            return self.resp_re.sub(
                lambda m: m.group(0)[: m.start(1) - m.start(0)] + prefix + b"~" + m.group(1), head
            )
        # rewrite
        return self.resp_re.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + prefix, head)


def _strip_prefix(m: Any) -> bytes:
    value = m.group(2)
    sep = value.find(b"~")
    if sep < 0:
        return m.group(0)
    return m.group(0)[: m.start(2) - m.start(0)] + value[sep + 1 :]


def _remove_cookie(head: bytes, pattern: re.Pattern[bytes], name: bytes) -> bytes:
    """Remove NAME=value from every Cookie header; drop header lines left empty."""
    out = head
    while True:
        m = pattern.search(out)
        if m is None:
            return out
        line_start = m.start(0)  # at the CRLF that precedes "Cookie:"
        line_end = out.find(b"\r\n", m.end(0))
        line = out[line_start + 2 : line_end]
        colon = line.find(b":")
        crumbs = [c.strip() for c in line[colon + 1 :].split(b";")]
        kept = [c for c in crumbs if c and c.split(b"=", 1)[0].strip() != name]
        if kept:
            out = out[: line_start + 2] + line[: colon + 1] + b" " + b"; ".join(kept) + out[line_end:]
        else:
            out = out[:line_start] + out[line_end:]
