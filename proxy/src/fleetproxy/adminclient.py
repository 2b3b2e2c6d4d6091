"""A minimal client for the JSON API on its UNIX socket (stdlib only)."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class AdminError(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except FileNotFoundError:
            raise AdminError(f"no admin socket at {self.path}: is fleetproxy running?") from None
        except ConnectionRefusedError:
            raise AdminError(f"nothing listens on {self.path}: is fleetproxy running?") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"admin socket {self.path}: {exc}") from None
        finally:
            conn.close()
        try:
            return resp.status, (json.loads(data) if data else None)
        except ValueError:
            return resp.status, {"raw": data.decode("utf-8", "replace")}
