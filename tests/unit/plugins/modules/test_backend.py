"""fleetproxy.fleet.backend against a real proxy."""

from __future__ import annotations

import json
import time

import pytest

from harness import SlowRequest, Traffic, free_port, run_module, server_def

CHECK = {'check': True, 'inter': '100ms', 'rise': 1, 'fall': 1}


def be(proxy, servers, **args):
    args.setdefault('name', 'app')
    args.setdefault('socket', proxy.socket)
    args.setdefault('wait_timeout', 20)
    check_mode = args.pop('check_mode', False)
    diff = args.pop('diff', False)
    args['servers'] = servers
    return run_module('backend', args, check_mode=check_mode, diff=diff)


def srv(name, backend, **extra):
    out = dict(name=name, address=backend.address if hasattr(backend, 'address') else backend)
    out.update(CHECK)
    out.update(extra)
    return out


def names(proxy):
    return [s['name'] for s in proxy.servers()]


@pytest.fixture
def three(backends, proxy_factory):
    b1, b2, b3 = backends(3)
    proxy = proxy_factory([server_def('s1', b1.address, **CHECK), server_def('s2', b2.address, **CHECK)])
    proxy.wait_health('s1')
    proxy.wait_health('s2')
    proxy.b1, proxy.b2, proxy.b3 = b1, b2, b3
    return proxy


def test_check_mode_reports_the_plan_and_changes_nothing(shared):
    new = '127.0.0.1:%d' % free_port()
    want = [srv('s1', shared.b1, weight=5), srv('s2', shared.b2), srv('s4', new)]
    r = be(shared, want, check_mode=True, diff=True)
    assert not r.get('failed'), r
    assert r['changed'] is True
    assert r['plan'] == {'add': ['s4'], 'replace': [], 'remove': ['s3'], 'update': {'s1': {'weight': 5}}}
    before, after = r['diff']['before']['servers'], r['diff']['after']['servers']
    assert sorted(before) == ['s1', 's2', 's3'] and sorted(after) == ['s1', 's2', 's4']
    assert before['s1']['weight'] == 1 and after['s1']['weight'] == 5
    assert after['s4'] == {'address': new, 'backup': False, 'weight': 'default', 'state': 'ready'}
    assert names(shared) == ['s1', 's2', 's3']
    assert [s['admin_weight'] for s in shared.servers()] == [1, 1, 200]
    assert r['waited'] == 0


def test_apply_under_traffic_then_idempotent(three):
    want = [srv('s1', three.b1, weight=5), srv('s3', three.b3, weight=5)]
    with Traffic(three) as traffic:
        r = be(three, want, diff=True)
        assert not r.get('failed'), r
        assert r['changed'] is True
        assert r['plan'] == {'add': ['s3'], 'replace': [], 'remove': ['s2'], 'update': {'s1': {'weight': 5}}}
        assert [(s['name'], s['admin_weight'], s['health']) for s in r['servers']] == [('s1', 5, 'up'), ('s3', 5, 'up')]
        hits_b2 = three.b2.hits
        ok = traffic.ok
        for dummy in range(2):
            again = be(three, want, diff=True)
            assert not again.get('failed'), again
            assert again['changed'] is False, again['plan']
            assert again['plan'] == {'add': [], 'replace': [], 'remove': [], 'update': {}}
            assert again['diff']['before'] == again['diff']['after']
        deadline = time.monotonic() + 10
        while traffic.ok < ok + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert traffic.failed == [], traffic.failed[:5]
    assert traffic.ok >= ok + 20
    assert three.b2.hits == hits_b2, 'the removed server still got requests'
    assert traffic.served.get('b3', 0) > 0, traffic.served
    assert names(three) == ['s1', 's3']


def test_result_survives_reload_and_restart(three):
    want = [srv('s1', three.b1, weight=3), srv('s3', three.b3, weight=2, state='drain')]
    r = be(three, want)
    assert not r.get('failed'), r
    expected = [('s1', 'ready', 3), ('s3', 'drain', 2)]

    def state():
        return [(s['name'], s['state'], s['admin_weight']) for s in three.servers()]

    assert state() == expected
    time.sleep(0.3)  # the state file is written 100 ms after a change
    three.reload()
    assert state() == expected
    three.restart()
    assert state() == expected
    again = be(three, want)
    assert again['changed'] is False, again['plan']


def test_removal_waits_for_the_last_session(three):
    three.patch('s1', state='maint')
    slow = SlowRequest(three, 2.0)
    three.wait_sessions('s2', 1)
    three.patch('s1', state='ready')
    r = be(three, [srv('s1', three.b1)])
    returned = time.monotonic()
    assert not r.get('failed'), r
    assert r['plan']['remove'] == ['s2']
    assert slow.join() == (200, 'b2'), 'the session of the removed server was cut'
    assert slow.done_at < returned, 'the server was removed before its last session ended'
    assert r['waited'] > 0
    assert names(three) == ['s1']


def test_removal_timeout_fails_or_shuts_sessions_down(three):
    three.patch('s1', state='maint')
    slow = SlowRequest(three, 25)
    three.wait_sessions('s2', 1)
    three.patch('s1', state='ready')
    try:
        r = be(three, [srv('s1', three.b1)], wait_timeout=1)
        assert r['failed'] is True and r['changed'] is True
        assert 'still busy after 1s draining: s2 (1 sessions)' in r['msg'], r['msg']
        assert names(three) == ['s1', 's2'] and three.server('s2')['state'] == 'drain'

        r = be(three, [srv('s1', three.b1)], wait_timeout=1, shutdown_sessions=True)
        assert not r.get('failed'), r
        assert r['changed'] is True and r['sessions_killed'] == 1
        assert names(three) == ['s1']
        assert slow.join(10) != (200, 'b2')
    finally:
        three.b2.release()


def test_new_server_that_never_comes_up_removes_nothing(three):
    dead = '127.0.0.1:%d' % free_port()
    r = be(three, [srv('s1', three.b1), srv('s3', dead)], wait_timeout=1)
    assert r['failed'] is True and r['changed'] is True
    assert 'still down after 1s: s3 (L4CON' in r['msg'], r['msg']
    assert names(three) == ['s1', 's2', 's3'], 's2 must stay until the new server is up'
    assert three.server('s2')['state'] == 'ready'


def test_no_wait_adds_a_server_that_is_down(three):
    dead = '127.0.0.1:%d' % free_port()
    r = be(three, [srv('s1', three.b1), srv('s2', three.b2), srv('s3', dead)], wait=False)
    assert not r.get('failed'), r
    assert r['changed'] is True and r['plan']['add'] == ['s3']
    assert names(three) == ['s1', 's2', 's3']


def test_replace_under_the_same_name(three):
    want = [srv('s1', three.b1), srv('s2', three.b3)]
    with Traffic(three) as traffic:
        r = be(three, want, diff=True)
        assert not r.get('failed'), r
        assert r['plan']['replace'] == ['s2']
        assert r['replace_reasons'] == {'s2': ['address %s -> %s' % (three.b2.address, three.b3.address)]}
        assert 'replacing s2 under the same name' in json.dumps(r.get('warnings')), r.get('warnings')
        assert three.server('s2')['address'] == three.b3.address
        three.wait_health('s2')
        seen = traffic.served.get('b3', 0)
        deadline = time.monotonic() + 10
        while traffic.served.get('b3', 0) <= seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert be(three, want)['changed'] is False
    assert traffic.failed == [], traffic.failed[:5]
    assert traffic.served.get('b3', 0) > seen


def test_states_and_backup(three):
    r = be(three, [srv('s1', three.b1, state='maint'), srv('s2', three.b2),
                   srv('s3', three.b3, state='maint', backup=True)])
    assert not r.get('failed'), r
    assert r['plan'] == {'add': ['s3'], 'replace': [], 'remove': [], 'update': {'s1': {'state': 'maint'}}}
    views = dict((s['name'], s) for s in three.servers())
    assert views['s1']['state'] == 'maint'
    assert views['s3']['state'] == 'maint' and views['s3']['backup'] is True
    assert views['s3']['sessions']['total'] == 0
    # backup left out means false: s3 gets replaced; a state left out is left alone.
    r = be(three, [srv('s1', three.b1), srv('s2', three.b2), srv('s3', three.b3, state='maint')], check_mode=True)
    assert r['plan']['replace'] == ['s3'] and r['plan']['update'] == {}
    assert r['replace_reasons']['s3'] == ['backup True -> False']


def test_host_names_compare_by_address(shared):
    want = [srv('s1', 'localhost:%d' % shared.b1.port), srv('s2', shared.b2),
            dict(name='s3', address='localhost:%d' % shared.b2.port, weight=200)]
    r = be(shared, want, check_mode=True)
    assert r['changed'] is False, r['plan']


@pytest.mark.parametrize('servers, words', [
    ([dict(name='s1', address='127.0.0.1:1'), dict(name='s1', address='127.0.0.1:2')], "duplicate server name 's1'"),
    ([dict(name='bad name', address='127.0.0.1:1')], 'servers[0].name: invalid name'),
    ([dict(name='s1', address='127.0.0.1')], "servers[0].address: invalid address '127.0.0.1': missing ':port'"),
    ([dict(name='s1', address='127.0.0.1:70000')], 'out of range (1-65535)'),
    ([dict(name='s1', address='127.0.0.1:80', weight=300)], 'servers[0].weight: 300 out of range (0-256)'),
    ([dict(name='s1', address='127.0.0.1:80', inter='2 weeks')], "servers[0].inter: invalid duration '2 weeks'"),
    ([dict(name='s1', address='127.0.0.1:80', rise=0)], 'servers[0].rise: 0 out of range'),
    ([dict(name='s1', address='127.0.0.1:80', cookie='a b')], 'servers[0].cookie'),
    ([dict(name='s1', address='127.0.0.1:80', colour='red')], 'colour'),
])
def test_bad_servers_fail_before_any_change(shared, servers, words):
    r = be(shared, servers)
    assert r['failed'] is True and words in r['msg'], r['msg']
    assert r.get('changed') is not True
    assert names(shared) == ['s1', 's2', 's3']


def test_unknown_backend_and_no_proxy(shared, tmp_path):
    r = be(shared, [srv('s1', shared.b1)], name='nope')
    assert r['failed'] is True and "no backend named 'nope'" in r['msg']
    r = be(shared, [srv('s1', shared.b1)], socket=str(tmp_path / 'none.sock'))
    assert r['failed'] is True and 'is fleetproxy running' in r['msg']


def test_proxy_refusal_is_reported(backends, proxy_factory):
    """What only the proxy can check (here: a cookie value used twice) fails cleanly."""
    b1, b2 = backends(2)
    proxy = proxy_factory([server_def('s1', b1.address, cookie='c1')],
                          extra_backends=())
    proxy.config['backends'][0]['cookie'] = {'name': 'SRV'}
    proxy.write_config()
    proxy.reload()
    r = be(proxy, [srv('s1', b1, cookie='c1'), srv('s2', b2, cookie='c1')])
    assert r['failed'] is True, r
    assert "cookie value 'c1' is already used" in r['msg'], r['msg']
    assert r.get('status') == 409
