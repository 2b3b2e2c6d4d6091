"""Seamless reload (SIGHUP, `fleetproxy reload`, POST /v1/reload) and graceful stop."""

from __future__ import annotations

import copy
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from proxytest.client import ResponseReader, connect, request
from proxytest.configs import http_config, server
from proxytest.control import Api, LoadGenerator, get_from, served_by, wait_until, with_admin
from proxytest.proxy import free_port


def _write(p, cfg) -> None:
    p.path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _cli_reload(p, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetproxy", "reload", "-c", str(p.path), *args],
                          capture_output=True, text=True, timeout=60)


def _reload(p, api: Api, how: str) -> None:
    gen = api.info()["generation"]
    if how == "sighup":
        p.signal(signal.SIGHUP)
        assert wait_until(lambda: api.info()["generation"] == gen + 1, 30, 0.05), p.stderr()[-2000:]
    elif how == "cli":
        out = _cli_reload(p)
        assert out.returncode == 0 and f"reloaded (generation {gen + 1})" in out.stdout, out
    else:
        status, body = api.call("POST", "/v1/reload")
        assert status == 200 and body["generation"] == gen + 1, body


@pytest.fixture(params=["shared", "per-worker"])
def sockets(request):
    """One shared listening socket, or per-worker SO_REUSEPORT sockets.  The latter with
    net.ipv4.tcp_migrate_req=1 for the test (needs root; restored afterwards): the kernel
    then moves connections queued on a closing socket to the group's others."""
    if request.param == "shared":
        yield "shared"
        return
    path = "/proc/sys/net/ipv4/tcp_migrate_req"
    try:
        with open(path) as f:
            before = f.read().strip()
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        pytest.skip(f"cannot set net.ipv4.tcp_migrate_req ({exc.strerror}): per-worker sockets need it")
    yield "per-worker"
    with open(path, "w") as f:
        f.write(before)


def test_20_reloads_under_load_lose_nothing(proxy, backend, port, tmp_path, sockets):
    """20 reloads (SIGHUP, `fleetproxy reload`, POST /v1/reload in turn) with 2 workers while
    clients on keep-alive and on new connections send requests back to back; with one shared
    listening socket and with per-worker SO_REUSEPORT sockets."""
    workers = 2
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)],
                      global_={"workers": workers, "tune": {"reuseport": sockets == "per-worker"}})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    ways = ["sighup", "cli", "api"]
    reloads = 20
    t0 = time.monotonic()
    with LoadGenerator(p.port(), threads=4, duration=90, pause=0.002) as load:
        assert wait_until(lambda: load.total() > 100, 5)
        for i in range(reloads):
            new = copy.deepcopy(cfg)
            new["backends"][0]["servers"][1]["weight"] = 1 + i % 3  # a real change each time
            _write(p, new)
            _reload(p, api, ways[i % 3])
            done = load.total()
            assert wait_until(lambda d=done: load.total() > d + 20, 5)  # served by the new workers
        time.sleep(0.3)
    elapsed = time.monotonic() - t0
    stats = load.stats
    info = api.info()
    assert info["reloads"] == reloads and info["generation"] == reloads + 1
    print(f"\n{reloads} reloads, workers={workers}, {sockets} sockets, {elapsed:.1f}s: {stats.summary()}")
    if sockets == "per-worker":
        assert "per-worker (SO_REUSEPORT) listening sockets" in p.stderr()
    assert stats.failed == 0 and stats.resets == 0, stats.summary()
    assert stats.ok > 1000, stats.summary()
    # Idle keep-alive connections are closed at each reload (HAProxy does the same): a request
    # racing that close is sent again by the client, at most once per connection and reload.
    assert stats.retried <= reloads * 2, stats.summary()
    assert api.server("be", "s2")["weight"] == 1 + (reloads - 1) % 3
    # Old workers have all exited.
    assert wait_until(lambda: len(api.info()["workers"]) == workers, 10), api.info()["workers"]


def test_reload_finishes_inflight_and_closes_idle_keepalive(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1)])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    old_pid = api.worker_pids()[0]
    idle = connect(p.port())
    idle.sendall(request("GET", "/"))
    idle_reader = ResponseReader(idle)
    assert idle_reader.read_one().status == 200
    busy = connect(p.port())
    busy.sendall(request("GET", "/?mode=slow&delay=1.5"))
    assert wait_until(lambda: b1.active == 1, 3)
    _reload(p, api, "api")
    # The idle keep-alive connection is closed by the old worker.
    idle.settimeout(3)
    assert idle.recv(100) == b""
    idle.close()
    # The request in flight completes; the connection closes after it.
    r = ResponseReader(busy).read_one(5)
    assert r.status == 200 and r.header("Connection") == "close"
    busy.settimeout(3)
    assert busy.recv(100) == b""
    busy.close()
    assert wait_until(lambda: old_pid not in api.worker_pids(current_only=False), 5)
    assert get_from(p.port()).status == 200


def test_reload_hard_stop_after_bounds_old_workers(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1)], global_={"hard_stop_after": "1s"})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    old_pid = api.worker_pids()[0]
    hung = connect(p.port())
    hung.sendall(request("GET", "/?mode=hang"))
    assert wait_until(lambda: b1.active == 1, 3)
    t0 = time.monotonic()
    _reload(p, api, "api")
    assert wait_until(lambda: old_pid not in api.worker_pids(current_only=False), 5)
    assert 0.8 <= time.monotonic() - t0 <= 3.0
    hung.settimeout(3)
    try:
        assert hung.recv(100) == b""
    except ConnectionResetError:
        pass
    hung.close()
    assert "hard_stop_after (1.0s) reached: closing 1 connection(s)" in p.stderr()


def test_invalid_config_keeps_the_old_one(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1)])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    good_text = p.path.read_text()
    bad = copy.deepcopy(cfg)
    bad["backends"][0]["servers"][0]["address"] = "127.0.0.1:99999"
    bad["frontends"][0]["maxconn"] = "lots"
    _write(p, bad)

    status, body = api.call("POST", "/v1/reload")
    assert status == 400 and body["status"] == "refused"
    assert any(e.startswith("backends[0].servers[0].address:") for e in body["errors"]), body
    assert any(e.startswith("frontends[0].maxconn:") for e in body["errors"]), body

    out = _cli_reload(p)
    assert out.returncode == 1
    assert "reload refused: backends[0].servers[0].address: port 99999 out of range" in out.stderr, out.stderr

    p.signal(signal.SIGHUP)
    assert wait_until(lambda: p.stderr().count("reload refused, keeping the running configuration: "
                                               "backends[0].servers[0].address") >= 3, 5), p.stderr()
    info = api.info()
    assert info["generation"] == 1 and info["reloads"] == 0
    assert any("backends[0].servers[0].address" in e for e in info["last_reload_error"])
    assert get_from(p.port()).status == 200

    # YAML that does not parse.
    p.path.write_text("frontends: [\n")
    status, body = api.call("POST", "/v1/reload")
    assert status == 400 and "invalid YAML" in body["errors"][0]
    # A listener that cannot be bound: refused, nothing changed.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = copy.deepcopy(cfg)
        busy["frontends"].append({"name": "fe2", "bind": [f"127.0.0.1:{taken.getsockname()[1]}"],
                                  "default_backend": "be"})
        _write(p, busy)
        status, body = api.call("POST", "/v1/reload")
        assert status == 400 and "cannot bind" in body["errors"][0], body
    assert api.info()["generation"] == 1 and get_from(p.port()).status == 200

    p.path.write_text(good_text)
    status, body = api.call("POST", "/v1/reload")
    assert status == 200 and body["generation"] == 2
    assert api.info()["last_reload_error"] is None
    assert get_from(p.port()).status == 200
    # The refusals were logged as errors: this proxy stops here, checked by hand.
    assert p.stop() == 0
    assert "Traceback" not in p.stderr()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_listeners_added_and_removed_by_reload(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1)], extra_backends=[{"name": "two", "servers": [server("t", b2)]}])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    new_port = free_port()
    assert _refused(new_port)
    two = copy.deepcopy(cfg)
    two["frontends"].append({"name": "fe2", "bind": [f"127.0.0.1:{new_port}"], "default_backend": "two"})
    _write(p, two)
    _reload(p, api, "sighup")
    assert served_by(get_from(new_port)) == "b2"
    assert served_by(get_from(p.port())) == "b1"
    assert [f["name"] for f in api.get("/v1/frontends")] == ["fe", "fe2"]

    _write(p, cfg)
    _reload(p, api, "cli")
    assert wait_until(lambda: _refused(new_port), 5)
    assert served_by(get_from(p.port())) == "b1"
    # And the address can be used again by anyone.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", new_port))


def test_counters_survive_reload_and_workers_change(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"))])
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    for _ in range(5):
        get_from(p.port())
    assert wait_until(lambda: api.get("/v1/frontends/fe")["requests"] == 5, 2)
    two = copy.deepcopy(cfg)
    two["global"]["workers"] = 2  # and the number of workers changes
    _write(p, two)
    _reload(p, api, "api")
    assert wait_until(lambda: len(api.worker_pids()) == 2, 10), api.info()["workers"]
    for _ in range(3):
        get_from(p.port())
    assert wait_until(lambda: api.get("/v1/frontends/fe")["requests"] == 8, 3), api.get("/v1/frontends/fe")
    assert wait_until(lambda: api.server("be", "s1")["sessions"]["total"] == 8, 3)


def test_reload_cli_without_socket_uses_pid(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"))])
    p = proxy(cfg)
    out = subprocess.run([sys.executable, "-m", "fleetproxy", "reload", "--pid", str(p.pid)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "SIGHUP sent" in out.stdout
    assert wait_until(lambda: "reloaded " in p.stderr(), 15), p.stderr()
    assert get_from(p.port()).status == 200
    out = subprocess.run([sys.executable, "-m", "fleetproxy", "reload", "--socket", str(tmp_path / "nope.sock")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "is fleetproxy running?" in out.stderr


def test_sigterm_finishes_inflight_requests(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1)], global_={"workers": 2})
    p = proxy(cfg)
    results: list = []

    def slow() -> None:
        results.append(get_from(p.port(), "/?mode=slow&delay=1.5"))

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    assert wait_until(lambda: b1.active == 4, 3)
    idle = connect(p.port())
    idle.sendall(request("GET", "/"))
    assert ResponseReader(idle).read_one().status == 200
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    idle.settimeout(3)
    assert idle.recv(10) == b""  # idle keep-alive connections are closed at once
    idle.close()
    for t in threads:
        t.join(10)
    assert [r.status for r in results] == [200] * 4
    assert p.wait(10) == 0
    assert time.monotonic() - t0 < 5
    err = p.stderr()
    assert "Traceback" not in err and "stopped" in err


def test_sigterm_hard_stop_after(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1)], global_={"hard_stop_after": "1s"})
    p = proxy(cfg)
    hung = connect(p.port())
    hung.sendall(request("GET", "/?mode=hang"))
    assert wait_until(lambda: b1.active == 1, 3)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert 0.8 <= time.monotonic() - t0 < 4
    hung.close()


def test_systemd_notify(backend, port, tmp_path):
    """Type=notify: READY once listening, RELOADING/READY around a reload (with the outcome in
    STATUS), STOPPING on SIGTERM; no library, one datagram each."""
    import os
    import tempfile

    cfg = http_config(port(), [server("s1", backend("b1"))])
    path = tmp_path / "notify.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sockdir = tempfile.mkdtemp(prefix="fpc-")
    notify_path = os.path.join(sockdir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(20)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen([sys.executable, "-m", "fleetproxy", "run", "-c", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg and f"MAINPID={proc.pid}" in msg, msg
        assert get_from(int(cfg["frontends"][0]["bind"][0].rsplit(":", 1)[1])).status == 200  # listening

        proc.send_signal(signal.SIGHUP)
        msg = sock.recv(4096).decode()
        assert "RELOADING=1" in msg and "MONOTONIC_USEC=" in msg, msg
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg and "STATUS=serving" in msg, msg

        bad = copy.deepcopy(cfg)
        bad["defaults"]["retries"] = -1
        path.write_text(yaml.safe_dump(bad, sort_keys=False))
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in sock.recv(4096).decode()
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg and "STATUS=reload failed: defaults.retries" in msg, msg

        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()
        sock.close()
        os.unlink(notify_path)
        os.rmdir(sockdir)


def test_change_made_during_a_reload_reaches_the_new_workers(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)], global_={"workers": 2})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    done: list = []
    t = threading.Thread(target=lambda: done.append(api.call("POST", "/v1/reload")))
    t.start()
    # While the new workers start (they are listed before they are ready), drain s1.
    assert wait_until(lambda: api.info()["generation"] == 2, 10)
    api.patch("be", "s1", state="drain")
    t.join(30)
    assert done and done[0][0] == 200
    assert wait_until(lambda: len(api.worker_pids()) == 2, 10)
    time.sleep(0.3)
    n1 = len(b1.requests)
    for _ in range(12):
        get_from(p.port())
    assert len(b1.requests) == n1, "a new worker did not get the drain made while it started"
