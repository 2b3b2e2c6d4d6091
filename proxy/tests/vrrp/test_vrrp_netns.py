"""fleetproxy vrrp on real kernels: namespaces, veth pairs and a Linux bridge.

Every node runs the real daemon (``python -m fleetproxy vrrp run``) in its own network
namespace; an observer namespace on the same bridge asks who has the virtual IP (ARP)
and watches gratuitous ARPs, so failover times are what the LAN sees. Times use the
bounds of the issue: Master_Down_Interval + 100 ms after SIGKILL, Skew_Time + 100 ms
after a graceful stop, 1 s after a tracked service dies.
"""

from __future__ import annotations

import json
import os
import signal
import socketserver
import stat
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from fleetproxy.vrrp.state import master_down_interval_cs, skew_time_cs

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

VIP = "198.18.51.100"
INTERVAL_CS = 10  # 100 ms adverts everywhere here


def mdi(priority: int) -> float:
    return float(master_down_interval_cs(priority, INTERVAL_CS) / 100)


def skew(priority: int) -> float:
    return float(Fraction(skew_time_cs(priority, INTERVAL_CS)) / 100)


def logs(lab) -> str:
    return "\n".join(f"--- {n.ns}\n{lab.log(f'{n.ns}-vrrp.log')}" for n in lab.nodes)


def failover(lab, kill, new_master, timeout=3.0) -> float | None:
    """Seconds from ``kill()`` to ``new_master`` answering ARP for the VIP."""
    with lab.probe() as probe:
        probe.drain()
        t0 = time.monotonic()
        kill()
        return probe.first_answer(VIP, new_master.mac, t0, timeout)


def masters(lab) -> list:
    return [n for n in lab.nodes if lab.state(n) == "MASTER"]


def settle(lab, expect_master, others=(), timeout=10.0) -> None:
    lab.wait_state(expect_master, "MASTER", timeout)
    for n in others:
        lab.wait_state(n, "BACKUP", timeout)


# --------------------------------------------------------------------------
# Election, failover
# --------------------------------------------------------------------------

def test_two_nodes_elect_exactly_one_master(lab2):
    a, b = lab2.nodes
    lab2.start_vrrp(a, priority=150)
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, [b])
    time.sleep(0.5)
    assert masters(lab2) == [a], logs(lab2)
    assert a.has(VIP) and not b.has(VIP)
    st = lab2.status(b)
    assert st["master"] == a.ip and st["master_priority"] == 150
    assert st["counters"]["rx_adverts"] >= 3
    assert lab2.status(a)["vips_held"] is True


def test_sigkill_backup_answers_arp_within_master_down_interval(lab2):
    a, b = lab2.nodes
    pa = lab2.start_vrrp(a, priority=150)
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, [b])
    took = failover(lab2, pa.kill, b)
    bound = mdi(100) + 0.100
    assert took is not None and took <= bound, f"{took} > {bound:.3f}\n{logs(lab2)}"
    st = lab2.wait_state(b, "MASTER", 2)
    assert st["vips_held"] and b.has(VIP)
    assert "Master_Down_Interval" in st["reason"]


def test_graceful_stop_hands_over_within_skew_time(lab2):
    a, b = lab2.nodes
    pa = lab2.start_vrrp(a, priority=150)
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, [b])
    took = failover(lab2, lambda: pa.send_signal(signal.SIGTERM), b)
    bound = skew(100) + 0.100
    assert took is not None and took <= bound, f"{took} > {bound:.3f}\n{logs(lab2)}"
    assert pa.wait(5) == 0
    assert not a.has(VIP), "the stopped node must drop the VIP"
    st = lab2.status(b)
    assert st["state"] == "MASTER" and "the master left (priority 0)" in st["reason"], st


def test_gratuitous_arp_on_the_wire_carries_the_new_masters_mac(lab2):
    a, b = lab2.nodes
    pa = lab2.start_vrrp(a, priority=150)
    lab2.start_vrrp(b, priority=100, garp={"repeat": 3, "delay": "300ms"})
    settle(lab2, a, [b])
    with lab2.probe() as probe:
        probe.drain()
        t0 = time.monotonic()
        pa.kill()
        garps = probe.garps(VIP, t0 + mdi(100) + 0.8)
    from_b = [t - t0 for t, mac in garps if mac == b.mac]
    assert len(from_b) >= 6, f"expected 3 at once and 3 after 300 ms, saw {garps}"
    assert from_b[0] <= mdi(100) + 0.1
    assert from_b[-1] - from_b[0] >= 0.25  # the delayed repeat
    assert all(mac == b.mac for _, mac in garps)


def test_higher_priority_node_joining_preempts(lab2):
    a, b = lab2.nodes
    lab2.start_vrrp(b, priority=100)
    lab2.wait_state(b, "MASTER", 5)
    lab2.start_vrrp(a, priority=150)
    settle(lab2, a, [b], timeout=5)
    assert not b.has(VIP) and a.has(VIP)


def test_no_preempt_keeps_the_current_master(lab2):
    a, b = lab2.nodes
    lab2.start_vrrp(b, priority=100)
    lab2.wait_state(b, "MASTER", 5)
    lab2.start_vrrp(a, priority=150, preempt=False)
    time.sleep(1.0)  # ten advert intervals
    assert lab2.state(a) == "BACKUP" and lab2.state(b) == "MASTER", logs(lab2)
    assert b.has(VIP) and not a.has(VIP)


def test_three_nodes_one_master_and_the_next_in_line_takes_over(lab3):
    a, b, c = lab3.nodes
    pa = lab3.start_vrrp(a, priority=200)
    lab3.start_vrrp(b, priority=150)
    lab3.start_vrrp(c, priority=100)
    settle(lab3, a, [b, c])
    time.sleep(0.3)
    assert masters(lab3) == [a]
    took = failover(lab3, pa.kill, b)
    assert took is not None and took <= mdi(150) + 0.1, f"{took}\n{logs(lab3)}"
    time.sleep(0.5)
    assert masters(lab3) == [b] and lab3.state(c) == "BACKUP"
    assert not c.has(VIP)


def test_partition_gives_two_masters_and_heals_within_two_intervals(lab3):
    a, b, c = lab3.nodes
    lab3.start_vrrp(a, priority=200)
    lab3.start_vrrp(b, priority=150)
    lab3.start_vrrp(c, priority=100)
    settle(lab3, a, [b, c])
    a.partition(True)  # the bridge stops forwarding a's port; a's link stays up
    lab3.wait_state(b, "MASTER", 3)
    assert lab3.state(a) == "MASTER" and lab3.state(c) == "BACKUP"
    assert a.has(VIP) and b.has(VIP)
    with lab3.probe() as probe:
        probe.drain()
        healed = time.time()
        t0 = time.monotonic()
        a.partition(False)
        st = lab3.wait_state(b, "BACKUP", 2)
        garps = probe.garps(VIP, t0 + 0.5)
    took = st["since"] - healed  # the loser's own transition time
    assert took <= 2 * INTERVAL_CS / 100, f"{took:.3f}s\n{logs(lab3)}"
    time.sleep(0.1)
    assert masters(lab3) == [a]
    assert not b.has(VIP), "the loser removes the VIP"
    # The winner re-announced the VIP after the split (keepalived users' complaint).
    assert any(mac == a.mac for _, mac in garps), garps


# --------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------

_LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept(); c.close()
"""


def test_tracked_tcp_service_killed_moves_the_vip_within_1s(lab2):
    a, b = lab2.nodes
    svc = a.popen([sys.executable, "-c", _LISTENER, "8080"], "svc.log")
    time.sleep(0.3)
    lab2.start_vrrp(a, priority=150, track=[{"tcp": "127.0.0.1:8080"}])
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, [b])
    took = failover(lab2, svc.kill, b)
    assert took is not None and took <= 1.0, f"{took}\n{logs(lab2)}"
    st = lab2.wait_state(a, "FAULT", 2)
    assert st["faults"] == ["track tcp 127.0.0.1:8080 down"]
    assert not a.has(VIP)


class _Health(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    status = 200


class _HealthHandler(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        code = self.server.status
        self.wfile.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())


def test_proxy_admin_socket_tracking_with_weight(lab2):
    """``track: [{proxy: SOCKET, weight: -60}]``: a sick proxy lowers the priority below
    the peer's, which preempts within 1 s. The admin API is a stand-in here."""
    a, b = lab2.nodes
    path = lab2.path("admin.sock")
    srv = _Health(path, _HealthHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        lab2.start_vrrp(a, priority=150, track=[{"proxy": path, "weight": -60}])
        lab2.start_vrrp(b, priority=100)
        settle(lab2, a, [b])

        def sicken():
            srv.status = 503

        took = failover(lab2, sicken, b)
        assert took is not None and took <= 1.0, f"{took}\n{logs(lab2)}"
        st = lab2.wait_state(a, "BACKUP", 2)
        assert st["priority"] == 90 and st["base_priority"] == 150
        srv.status = 200
        settle(lab2, a, [b], timeout=3)  # healthy again: priority 150 preempts back
        assert lab2.status(a)["priority"] == 150
    finally:
        srv.shutdown()
        srv.server_close()


def test_interface_and_exec_tracking_and_own_link(lab2):
    """``interface:`` follows netlink link events (weight 0: FAULT); ``exec:`` with a
    negative weight lowers the priority; the instance's own link down is a FAULT."""
    a, b = lab2.nodes
    a.sh("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    a.sh("ip", "link", "set", "eth1", "up")
    a.sh("ip", "link", "set", "eth1p", "up")
    flag = lab2.path("uplink-broken")
    track = [{"interface": "eth1"},
             {"exec": f"/usr/bin/test ! -e {flag}", "interval": "100ms", "weight": -100}]
    lab2.start_vrrp(a, priority=150, track=track)
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, [b])

    took = failover(lab2, lambda: a.sh("ip", "link", "set", "eth1p", "down"), b)
    assert took is not None and took <= skew(100) + 0.1 + 0.1, f"{took}\n{logs(lab2)}"
    assert lab2.wait_state(a, "FAULT", 2)["faults"] == ["track interface eth1 down"]
    a.sh("ip", "link", "set", "eth1p", "up")
    settle(lab2, a, [b], timeout=3)

    def break_uplink():
        Path(flag).touch()

    took = failover(lab2, break_uplink, b)
    assert took is not None and took <= 0.1 + mdi(100) + 0.15, f"{took}\n{logs(lab2)}"
    st = lab2.wait_state(a, "BACKUP", 2)
    assert st["priority"] == 50
    Path(flag).unlink()
    settle(lab2, a, [b], timeout=3)

    a.sh("ip", "link", "set", "eth0", "down")
    assert lab2.wait_state(a, "FAULT", 2)["faults"] == ["eth0 is down"]
    lab2.wait_state(b, "MASTER", 2)
    a.sh("ip", "link", "set", "eth0", "up")
    settle(lab2, a, [b], timeout=5)


# --------------------------------------------------------------------------
# Start-up, unicast, authentication, hooks, status, capabilities
# --------------------------------------------------------------------------

def test_stale_vip_is_removed_at_start(lab2):
    a, b = lab2.nodes
    lab2.start_vrrp(a, priority=150)
    lab2.wait_state(a, "MASTER", 5)
    b.sh("ip", "addr", "add", f"{VIP}/24", "dev", "eth0")  # left behind by a crash
    assert b.has(VIP)
    lab2.start_vrrp(b, priority=100)
    lab2.wait_state(b, "BACKUP", 5)
    assert not b.has(VIP)
    assert "removed stale virtual IP(s) 198.18.51.100/24" in lab2.log(f"{b.ns}-vrrp.log")


def test_unicast_mode(lab2):
    a, b = lab2.nodes
    pa = lab2.start_vrrp(a, priority=150, unicast_peers=[b.ip])
    lab2.start_vrrp(b, priority=100, unicast_peers=[a.ip])
    settle(lab2, a, [b])
    time.sleep(0.5)
    st = lab2.status(b)
    assert st["mode"] == "unicast" and st["master"] == a.ip and st["counters"]["rx_adverts"] > 3
    took = failover(lab2, pa.kill, b)
    assert took is not None and took <= mdi(100) + 0.1, f"{took}\n{logs(lab2)}"


def test_unicast_ignores_adverts_from_strangers(lab3):
    a, b, c = lab3.nodes
    lab3.start_vrrp(a, priority=150, unicast_peers=[b.ip])
    lab3.start_vrrp(b, priority=100, unicast_peers=[a.ip])
    settle(lab3, a, [b])
    # c is not a configured peer of a: its higher-priority adverts to a are ignored.
    lab3.start_vrrp(c, priority=200, unicast_peers=[a.ip])
    time.sleep(0.6)
    assert lab3.state(a) == "MASTER"
    assert lab3.status(a)["counters"].get("rx_unknown_peer", 0) > 0


@pytest.mark.parametrize("mode", ["same-key", "different-keys", "one-side-off"])
def test_hmac_authentication(lab2, mode):
    a, b = lab2.nodes
    k1, k2 = lab2.path("k1"), lab2.path("k2")
    with open(k1, "w") as f:
        f.write("fleetproxy-test-key-0123456789ab\n")
    with open(k2, "w") as f:
        f.write("another-key-entirely-0123456789\n")
    auth_a = {"hmac_key_file": k1}
    auth_b = {"same-key": {"hmac_key_file": k1}, "different-keys": {"hmac_key_file": k2}, "one-side-off": None}[mode]
    lab2.start_vrrp(a, priority=150, auth=auth_a)
    lab2.start_vrrp(b, priority=100, auth=auth_b)
    if mode == "same-key":
        settle(lab2, a, [b])
        time.sleep(0.3)
        st = lab2.status(b)
        assert st["auth"] == "hmac-sha256" and st["counters"]["rx_adverts"] >= 2
        assert not st["counters"].get("rx_auth_ignored")
    else:
        # Each side ignores the other's adverts: both become master, and count them.
        lab2.wait_state(b, "MASTER", 3)
        time.sleep(0.3)
        assert masters(lab2) == [a, b]
        for n in (a, b):
            c = lab2.status(n)["counters"]
            assert c.get("rx_auth_ignored", 0) > 0 and not c.get("rx_adverts"), (n.ns, c)


def test_notify_hooks_status_command(lab2):
    a, b = lab2.nodes
    out = lab2.path("hook.out")
    hook = lab2.path("hook.sh")
    with open(hook, "w") as f:
        f.write(f'#!/bin/sh\necho "$@" >> {out}\n')
    os.chmod(hook, stat.S_IRWXU)
    pa = lab2.start_vrrp(a, priority=150, notify={"master": f"{hook} m", "any": f"{hook} any"})
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, [b])
    sock = lab2.path(f"{a.ns}.sock")
    r = subprocess.run([sys.executable, "-m", "fleetproxy", "vrrp", "status", "-s", sock, "--json"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["instances"][0]["state"] == "MASTER" and doc["pid"] == pa.pid
    r = subprocess.run([sys.executable, "-m", "fleetproxy", "vrrp", "status", "-s", sock],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "MASTER" in r.stdout and "198.18.51.100/24 (held)" in r.stdout
    pa.send_signal(signal.SIGTERM)
    assert pa.wait(10) == 0
    lines = Path(out).read_text().splitlines()
    assert lines == ["any vip BACKUP 150", "m vip MASTER 150", "any vip MASTER 150", "any vip STOP 0"], lines
    r = subprocess.run([sys.executable, "-m", "fleetproxy", "vrrp", "status", "-s", sock],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 3 and "no daemon answers" in r.stderr


def test_runs_with_only_cap_net_admin_and_cap_net_raw(lab2):
    a, b = lab2.nodes
    cfg = lab2.vrrp_config(a, priority=150)
    path = lab2.path(f"{a.ns}-caps.yml")
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    caps = "-all,+net_admin,+net_raw"
    p = a.popen(["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--ambient-caps", "-all,+net_admin,+net_raw",
                 sys.executable, "-m", "fleetproxy", "vrrp", "run", "-c", path], f"{a.ns}-vrrp.log")
    lab2.wait_state(a, "MASTER", 10, proc=p)
    status = Path(f"/proc/{p.pid}/status").read_text()
    eff = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
    assert eff == (1 << 12) | (1 << 13), hex(eff)  # CAP_NET_ADMIN | CAP_NET_RAW
    lab2.start_vrrp(b, priority=100)
    settle(lab2, a, [b])
    took = failover(lab2, p.kill, b)
    assert took is not None and took <= mdi(100) + 0.1


def test_without_capabilities_it_fails_with_a_clear_message(lab2):
    a, _ = lab2.nodes
    a.sh("ip", "addr", "add", f"{VIP}/24", "dev", "eth0")  # a stale VIP it may not remove
    path = lab2.path("nocaps.yml")
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(lab2.vrrp_config(a), f)
    r = a.sh("setpriv", "--bounding-set", "-all", "--inh-caps", "-all",
             sys.executable, "-m", "fleetproxy", "vrrp", "run", "-c", path, check=False)
    assert r.returncode == 1, r.stderr
    assert "needs CAP_NET_ADMIN and CAP_NET_RAW" in r.stderr and "Traceback" not in r.stderr, r.stderr
