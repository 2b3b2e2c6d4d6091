"""Several worker processes: changes reach all of them at once, checks run once, a dead
worker is replaced."""

from __future__ import annotations

import os
import signal
import time

import pytest
from proxytest.client import ResponseReader, request
from proxytest.configs import http_config, server
from proxytest.control import (
    Api,
    connections_by_pid,
    runtime,
    served_by,
    spread_connections,
    wait_until,
    with_admin,
)


def _round(socks, readers) -> list[str]:
    """One request on every connection; who served each."""
    out = []
    for s, reader in zip(socks, readers, strict=True):
        s.sendall(request("GET", "/"))
        r = reader.read_one()
        assert r.status == 200
        out.append(served_by(r))
    return out


@pytest.mark.parametrize("via", ["api", "runtime"])
def test_drain_applies_on_both_workers_at_once(proxy, backend, port, tmp_path, via):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)], global_={"workers": 2})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    pids = api.worker_pids()
    assert len(pids) == 2
    socks = spread_connections(p.port(), pids, n=12)
    try:
        readers = [ResponseReader(s) for s in socks]
        by_pid = connections_by_pid(pids, p.port())
        assert all(by_pid.values()), by_pid  # each worker serves some of them
        before = _round(socks, readers)
        assert set(before) == {"b1", "b2"}

        if via == "api":
            api.patch("be", "s1", state="drain")
        else:
            assert runtime(adm.runtime_socket, "set server be/s1 state drain") == "\n"
        returned = time.monotonic()
        served = []
        for _ in range(5):
            served += _round(socks, readers)
        first_round_done = time.monotonic()
        late = [round(r.started - returned, 4) for r in list(b1.requests) if r.started > returned]
        # No request reached the drained server once the call returned, on either worker;
        # the bound is 100 ms.
        assert not late, f"requests reached s1 {late} s after the drain returned"
        assert set(served) == {"b2"} and len(served) == 5 * len(socks)
        # Both workers served after the change (connections are pinned to a worker).
        assert all(connections_by_pid(pids, p.port()).values())
        print(f"\n{len(served)} requests on {len(socks)} connections over 2 workers in "
              f"{first_round_done - returned:.3f}s after the drain: none reached s1")

        # And back: both workers use s1 again.
        api.patch("be", "s1", state="ready")
        assert set(_round(socks, readers)) == {"b1", "b2"}
    finally:
        for s in socks:
            s.close()


def test_checks_run_once_not_per_worker(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1, check=True, inter="200ms")],
                      backend={"httpchk": {"path": "/health"}}, global_={"workers": 2})
    adm = with_admin(cfg, tmp_path)
    proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    start = len(b1.requests)
    time.sleep(2.0)
    checks = sum(1 for r in list(b1.requests)[start:] if r.path == "/health")
    # One checker: about 10 in 2 s at 200 ms (not 20, as one per worker would make).
    assert 5 <= checks <= 13, checks


def test_killed_worker_is_replaced_with_the_current_state(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)], global_={"workers": 2})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    pids = api.worker_pids()
    socks = spread_connections(p.port(), pids, n=8)
    n = len(socks)
    for s in socks:
        s.close()
    assert wait_until(lambda: api.get("/v1/frontends/fe")["requests"] == n, 2)
    api.patch("be", "s1", state="maint")

    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(api.worker_pids()) == 2 and victim not in api.worker_pids(), 15), \
        api.info()["workers"]
    new_pids = api.worker_pids()
    assert pids[1] in new_pids
    # The replacement got the runtime changes made before it started.
    socks = spread_connections(p.port(), new_pids, n=8)
    m = len(socks)
    try:
        readers = [ResponseReader(s) for s in socks]
        assert set(_round(socks, readers)) == {"b2"}
    finally:
        for s in socks:
            s.close()
    # The dead worker's counters are kept (from its last report, sent before the kill).
    assert wait_until(lambda: api.get("/v1/frontends/fe")["requests"] == n + 2 * m, 2), \
        (api.get("/v1/frontends/fe")["requests"], n, m)
    assert f"worker {victim} died unexpectedly" in p.stderr()
    # The death is logged as an error: this proxy is stopped here, by hand.
    assert p.stop() == 0
    assert "Traceback" not in p.stderr()


def test_workers_auto(proxy, backend, port, tmp_path):
    cfg = http_config(port(), [server("s1", backend("b1"))], global_={"workers": "auto"})
    adm = with_admin(cfg, tmp_path)
    proxy(cfg)
    assert len(Api(adm.socket).worker_pids()) == len(os.sched_getaffinity(0))


def test_added_server_is_used_by_both_workers(proxy, backend, port, tmp_path):
    b1, b2, b3 = backend("b1"), backend("b2"), backend("b3")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)], global_={"workers": 2})
    adm = with_admin(cfg, tmp_path)
    p = proxy(cfg)
    api = Api(adm.socket)
    pids = api.worker_pids()
    socks = spread_connections(p.port(), pids, n=12)
    try:
        readers = [ResponseReader(s) for s in socks]
        status, _ = api.call("POST", "/v1/backends/be/servers", {"name": "s3", "address": b3.address})
        assert status == 201
        owner = {port_: pid for pid, ports in connections_by_pid(pids, p.port()).items() for port_ in ports}
        seen: dict[int, set[str]] = {pid: set() for pid in pids}
        for _ in range(3):
            for s, who in zip(socks, _round(socks, readers), strict=True):
                seen[owner[s.getsockname()[1]]].add(who)
        assert all("b3" in names for names in seen.values()), seen
    finally:
        for s in socks:
            s.close()
