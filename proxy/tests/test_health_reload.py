"""GET /v1/health stays 200 through a seamless reload: the old workers serve until the
new ones are ready. (`fleetproxy vrrp` tracks this endpoint; a 503 during a reload
moved the virtual IP away from a healthy master on every configuration change.)"""

from __future__ import annotations

import http.client
import threading
import time

from proxytest.control import Api


def _call(path: str, method: str, url: str) -> tuple[int, dict]:
    return Api(path).call(method, url)


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


def test_grace_keeps_serving_while_health_reports_stopping(proxy, backend, port, tmp_path):
    """global.grace: on SIGTERM /v1/health answers 503 at once (the tracker moves the VIP)
    while the listeners keep serving for `grace`; then the proxy stops as usual."""
    be = backend("s1")
    sock = str(tmp_path / "admin.sock")
    fe_port = port()
    config = {
        "global": {"admin": {"socket": sock}, "grace": "1500ms"},
        "frontends": [{"name": "fe", "bind": [f"127.0.0.1:{fe_port}"], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [{"name": "s1", "address": f"127.0.0.1:{be.port}"}]}],
    }
    p = proxy(config)

    def get() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", fe_port, timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status
        finally:
            conn.close()

    assert get() == 200
    t0 = time.monotonic()
    p.signal()
    # Health turns 503 within a few poll intervals of the signal.
    health = None
    while time.monotonic() - t0 < 1.0:
        health = _call(sock, "GET", "/v1/health")
        if health[0] == 503:
            break
        time.sleep(0.01)
    assert health is not None and health == (503, {"status": "stopping"}), health
    t_unhealthy = time.monotonic() - t0
    assert t_unhealthy < 0.5, t_unhealthy
    # New connections are still served during the grace period.
    served = 0
    while time.monotonic() - t0 < 1.0:
        assert get() == 200
        served += 1
        time.sleep(0.05)
    assert served >= 5
    # Then the listeners close and the process exits cleanly.
    assert p.wait(10) == 0
    elapsed = time.monotonic() - t0
    assert 1.4 <= elapsed < 8, elapsed
    p.assert_clean_exit()
    try:
        get()
    except OSError:
        pass
    else:
        raise AssertionError("the listener still accepts after the proxy exited")
