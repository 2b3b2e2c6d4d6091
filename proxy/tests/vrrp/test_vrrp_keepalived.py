"""Interoperability with keepalived (Debian's package, VRRP version 3), multicast and
unicast: a mixed pair elects the higher priority, and each side takes over when the
other is killed (and after a graceful stop: our priority-0 advertisement)."""

from __future__ import annotations

import signal
import time

import pytest

from fleetproxy.vrrp.state import master_down_interval_cs, skew_time_cs

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

VIP = "198.18.51.100"


def mdi(priority: int, interval_cs: int = 10) -> float:
    return float(master_down_interval_cs(priority, interval_cs) / 100)


def skew(priority: int, interval_cs: int = 10) -> float:
    return float(skew_time_cs(priority, interval_cs) / 100)


def _logs(lab, ka_node, fp_node) -> str:
    return (f"--- keepalived\n{lab.log(f'{ka_node.ns}-keepalived.log')[-4000:]}\n"
            f"--- fleetproxy\n{lab.log(f'{fp_node.ns}-vrrp.log')}")


def _failover(lab, kill, node, timeout=3.0):
    with lab.probe() as probe:
        probe.drain()
        t0 = time.monotonic()
        kill()
        return probe.first_answer(VIP, node.mac, t0, timeout)


def _wait_vip(node, present: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.has(VIP) == present:
            return
        time.sleep(0.02)
    raise AssertionError(f"{node.ns}: VIP {'missing' if present else 'still there'} after {timeout}s")


@pytest.mark.parametrize("mode", ["multicast", "unicast"])
def test_keepalived_higher_priority_wins_and_we_take_over_when_it_dies(lab2, keepalived_bin, mode):
    ka, fp = lab2.nodes
    unicast = mode == "unicast"
    kap = lab2.start_keepalived(ka, priority=200, unicast_peers=[fp.ip] if unicast else None)
    lab2.start_vrrp(fp, priority=100, unicast_peers=[ka.ip] if unicast else [])
    _wait_vip(ka, True)
    st = lab2.wait_state(fp, "BACKUP")
    time.sleep(0.5)
    st = lab2.status(fp)
    assert st["state"] == "BACKUP" and st["master"] == ka.ip and st["master_priority"] == 200, _logs(lab2, ka, fp)
    assert st["counters"]["rx_adverts"] >= 3 and not fp.has(VIP)

    took = _failover(lab2, lambda: lab2.kill_keepalived(kap), fp)
    assert took is not None and took <= mdi(100) + 0.1, f"{took}\n{_logs(lab2, ka, fp)}"
    lab2.wait_state(fp, "MASTER", 2)

    # keepalived comes back with the higher priority and preempts us.
    lab2.start_keepalived(ka, priority=200, unicast_peers=[fp.ip] if unicast else None)
    lab2.wait_state(fp, "BACKUP", 5)
    _wait_vip(fp, False, 2)
    _wait_vip(ka, True, 2)


@pytest.mark.parametrize("mode", ["multicast", "unicast"])
def test_we_win_with_higher_priority_and_keepalived_takes_over(lab2, keepalived_bin, mode):
    fp, ka = lab2.nodes
    unicast = mode == "unicast"
    fpp = lab2.start_vrrp(fp, priority=200, unicast_peers=[ka.ip] if unicast else [])
    lab2.wait_state(fp, "MASTER", 5)
    kap = lab2.start_keepalived(ka, priority=100, unicast_peers=[fp.ip] if unicast else None)
    time.sleep(1.0)
    assert lab2.state(fp) == "MASTER", _logs(lab2, ka, fp)
    assert fp.has(VIP) and not ka.has(VIP)

    # SIGKILL: keepalived notices the silence after its Master_Down_Interval.
    took = _failover(lab2, fpp.kill, ka)
    assert took is not None and took <= mdi(100) + 0.1, f"{took}\n{_logs(lab2, ka, fp)}"

    # We come back, preempt keepalived, then stop gracefully: keepalived takes over
    # after Skew_Time on our priority-0 advertisement.
    fpp = lab2.start_vrrp(fp, priority=200, unicast_peers=[ka.ip] if unicast else [])
    lab2.wait_state(fp, "MASTER", 5)
    _wait_vip(ka, False, 3)
    took = _failover(lab2, lambda: fpp.send_signal(signal.SIGTERM), ka)
    assert took is not None and took <= skew(100) + 0.1, f"{took}\n{_logs(lab2, ka, fp)}"
    assert fpp.wait(5) == 0
    assert kap.poll() is None
