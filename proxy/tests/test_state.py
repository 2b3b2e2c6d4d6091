"""Runtime changes survive reloads and restarts through global.state_file."""

from __future__ import annotations

import copy
import json
import os
from collections import Counter

import yaml
from proxytest.configs import http_config, server
from proxytest.control import Api, distribution, wait_until, with_admin


def _snapshot(api: Api) -> dict[str, tuple]:
    return {
        s["name"]: (s["state"], s["weight"], s["admin_weight"], s["health"], s["check"]["enabled"], s["address"])
        for s in api.get("/v1/backends/be/servers")
    }


def _state_file(adm) -> dict:
    """The state file's record ({} while it is missing or not JSON)."""
    try:
        with open(adm.state_file) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _restart(proxy, p, cfg):
    assert p.stop() == 0
    return proxy(cfg)


def test_state_kept_across_reload_and_restart(proxy, backend, port, tmp_path):
    b1, b2, b3, b4 = (backend(f"b{i}") for i in range(1, 5))
    cfg = http_config(port(), [server("s1", b1), server("s2", b2, weight=4), server("s3", b3),
                               server("s4", b4, check=True, inter="200ms")])
    adm = with_admin(cfg, tmp_path, state_file=True)
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s4", "up", 5)
    api.patch("be", "s1", state="drain")
    api.patch("be", "s2", weight=2)
    api.patch("be", "s3", state="maint")
    api.patch("be", "s4", check="disabled")
    expected = _snapshot(api)
    assert expected["s1"][0] == "drain" and expected["s2"][1] == 2 and expected["s3"][0] == "maint"
    assert expected["s4"][4] is False
    assert wait_until(lambda: _state_file(adm).get("servers", {}).get("be", {}).get("s3", {}).get("state")
                      == "maint", 2)
    record = _state_file(adm)
    assert record["servers"]["be"]["s2"]["weight"] == 2 and record["servers"]["be"]["s1"]["state"] == "drain"
    assert not [f for f in os.listdir(os.path.dirname(adm.state_file)) if f.startswith(".state-")]

    status, _ = api.call("POST", "/v1/reload")
    assert status == 200
    assert _snapshot(api) == expected

    p = _restart(proxy, p, cfg)
    assert _snapshot(api) == expected
    assert distribution(p.port(), 30) == Counter({"b2": 20, "b4": 10})  # drain/maint take nothing
    assert api.server("be", "s4")["check"]["status"] in (None, "INI")  # checks stayed off


def test_changed_definition_takes_the_config_values(proxy, backend, port, tmp_path):
    b1, b2, b3, b4 = (backend(f"b{i}") for i in range(1, 5))
    cfg = http_config(port(), [server("s1", b1), server("s2", b2), server("s3", b3)])
    adm = with_admin(cfg, tmp_path, state_file=True)
    p = proxy(cfg)
    api = Api(adm.socket)

    def change_all() -> None:
        api.patch("be", "s1", weight=5)
        api.patch("be", "s2", state="drain")
        api.patch("be", "s3", state="maint")

    change_all()
    new = copy.deepcopy(cfg)
    new["backends"][0]["servers"][0]["weight"] = 3  # s1: new weight
    new["backends"][0]["servers"][1]["address"] = b4.address  # s2: new address
    p.path.write_text(yaml.safe_dump(new, sort_keys=False))
    assert api.call("POST", "/v1/reload")[0] == 200
    snap = _snapshot(api)
    assert snap["s1"][:3] == ("ready", 3, 3)
    assert snap["s2"][0] == "ready" and snap["s2"][5] == b4.address
    assert snap["s3"][0] == "maint"  # unchanged definition: keeps its runtime state

    # The same through a restart with the state file.
    p.path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert api.call("POST", "/v1/reload")[0] == 200
    change_all()
    assert wait_until(lambda: _state_file(adm)["servers"]["be"]["s1"]["weight"] == 5, 2)
    assert p.stop() == 0
    p = proxy(new)
    snap = _snapshot(api)
    assert snap["s1"][:3] == ("ready", 3, 3) and snap["s2"][0] == "ready" and snap["s3"][0] == "maint"
    assert set(distribution(p.port(), 8)) == {"b1", "b4"}


def test_runtime_added_and_deleted_servers_survive_reload_and_restart(proxy, backend, port, tmp_path):
    b1, b2, b3 = backend("b1"), backend("b2"), backend("b3")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)])
    adm = with_admin(cfg, tmp_path, state_file=True)
    p = proxy(cfg)
    api = Api(adm.socket)
    status, _body = api.call("POST", "/v1/backends/be/servers",
                            {"name": "s9", "address": b3.address, "weight": 3, "check": True, "inter": "200ms",
                             "rise": 1})
    assert status == 201
    api.wait_health("be", "s9", "up", 3)
    api.patch("be", "s2", state="maint")
    assert api.call("DELETE", "/v1/backends/be/servers/s2")[0] == 204

    def check() -> None:
        servers = {s["name"]: s for s in api.get("/v1/backends/be/servers")}
        assert sorted(servers) == ["s1", "s9"], servers
        s9 = servers["s9"]
        assert s9["address"] == b3.address and s9["weight"] == 3 and s9["check"]["inter_ms"] == 200

    assert api.call("POST", "/v1/reload")[0] == 200
    check()
    assert wait_until(lambda: "s9" in _state_file(adm)["added"].get("be", {}), 2)
    p = _restart(proxy, p, cfg)
    check()
    api.wait_health("be", "s9", "up", 3)  # a checked server starts down, then its check brings it up
    assert distribution(p.port(), 8) == Counter({"b3": 6, "b1": 2})

    # The configuration now defines s9 (and s2 differently): the configuration wins.
    new = copy.deepcopy(cfg)
    new["backends"][0]["servers"][1]["weight"] = 2  # s2 redefined: back
    new["backends"][0]["servers"].append(server("s9", b1))
    p.path.write_text(yaml.safe_dump(new, sort_keys=False))
    assert api.call("POST", "/v1/reload")[0] == 200
    servers = {s["name"]: s for s in api.get("/v1/backends/be/servers")}
    assert sorted(servers) == ["s1", "s2", "s9"]
    assert servers["s9"]["address"] == b1.address and servers["s9"]["check"]["configured"] is False
    assert servers["s2"]["state"] == "ready" and servers["s2"]["weight"] == 2
    assert wait_until(lambda: not _state_file(adm)["added"].get("be"), 2), _state_file(adm)


def test_unreadable_state_file_is_ignored(proxy, backend, port, tmp_path):
    b1 = backend("b1")
    cfg = http_config(port(), [server("s1", b1, weight=7)])
    adm = with_admin(cfg, tmp_path, state_file=True)
    os.makedirs(os.path.dirname(adm.state_file), exist_ok=True)
    with open(adm.state_file, "w") as f:
        f.write("{not json")
    p = proxy(cfg)
    api = Api(adm.socket)
    assert api.server("be", "s1")["weight"] == 7
    assert "ignoring unreadable state file" in p.stderr()
    api.patch("be", "s1", state="drain")
    assert wait_until(lambda: _state_file(adm).get("servers", {}).get("be", {}).get("s1", {}).get("state") == "drain", 2)
    # A state file of another format version is ignored too.
    assert p.stop() == 0
    assert _state_file(adm)["servers"]["be"]["s1"]["state"] == "drain"  # saved on stop
    with open(adm.state_file, "w") as f:
        json.dump({"version": 99, "servers": {"be": {"s1": {"state": "maint"}}}}, f)
    p = proxy(cfg)
    assert api.server("be", "s1")["state"] == "ready"
    assert "unknown format" in p.stderr()
