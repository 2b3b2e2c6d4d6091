"""vrrp.yml: defaults, errors that name the key path, ``fleetproxy vrrp check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetproxy.cli import main as fleetproxy_main
from fleetproxy.config import ConfigError
from fleetproxy.vrrp.config import file_warnings, loads, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vrrp.yml"


def minimal(**kw):
    inst = {"name": "v", "interface": "eth0", "vrid": 51, "virtual_ips": ["198.18.30.100/24"]}
    inst.update(kw)
    return {"instances": [inst]}


def errors(doc) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse(doc)
    return exc.value.lines()


def test_defaults():
    inst = parse(minimal()).instances[0]
    assert inst.priority == 100 and inst.advert_interval == 1.0 and inst.advert_interval_cs == 100
    assert inst.preempt is True and inst.preempt_delay == 0.0
    assert inst.unicast_peers == [] and inst.auth is None
    assert (inst.garp.repeat, inst.garp.delay, inst.garp.refresh) == (5, 5.0, 0.0)
    assert inst.virtual_ips == ["198.18.30.100/24"]
    assert parse(minimal(virtual_ips=["198.18.30.7"])).instances[0].virtual_ips == ["198.18.30.7/32"]


def test_example_is_valid_and_matches_the_contract():
    cfg = loads(EXAMPLE.read_text())
    inst = cfg.instances[0]
    assert (inst.name, inst.vrid, inst.priority, inst.advert_interval_cs) == ("web_vip", 51, 150, 10)
    kinds = [t.kind for t in inst.track]
    assert kinds == ["proxy", "tcp", "exec", "interface"]
    tcp = inst.track[1]
    assert (tcp.interval, tcp.fall, tcp.rise, tcp.weight) == (0.2, 2, 2, -60)
    assert inst.track[0].weight == 0 and inst.track[0].interval == 0.2


def test_check_command(capsys):
    assert fleetproxy_main(["vrrp", "check", "-c", str(EXAMPLE)]) == 0
    assert "configuration is valid" in capsys.readouterr().out


def test_check_command_reports_key_paths(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("instances:\n  - {name: a, interface: eth0, vrid: 0, virtual_ips: ['198.18.0.1/24']}\n")
    assert fleetproxy_main(["vrrp", "check", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "instances[0].vrid: Input should be greater than or equal to 1" in err


@pytest.mark.parametrize(
    "doc, expected",
    [
        (minimal(vrid=256), "instances[0].vrid: Input should be less than or equal to 255"),
        (minimal(priority=0), "instances[0].priority: Input should be greater than or equal to 1"),
        (minimal(advert_interval="5ms"), "instances[0].advert_interval: advert_interval must be between 10ms and 40.95s"),
        (minimal(advert_interval="41s"), "instances[0].advert_interval: advert_interval must be between 10ms and 40.95s"),
        (minimal(advert_interval="105ms"), "instances[0].advert_interval: advert_interval 0.105s is not a whole number"),
        (minimal(virtual_ips=["2001:db8::1/64"]), "instances[0].virtual_ips: '2001:db8::1/64': only IPv4"),
        (minimal(virtual_ips=["198.18.0.300/24"]), "instances[0].virtual_ips: invalid virtual IP"),
        (minimal(virtual_ips=[]), "instances[0].virtual_ips: List should have at least 1 item"),
        (minimal(unicast_peers=["peer"]), "instances[0].unicast_peers: invalid unicast peer 'peer'"),
        (minimal(track=[{"tcp": "127.0.0.1:80", "exec": "/bin/true"}]), "instances[0].track[0]: set exactly one of proxy, tcp, exec, interface (got tcp, exec)"),
        (minimal(track=[{"weight": 10}]), "instances[0].track[0]: set exactly one"),
        (minimal(track=[{"tcp": "localhost"}]), "instances[0].track[0].tcp: invalid tcp address 'localhost': missing ':port'"),
        (minimal(track=[{"exec": "check-uplink"}]), "instances[0].track[0].exec: the command must start with an absolute path"),
        (minimal(track=[{"proxy": "admin.sock"}]), "instances[0].track[0].proxy: proxy must be the absolute path"),
        (minimal(track=[{"tcp": "127.0.0.1:80", "weight": 300}]), "instances[0].track[0].weight: Input should be less than or equal to 254"),
        (minimal(track=[{"interface": "eth1", "interval": "1s"}]), "instances[0].track[0]: interface tracking follows link events"),
        (minimal(garp={"repeat": 0}), "instances[0].garp.repeat: Input should be greater than or equal to 1"),
        (minimal(notify={"master": "hook"}), "instances[0].notify.master: the command must start with an absolute path"),
        (minimal(auth={"hmac_key_file": "/nonexistent/fpv.key"}), "instances[0].auth.hmac_key_file: cannot read /nonexistent/fpv.key"),
        (minimal(bogus=1), "instances[0].bogus: unknown key"),
        (minimal(unicast_src="198.18.0.1"), "instances[0].unicast_src: unicast_src needs unicast_peers"),
        (minimal(priority=255, track=[{"tcp": "127.0.0.1:80", "weight": -10}]), "instances[0].track: the address owner"),
        ({"instances": []}, "instances: List should have at least 1 item"),
        ({"instance": []}, "instance: unknown key"),
    ],
)
def test_errors_name_the_key_path(doc, expected):
    lines = errors(doc)
    assert any(line.startswith(expected) for line in lines), lines


def test_duplicates_across_instances():
    a = minimal()["instances"][0]
    doc = {"instances": [a, dict(a)]}
    lines = errors(doc)
    assert "instances[1].name: duplicate instance name 'v' (first at instances[0])" in lines
    assert any(line.startswith("instances[1].vrid: vrid 51 on eth0 is already used") for line in lines)
    assert any(line.startswith("instances[1].virtual_ips[0]: 198.18.30.100 is also a virtual IP") for line in lines)


def test_hmac_key_file(tmp_path):
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    assert any("use at least 16" in e for e in errors(minimal(auth={"hmac_key_file": str(short)})))
    good = tmp_path / "good.key"
    good.write_text("0123456789abcdef0123456789abcdef\n")
    inst = parse(minimal(auth={"hmac_key_file": str(good)})).instances[0]
    assert inst.hmac_key == b"0123456789abcdef0123456789abcdef"


def test_tracking_defaults():
    inst = parse(minimal(track=[{"tcp": "127.0.0.1:80"}, {"exec": "/bin/true"}, {"interface": "eth1"}])).instances[0]
    tcp, ex, iface = inst.track
    assert (tcp.interval, tcp.timeout, tcp.fall, tcp.rise, tcp.weight) == (0.2, 0.2, 2, 2, 0)
    assert (ex.interval, ex.timeout, ex.fall, ex.rise) == (1.0, 1.0, 1, 1)
    assert (iface.fall, iface.rise) == (1, 1)


def test_missing_scripts_are_warnings():
    cfg = parse(minimal(track=[{"exec": "/nonexistent/check"}], notify={"master": "/nonexistent/hook x"}))
    w = file_warnings(cfg)
    assert ("instances[0].track[0].exec", "/nonexistent/check is not an executable file") in w
    assert ("instances[0].notify.master", "/nonexistent/hook is not an executable file") in w
    assert file_warnings(parse(minimal(track=[{"exec": "/bin/true"}]))) == []


def test_yaml_errors_have_a_line():
    with pytest.raises(ConfigError) as exc:
        loads("instances: [\n")
    assert "line" in exc.value.lines()[0]
