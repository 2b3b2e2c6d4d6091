"""GET /v1/health stays 200 through a seamless reload: the old workers serve until the
new ones are ready. (`fleetproxy vrrp` tracks this endpoint; a 503 during a reload
moved the virtual IP away from a healthy master on every configuration change.)"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=2)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(2)
        self.sock.connect(self.path)


def _call(path: str, method: str, url: str) -> tuple[int, dict]:
    conn = _Unix(path)
    try:
        conn.request(method, url)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_health_is_200_during_a_reload(proxy, backend, port, tmp_path):
    be = backend("s1")
    sock = str(tmp_path / "admin.sock")
    config = {
        "global": {"admin": {"socket": sock}},
        "frontends": [{"name": "fe", "bind": [f"127.0.0.1:{port()}"], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [{"name": "s1", "address": f"127.0.0.1:{be.port}"}]}],
    }
    p = proxy(config)
    assert _call(sock, "GET", "/v1/health")[0] == 200
    seen: list[tuple[int, dict]] = []
    stop = threading.Event()

    def poll() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            seen.append(_call(sock, "GET", "/v1/health"))
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for _ in range(3):
            status, body = _call(sock, "POST", "/v1/reload")
            assert status == 200, body
    finally:
        stop.set()
        poller.join(10)
    generation = _call(sock, "GET", "/v1/info")[1]["generation"]
    assert generation >= 4, generation
    assert len(seen) > 10
    assert [s for s in seen if s[0] != 200] == [], [s for s in seen if s[0] != 200][:5]
    assert p.running()
