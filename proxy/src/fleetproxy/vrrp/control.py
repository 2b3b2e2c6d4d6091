"""The daemon's control socket: JSON over HTTP/1.1 on a UNIX stream socket.

    GET /v1/status         the status document (what ``fleetproxy vrrp status`` shows)
    PUT /v1/maintenance    {"maintenance": true|false, "instances": ["name", ...]}
                           (no "instances": every instance) -> {"changed": [...], "status": {...}}

One request per connection (``Connection: close``), answers are JSON, errors are
``{"error": "..."}`` with a 4xx/5xx status, as on the proxy's admin socket.

Who may do what. The socket is mode 0666: anyone on the host may *read* the status,
which holds nothing secret (states, priorities, addresses, counters) and is what
monitoring wants. A *write* (maintenance on or off moves the virtual IPs) is accepted
only from root or from the uid the daemon runs as, as the kernel reports the peer with
``SO_PEERCRED`` (unforgeable, no secret to distribute or rotate, checked per request).
Socket file permissions alone could not tell a reader from a writer, and a token would
be one more secret on disk that root can read anyway.

A client that sends nothing for :data:`LEGACY_WAIT` seconds (or closes its side) gets
the status document as bare JSON, as the socket answered before it spoke HTTP, so
``socat - UNIX-CONNECT:/run/fleetproxy-vrrp/vrrp.sock`` still shows the status.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fleetproxy.vrrp")

LEGACY_WAIT = 0.5  # seconds a silent client waits for the bare status document
REQUEST_TIMEOUT = 5.0  # the whole request (line, headers, body) must arrive within this
MAX_HEADERS = 64
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


class Peer:
    """The connecting process as the kernel saw it at connect() time."""

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid

    @classmethod
    def of(cls, writer: asyncio.StreamWriter) -> Peer | None:
        sock = writer.get_extra_info("socket")
        try:
            return cls(*_PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)))
        except (OSError, AttributeError, struct.error):
            return None

    def __str__(self) -> str:
        return f"uid {self.uid} (pid {self.pid})"


def may_write(peer: Peer | None, own_uid: int | None = None) -> bool:
    """Root, or the uid the daemon runs as."""
    if peer is None:
        return False
    return peer.uid in (0, os.geteuid() if own_uid is None else own_uid)


class ControlServer:
    """Serves the control socket for a daemon that provides ``status()`` and
    ``set_maintenance(on, names, who) -> list of changed names`` (KeyError for an
    unknown name, OSError when it cannot be kept in the state file)."""

    def __init__(self, status: Callable[[], dict], set_maintenance: Callable[..., list[str]]) -> None:
        self.status = status
        self.set_maintenance = set_maintenance
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS:
                return
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except Exception:  # never let one connection take the daemon down
            log.exception("control socket: request failed")
        finally:
            self.connections -= 1
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.readline(), LEGACY_WAIT)
        except asyncio.TimeoutError:
            first = b""
        except ValueError:  # a line longer than the reader's limit
            return await self._respond(writer, 400, {"error": "request line too long"})
        if not first.strip():
            writer.write(json.dumps(self.status()).encode() + b"\n")
            await writer.drain()
            return
        try:
            method, target, body = await asyncio.wait_for(self._read_request(first, reader), REQUEST_TIMEOUT)
            status, doc = self._route(method, target, body, Peer.of(writer))
        except asyncio.TimeoutError:
            return await self._respond(writer, 408, {"error": f"the request did not arrive within {REQUEST_TIMEOUT:g}s"})
        except HTTPError as exc:
            return await self._respond(writer, exc.status, {"error": exc.message}, exc.allow)
        await self._respond(writer, status, doc)

    async def _read_request(self, first: bytes, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        parts = first.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HTTPError(400, "not an HTTP/1.x request line")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            try:
                line = await reader.readline()
            except ValueError:
                raise HTTPError(431, "header line too long") from None
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise HTTPError(400, f"malformed header line {line[:40]!r}")
            headers[name.strip().lower()] = value.strip()
        else:
            raise HTTPError(431, f"more than {MAX_HEADERS} header lines")
        if "transfer-encoding" in headers:
            raise HTTPError(411, "send the body with Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HTTPError(400, "invalid Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            raise HTTPError(413, f"the body must be at most {MAX_BODY} bytes")
        body = await reader.readexactly(length) if length else b""
        return method, target.split("?", 1)[0], body

    def _route(self, method: str, path: str, body: bytes, peer: Peer | None) -> tuple[int, dict]:
        if path == "/v1/status":
            if method != "GET":
                raise HTTPError(405, f"{method} not allowed on {path}", allow="GET")
            return 200, self.status()
        if path == "/v1/maintenance":
            if method != "PUT":
                raise HTTPError(405, f"{method} not allowed on {path}", allow="PUT")
            if not may_write(peer):
                who = str(peer) if peer else "a peer of unknown identity"
                raise HTTPError(403, f"{who} may not change maintenance: only root and uid {os.geteuid()} "
                                     "(the daemon's) may; run the command with sudo")
            on, names = _maintenance_request(body)
            try:
                changed = self.set_maintenance(on, names, str(peer))
            except KeyError as exc:
                raise HTTPError(404, f"no instance named {exc.args[0]!r}") from None
            except OSError as exc:
                raise HTTPError(500, f"cannot keep the maintenance state: {exc.strerror or exc}; nothing changed"
                                ) from None
            return 200, {"changed": changed, "status": self.status()}
        raise HTTPError(404, f"no such resource {path!r} (GET /v1/status, PUT /v1/maintenance)")

    async def _respond(self, writer: asyncio.StreamWriter, status: int, doc: dict, allow: str | None = None) -> None:
        body = json.dumps(doc).encode() + b"\n"
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Connection: close"]
        if allow:
            head.append(f"Allow: {allow}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


def _maintenance_request(body: bytes) -> tuple[bool, list[str] | None]:
    try:
        doc = json.loads(body or b"null")
    except ValueError as exc:
        raise HTTPError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("maintenance"), bool):
        raise HTTPError(400, 'expected {"maintenance": true|false, "instances": ["name", ...]}')
    unknown = set(doc) - {"maintenance", "instances"}
    if unknown:
        raise HTTPError(400, f"unknown key(s): {', '.join(sorted(unknown))}")
    names = doc.get("instances")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise HTTPError(400, '"instances" must be a list of instance names')
    return doc["maintenance"], names


# --------------------------------------------------------------------------
# The client side (the CLI)
# --------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(path: str, method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One exchange: ``(status, decoded JSON)``. OSError if nothing answers,
    ValueError if the answer is not JSON over HTTP."""
    conn = _UnixConnection(path, timeout)
    try:
        headers = {"Accept": "application/json", "Connection": "close"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, url, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except http.client.HTTPException as exc:
        raise ValueError(f"not an HTTP answer: {exc!r}") from None
    finally:
        conn.close()
    return resp.status, json.loads(data) if data else None
