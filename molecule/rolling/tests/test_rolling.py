"""Verify rolling backend changes under traffic, in order:

1. the fleet answers from server1..3 at version 1.0 through the VIP;
2. playbooks/rolling_backend_change.yml upgrades every server in turn (the task file
   ../tasks/upgrade_backend.yml restarts the application with version 2.0);
3. the `backend` module replaces server3 by server4 (a new host running 2.0) on both
   proxies, one at a time (../replace_server.yml, the inventory's new intent);
4. a reload (before and after the configuration file follows the new intent) keeps the
   runtime state equal to that intent, without a failed request;
5. over the whole run: no failed request, no answer from a server its proxy had out of
   rotation, every server at 2.0;
6. after a restart of each proxy the runtime state is still the intent.

Traffic runs from the first test to the accounting test: 40 requests/s to the VIP
(held by fp7r-lb1 throughout, checked) and 20 requests/s straight to fp7r-lb2's own
address, so both proxies' drains are checked. Each proxy's own view of its servers
(state, sessions) is polled from its stats page every 100 ms (fleetlab.StatePoller).
Restarting the proxy that holds the VIP is a failover (molecule/ha covers it), so the
restarts come after the traffic has stopped.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import time

import fleetlab as lab
import pytest
import yaml

SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIR = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.path.dirname(os.path.dirname(SCENARIO_DIR)))
PROXIES = ["fp7r-lb1", "fp7r-lb2"]
BACKEND = "http_back"
OLD, NEW = "1.0", "2.0"
REPORT = lab.Measurements("rolling: backend changes under traffic")
lab.REPORTS.append(REPORT)


class Fleet:
    def __init__(self) -> None:
        self.hostvars = {h: lab.inventory_host(h) for h in PROXIES}
        first = self.hostvars[PROXIES[0]]
        self.vip = first["fleetproxy_vip_addresses"][0].split("/")[0]
        self.address = {h: f"{first['fleet_net']}.{11 + i}" for i, h in enumerate(PROXIES)}
        self.backends = first["fleetproxy_backends"]
        # The inventory's new intent: server3 replaced by server4 (fp7r-app4).
        self.intent = copy.deepcopy(self.backends)
        servers = self.intent[0]["servers"]
        servers[:] = [s for s in servers if s["name"] != "server3"]
        servers.append({"name": "server4", "address": f"{first['fleet_net']}.24:80"})
        self.intent_file = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp"), "intent.yml")
        with open(self.intent_file, "w") as fh:
            yaml.safe_dump({"fleetproxy_backends": self.intent}, fh)
        self.watch = lab.VipWatch(self.vip, PROXIES)
        self.poller = lab.StatePoller({h: f"http://{self.address[h]}:8404/stats;json" for h in PROXIES})
        self.vip_traffic = lab.Traffic(self.vip, rate=40, timeout=5, max_duration=1500)
        self.lb2_traffic = lab.Traffic(self.address["fp7r-lb2"], rate=20, timeout=5, max_duration=1500)
        self.t_start = 0.0

    def intent_servers(self) -> dict[str, str]:
        return {s["name"]: s["address"] for s in self.intent[0]["servers"]}


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    f.watch.start()
    f.poller.start()
    yield f
    f.vip_traffic.stop()
    f.lb2_traffic.stop()
    f.poller.stop()
    f.watch.close()


def runtime_servers(node: str) -> dict[str, dict]:
    res = lab.module(node, "fleetproxy.fleet.proxy_info", {"backends": [BACKEND], "gather": ["backends"]})[node]
    return {s["name"]: s for s in res["backends"][0]["servers"]}


def assert_runtime_is_intent(fleet: Fleet, when: str, timeout: float = 30.0) -> None:
    """Each proxy has exactly the intended servers, at their addresses, ready and up."""
    want = fleet.intent_servers()
    for node in PROXIES:
        deadline = time.monotonic() + timeout
        while True:
            servers = runtime_servers(node)
            got = {n: s["address"] for n, s in servers.items()}
            healthy = all(s["state"] == "ready" and s["health"] == "up" for s in servers.values())
            if got == want and healthy:
                break
            if time.monotonic() > deadline:
                brief = {n: {k: s[k] for k in ("address", "state", "health")} for n, s in servers.items()}
                raise AssertionError(f"{when}: {node} runs {json.dumps(brief)}; intent {want}")
            time.sleep(1)


def versions_now(fleet: Fleet, seconds: float = 2.0) -> dict[str, set]:
    """server -> versions answered through the VIP in the last ``seconds``."""
    since = time.monotonic() - seconds
    out: dict[str, set] = {}
    for r in lab.window(fleet.vip_traffic.completed(), since=since):
        if r.ok:
            out.setdefault(r.served_by, set()).add(r.version)
    return out


# --------------------------------------------------------------------------- tests

def test_baseline_all_servers_answer_version_1(fleet):
    fleet.watch.wait_single("fp7r-lb1", timeout=30)
    lab.dexec("fp7r-lb1", "true")
    for node in PROXIES:
        deadline = time.monotonic() + 30
        while not all(s["health"] == "up" for s in runtime_servers(node).values()):
            assert time.monotonic() < deadline, runtime_servers(node)
            time.sleep(1)
    fleet.t_start = time.monotonic()
    fleet.vip_traffic.start()
    fleet.lb2_traffic.start()
    time.sleep(3)
    assert versions_now(fleet, 2.5) == {"server1": {OLD}, "server2": {OLD}, "server3": {OLD}}
    assert lab.failures(fleet.vip_traffic.completed()) == []


def test_rolling_backend_change_upgrades_every_server(fleet):
    t0 = time.monotonic()
    lab.playbook(
        os.path.join(PROJECT_DIR, "playbooks", "rolling_backend_change.yml"),
        extra_vars={
            "fleetproxy_roll_hosts": "fp7r-app1:fp7r-app2:fp7r-app3",
            "fleetproxy_roll_tasks": os.path.join(SCENARIO_DIR, "tasks", "upgrade_backend.yml"),
            "fleet_app_new_version": NEW,
        },
    )
    took = time.monotonic() - t0
    time.sleep(2.5)
    assert versions_now(fleet, 2.0) == {"server1": {NEW}, "server2": {NEW}, "server3": {NEW}}
    # In turn: on the VIP holder, never two servers out of rotation at once, and each
    # one was out once.
    windows = {s: fleet.poller.out_of_rotation("fp7r-lb1", f"{BACKEND}/{s}") for s in ("server1", "server2", "server3")}
    for server, periods in windows.items():
        assert [p for p in periods if p[0] >= t0], f"{server} was never seen drained on fp7r-lb1"
    spans = sorted((a, b, s) for s, periods in windows.items() for a, b in periods if a >= t0)
    for (_a1, b1, s1), (a2, _b2, s2) in itertools.pairwise(spans):
        assert a2 >= b1, f"{s1} and {s2} were out of rotation together"
    REPORT.add(lab.Row("rolling_backend_change.yml, 3 servers", took, None,
                       failed=len(lab.failures(lab.window(fleet.vip_traffic.completed(), since=t0))),
                       requests=len(lab.window(fleet.vip_traffic.completed(), since=t0)),
                       note="playbook time; failed/requests through the VIP"))


def test_backend_module_replaces_a_server_one_proxy_at_a_time(fleet):
    t0 = time.monotonic()
    lab.playbook(os.path.join(SCENARIO_DIR, "replace_server.yml"), "-e", f"@{fleet.intent_file}")
    took = time.monotonic() - t0
    assert_runtime_is_intent(fleet, "after the replacement")
    time.sleep(2.5)
    assert versions_now(fleet, 2.0) == {"server1": {NEW}, "server2": {NEW}, "server4": {NEW}}
    # One proxy at a time: fp7r-lb2 got server4 only after fp7r-lb1 had removed server3.
    gone_lb1 = next(s.t1 for s in fleet.poller.samples["fp7r-lb1"]
                    if s.t0 >= t0 and f"{BACKEND}/server3" not in s.servers)
    added_lb2 = next(s.t0 for s in fleet.poller.samples["fp7r-lb2"]
                     if s.t0 >= t0 and f"{BACKEND}/server4" in s.servers)
    assert gone_lb1 <= added_lb2, "fp7r-lb2 changed before fp7r-lb1 had finished"
    REPORT.add(lab.Row("backend module: server3 -> server4", took, None,
                       failed=len(lab.failures(lab.window(fleet.vip_traffic.completed(), since=t0))),
                       requests=len(lab.window(fleet.vip_traffic.completed(), since=t0)),
                       note="playbook time, serial: 1"))


def test_reload_keeps_the_intent(fleet):
    # The configuration file still lists server3: the runtime changes live in the
    # state file and must survive the reload.
    for node in PROXIES:
        lab.dexec(node, "systemctl", "reload", "fleetproxy")
    assert_runtime_is_intent(fleet, "after systemctl reload (file not yet updated)")
    # The inventory follows: the role renders the new file and reloads.
    output = lab.playbook(os.path.join(PROJECT_DIR, "playbooks", "site.yml"), "--limit", "proxies",
                          "-e", f"@{fleet.intent_file}")
    assert "RUNNING HANDLER [fleetproxy.fleet.proxy : Reload fleetproxy]" in output
    assert_runtime_is_intent(fleet, "after the role rendered the intent and reloaded")
    time.sleep(2)


def test_whole_run_no_failure_no_drained_answer_all_new(fleet):
    vip = fleet.vip_traffic.stop()
    lb2 = fleet.lb2_traffic.stop()
    t_end = time.monotonic()
    assert fleet.watch.holders() == ["fp7r-lb1"]
    assert not [e for e in fleet.watch.events if e.t >= fleet.t_start], "the VIP moved during the run"
    violations = []
    for node, results in (("fp7r-lb1", vip), ("fp7r-lb2", lb2)):
        for server in ("server1", "server2", "server3", "server4"):
            for a, b in fleet.poller.out_of_rotation(node, f"{BACKEND}/{server}"):
                bad = [r for r in results if r.ok and r.served_by == server and a <= r.start <= b - 0.02]
                violations += [(node, server, r.seq, round(r.start - a, 3)) for r in bad]
    fails = lab.failures(vip) + lab.failures(lb2)
    REPORT.add(lab.Row("whole run", t_end - fleet.t_start, None, failed=len(fails), requests=len(vip) + len(lb2),
                       note=f"answers from drained servers: {len(violations)}; poll errors: {dict(fleet.poller.errors)}"))
    assert fails == [], [(r.seq, r.error) for r in fails][:20]
    assert violations == [], violations[:20]
    final = [r for r in vip if r.start >= t_end - 2]
    assert {r.served_by for r in final} == {"server1", "server2", "server4"}
    assert {r.version for r in final} == {NEW}


def test_restart_keeps_the_intent(fleet):
    for node in PROXIES:
        lab.dexec(node, "systemctl", "restart", "fleetproxy")
    assert_runtime_is_intent(fleet, "after systemctl restart")
    fleet.watch.wait_single("fp7r-lb1", timeout=30)
