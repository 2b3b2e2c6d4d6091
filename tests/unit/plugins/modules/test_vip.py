"""fleetproxy.fleet.vip: in a network namespace of its own (root), on a veth pair.

The module runs inside the namespace (``ip netns exec``) the way Ansible runs it; a
raw AF_PACKET socket on the veth peer captures the gratuitous ARP it sends.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import harness
from harness import load_module, run_module

HARNESS = os.path.abspath(harness.__file__)
VIP = '198.18.0.100'


def _ip(*args, check=True):
    return subprocess.run(['ip'] + list(args), capture_output=True, text=True, timeout=30, check=check)


def _root_reason():
    if os.geteuid() != 0:
        return 'needs root (network namespaces, AF_PACKET); run the module tests as root'
    if shutil.which('ip') is None:
        return 'needs the ip command (iproute2)'
    probe = 'fpm-probe-%d' % os.getpid()
    made = _ip('netns', 'add', probe, check=False)
    if made.returncode != 0:
        return 'cannot create a network namespace here: %s' % made.stderr.strip()
    _ip('netns', 'del', probe, check=False)
    return None


class Namespace:
    def __init__(self):
        self.name = 'fpm-vip-%d' % os.getpid()
        self.a, self.b = 'fpmva%d' % (os.getpid() % 10000), 'fpmvb%d' % (os.getpid() % 10000)
        _ip('netns', 'add', self.name)
        try:
            _ip('-n', self.name, 'link', 'set', 'lo', 'up')
            _ip('-n', self.name, 'link', 'add', self.a, 'type', 'veth', 'peer', 'name', self.b)
            _ip('-n', self.name, 'link', 'set', self.a, 'up')
            _ip('-n', self.name, 'link', 'set', self.b, 'up')
            _ip('-n', self.name, 'addr', 'add', '198.18.0.1/24', 'dev', self.a)
        except Exception:
            self.delete()
            raise

    def delete(self):
        _ip('netns', 'del', self.name, check=False)

    def exec(self, *argv, **kwargs):
        return subprocess.run(['ip', 'netns', 'exec', self.name] + list(argv), check=kwargs.pop('check', False), **kwargs)

    def addresses(self, ifname=None, version=4):
        out = _ip('-n', self.name, '-j', '-%d' % version, 'addr', 'show', 'dev', ifname or self.a).stdout
        return ['%s/%s' % (a['local'], a['prefixlen']) for link in json.loads(out) for a in link['addr_info']
                if a.get('scope') != 'link']

    def mac(self, ifname=None):
        out = _ip('-n', self.name, '-j', 'link', 'show', 'dev', ifname or self.a).stdout
        return json.loads(out)[0]['address']

    def run(self, args, check_mode=False, diff=False):
        argv = [sys.executable, HARNESS, 'run', 'vip', json.dumps(args)]
        argv += ['--check'] if check_mode else []
        argv += ['--diff'] if diff else []
        done = self.exec(*argv, capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def capture(self, seconds=4.0, count=10):
        proc = subprocess.Popen(['ip', 'netns', 'exec', self.name, sys.executable, HARNESS, 'capture', self.b,
                                 str(seconds), str(count)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()
        return proc


def frames(proc):
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    parse = importlib.import_module(harness.COLLECTION + '.plugins.module_utils.netlink').parse_arp
    return [dict(parse(bytes.fromhex(json.loads(line)['hex'])), at=json.loads(line)['at'])
            for line in out.splitlines() if line.strip()]


@pytest.fixture
def ns():
    reason = _root_reason()
    if reason:
        pytest.skip(reason)
    space = Namespace()
    yield space
    space.delete()


def test_add_announces_then_is_idempotent(ns):
    cap = ns.capture(seconds=4, count=3)
    start = time.monotonic()
    r = ns.run({'address': VIP + '/24', 'interface': ns.a, 'garp_interval': 0.1}, diff=True)
    assert not r.get('failed'), r
    assert r['changed'] is True and r['garp_sent'] == 3
    assert r['address'] == VIP + '/24' and VIP + '/24' in r['addresses']
    assert ns.addresses() == ['198.18.0.1/24', VIP + '/24']
    assert r['diff']['before'] == '198.18.0.1/24\n'
    assert r['diff']['after'] == '198.18.0.1/24\n%s/24\n' % VIP
    seen = frames(cap)
    mac = ns.mac()
    assert len(seen) == 3, seen
    for f in seen:
        assert (f['op'], f['spa'], f['tpa'], f['sha'], f['src'], f['dst']) == (1, VIP, VIP, mac, mac, 'ff:ff:ff:ff:ff:ff')
    assert seen[0]['at'] - start < 5 and seen[2]['at'] - seen[0]['at'] >= 0.15

    cap = ns.capture(seconds=1.0, count=1)
    again = ns.run({'address': VIP + '/24', 'interface': ns.a}, diff=True)
    assert again['changed'] is False and again['garp_sent'] == 0
    assert again['diff']['before'] == again['diff']['after']
    assert frames(cap) == [], 'an unchanged address must not be announced again'


def test_check_mode_changes_nothing(ns):
    cap = ns.capture(seconds=1.0, count=1)
    r = ns.run({'address': VIP, 'interface': ns.a}, check_mode=True, diff=True)
    assert r['changed'] is True and r['garp_sent'] == 0
    assert r['addresses'] == ['198.18.0.1/24', VIP + '/32']
    assert ns.addresses() == ['198.18.0.1/24']
    assert frames(cap) == []
    r = ns.run({'address': '198.18.0.1/24', 'interface': ns.a, 'state': 'absent'}, check_mode=True)
    assert r['changed'] is True and ns.addresses() == ['198.18.0.1/24']


def test_prefix_change_and_absent(ns):
    assert ns.run({'address': VIP + '/32', 'interface': ns.a, 'garp_count': 0})['changed'] is True
    r = ns.run({'address': VIP + '/24', 'interface': ns.a, 'garp_count': 1})
    assert r['changed'] is True and r['garp_sent'] == 1
    assert ns.addresses() == ['198.18.0.1/24', VIP + '/24']
    r = ns.run({'address': VIP, 'interface': ns.a, 'state': 'absent'}, diff=True)
    assert r['changed'] is True and ns.addresses() == ['198.18.0.1/24']
    assert ns.run({'address': VIP, 'interface': ns.a, 'state': 'absent'})['changed'] is False


def test_down_interface_ipv6_and_errors(ns):
    _ip('-n', ns.name, 'link', 'set', ns.b, 'down')  # the peer down: a's carrier is gone
    _ip('-n', ns.name, 'link', 'set', ns.a, 'down')
    r = ns.run({'address': VIP, 'interface': ns.a})
    assert r['changed'] is True and r['garp_sent'] == 0
    assert 'interface is down' in json.dumps(r.get('warnings')), r.get('warnings')
    assert VIP + '/32' in ns.addresses()

    _ip('-n', ns.name, 'link', 'set', ns.a, 'up')
    r = ns.run({'address': '2001:2::100/64', 'interface': ns.a})
    assert r['changed'] is True and r['garp_sent'] == 0
    assert '2001:2::100/64' in ns.addresses(version=6)
    flags = _ip('-n', ns.name, '-6', 'addr', 'show', 'dev', ns.a).stdout
    assert 'tentative' not in flags, flags
    assert ns.run({'address': '2001:2::100/64', 'interface': ns.a})['changed'] is False

    r = ns.run({'address': VIP, 'interface': 'fpmnone0'})
    assert r['failed'] is True and 'no interface named fpmnone0' in r['msg']
    r = ns.run({'address': '198.18.0.300', 'interface': ns.a})
    assert r['failed'] is True and r['msg'].startswith('address:')


def test_missing_pyroute2_fails_clearly(monkeypatch):
    vip = load_module('vip')
    monkeypatch.setattr(vip, 'HAS_PYROUTE2', False)
    monkeypatch.setattr(vip, 'PYROUTE2_IMPORT_ERROR', 'Traceback: No module named pyroute2')
    r = run_module('vip', {'address': VIP, 'interface': 'eth0'})
    assert r['failed'] is True
    assert 'Failed to import the required Python library (pyroute2)' in r['msg'], r['msg']
