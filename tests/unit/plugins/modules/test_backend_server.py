"""fleetproxy.fleet.backend_server against a real proxy."""

from __future__ import annotations

import os
import socket
import threading
import time
from harness import Backend, SlowRequest, Traffic, run_module


def bs(proxy, **args):
    args.setdefault('backend', 'app')
    args.setdefault('socket', proxy.socket)
    check_mode = args.pop('check_mode', False)
    diff = args.pop('diff', False)
    return run_module('backend_server', args, check_mode=check_mode, diff=diff)


def admin(view):
    return view['state'], view['admin_weight']


def test_drain_then_again_is_unchanged(two):
    r = bs(two, name='s1', state='drain', diff=True)
    assert not r.get('failed'), r
    assert r['changed'] is True
    assert r['before'] == {'state': 'ready', 'weight': 1}
    assert r['after'] == {'state': 'drain', 'weight': 1}
    assert r['diff']['before'] == {'state': 'ready', 'weight': 1}
    assert r['diff']['after'] == {'state': 'drain', 'weight': 1}
    assert r['server']['state'] == 'drain'
    assert admin(two.server('s1')) == ('drain', 1)

    again = bs(two, name='s1', state='drain', diff=True)
    assert again['changed'] is False
    assert again['diff']['before'] == again['diff']['after']
    assert admin(two.server('s1')) == ('drain', 1)


def test_check_mode_reports_and_changes_nothing(shared):
    r = bs(shared, name='s2', state='maint', weight='7', check_mode=True, diff=True)
    assert r['changed'] is True
    assert r['diff']['after'] == {'state': 'maint', 'weight': 7}
    assert r['after'] == {'state': 'maint', 'weight': 7}
    assert admin(shared.server('s2')) == ('ready', 1)
    # Nothing to do: check mode says so too.
    r = bs(shared, name='s2', state='ready', weight='1', check_mode=True)
    assert r['changed'] is False


def test_weight_absolute_and_percent(backends, proxy_factory):
    (b1,) = backends(1)
    proxy = proxy_factory([{'name': 's1', 'address': b1.address, 'weight': 10}])
    r = bs(proxy, name='s1', weight='50%', diff=True)
    assert r['changed'] is True and r['after'] == {'state': 'ready', 'weight': 5}
    assert admin(proxy.server('s1')) == ('ready', 5)
    # 50% of the configured weight is still 5: nothing to do.
    assert bs(proxy, name='s1', weight='50%')['changed'] is False
    assert bs(proxy, name='s1', weight='5')['changed'] is False
    # An integer from YAML arrives as an int.
    r = bs(proxy, name='s1', weight=12)
    assert r['changed'] is True and admin(proxy.server('s1')) == ('ready', 12)
    assert not r.get('warnings'), r.get('warnings')
    assert bs(proxy, name='s1', weight=12)['changed'] is False
    r = bs(proxy, name='s1', weight='0')
    assert r['changed'] is True and admin(proxy.server('s1')) == ('ready', 0)
    assert proxy.server('s1')['usable'] is False


def test_bad_weight_fails_before_any_change(shared):
    for weight, words in (('300', 'out of range'), ('-1', 'out of range'), ('abc', 'invalid weight'),
                          ('50%%', 'invalid weight'), ('200%', 'weight 200% of configured weight 200 is 400')):
        r = bs(shared, name='s3', state='drain', weight=weight)
        assert r.get('failed') is True, (weight, r)
        assert words in r['msg'], (weight, r['msg'])
        assert r.get('changed') is not True
        assert admin(shared.server('s3')) == ('ready', 200), weight


def test_unknown_backend_and_server(shared):
    r = bs(shared, backend='nope', name='s1', state='drain')
    assert r['failed'] is True and "no backend named 'nope'" in r['msg'], r
    r = bs(shared, name='s9', state='drain')
    assert r['failed'] is True and "no server named 's9' in backend 'app'" in r['msg'], r
    assert r.get('status') == 404


def test_proxy_not_running(tmp_path):
    missing = str(tmp_path / 'admin.sock')
    r = run_module('backend_server', {'backend': 'app', 'name': 's1', 'state': 'drain', 'socket': missing})
    assert r['failed'] is True
    assert 'no control socket at %s' % missing in r['msg'] and 'is fleetproxy running' in r['msg'], r['msg']

    # A socket file that nobody listens on (a proxy that died without cleaning up).
    stale = str(tmp_path / 's')
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    r = run_module('backend_server', {'backend': 'app', 'name': 's1', 'state': 'drain', 'socket': stale})
    assert r['failed'] is True and 'nothing listens on %s' % stale in r['msg'], r['msg']


def test_bad_arguments(shared):
    r = bs(shared, name='s1', state='ready', shutdown_sessions=True)
    assert r['failed'] is True and 'shutdown_sessions' in r['msg']
    r = bs(shared, name='s1', state='bogus')
    assert r['failed'] is True and 'state' in r['msg']
    r = bs(shared, name='s1', state='drain', wait_timeout=-1)
    assert r['failed'] is True and 'wait_timeout' in r['msg']
    assert admin(shared.server('s1')) == ('ready', 1)


def test_idempotent_under_traffic(two):
    with Traffic(two) as traffic:
        steps = [
            dict(name='s1', state='drain'),
            dict(name='s1', state='maint'),
            dict(name='s1', state='ready', wait=True),
            dict(name='s2', weight='3'),
            dict(name='s2', state='drain', weight='3', wait=True, wait_timeout=20),
            dict(name='s2', state='ready', weight='1', wait=True),
        ]
        for step in steps:
            first = bs(two, diff=True, **step)
            assert not first.get('failed'), first
            assert first['changed'] is True, (step, first)
            before = traffic.ok
            second = bs(two, diff=True, **step)
            assert not second.get('failed'), second
            assert second['changed'] is False, (step, second)
            assert second['diff']['before'] == second['diff']['after']
        deadline = time.monotonic() + 10
        while traffic.ok <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert traffic.ok > before, 'no traffic flowed during the test'
    assert traffic.failed == [], traffic.failed[:5]
    assert traffic.ok > 20


def test_wait_drain_waits_for_the_last_session(two):
    two.patch('s2', state='maint')
    slow = SlowRequest(two, 2.0)
    two.wait_sessions('s1', 1)
    start = time.monotonic()
    r = bs(two, name='s1', state='drain', wait=True, wait_timeout=20)
    returned = time.monotonic()
    assert not r.get('failed'), r
    assert r['changed'] is True
    assert r['server']['sessions']['current'] == 0
    assert slow.join() == (200, 'b1'), 'the session in flight was not served to its end'
    assert slow.done_at < returned, 'the module returned before the last session ended'
    assert 0 < r['waited'] <= returned - start
    # Already drained: no change, no long wait.
    again = bs(two, name='s1', state='drain', wait=True, wait_timeout=20)
    assert again['changed'] is False and again['waited'] < 2.0


def test_wait_drain_timeout_fails_and_says_what_changed(two):
    two.patch('s2', state='maint')
    slow = SlowRequest(two, 20)
    two.wait_sessions('s1', 1)
    try:
        r = bs(two, name='s1', state='maint', wait=True, wait_timeout=1)
        assert r['failed'] is True
        assert r['changed'] is True
        assert 'still has 1 active session(s) after 1s in maint' in r['msg'], r['msg']
        assert two.server('s1')['state'] == 'maint'
    finally:
        two.b1.release()
    assert slow.join() == (200, 'b1')


def test_shutdown_sessions_after_the_wait(two):
    two.patch('s2', state='maint')
    slow = SlowRequest(two, 25)
    two.wait_sessions('s1', 1)
    try:
        r = bs(two, name='s1', state='maint', wait=True, wait_timeout=1, shutdown_sessions=True)
        assert not r.get('failed'), r
        assert r['changed'] is True
        assert r['sessions_killed'] == 1
        assert r['server']['sessions']['current'] == 0
        result = slow.join(10)
        assert result is not None and result != (200, 'b1'), 'the session was not cut: %r' % (result,)
        again = bs(two, name='s1', state='maint', wait=True, wait_timeout=1, shutdown_sessions=True)
        assert again['changed'] is False and again['sessions_killed'] == 0
    finally:
        two.b1.release()


def test_shutdown_sessions_without_wait_and_nothing_to_cut(two):
    two.patch('s2', state='maint')
    slow = SlowRequest(two, 25)
    two.wait_sessions('s1', 1)
    try:
        r = bs(two, name='s1', state='drain', shutdown_sessions=True)
        assert not r.get('failed'), r
        assert r['changed'] is True and r['sessions_killed'] == 1
        assert slow.join(10) != (200, 'b1')
        two.wait_server('s1', lambda v: v['sessions']['current'] == 0)
        again = bs(two, name='s1', state='drain', shutdown_sessions=True)
        assert again['changed'] is False and again['sessions_killed'] == 0
    finally:
        two.b1.release()


def test_wait_ready_waits_until_healthy(two):
    two.patch('s1', state='maint')
    port = two.b1.port
    two.b1.stop()
    two.wait_health('s1', 'down')
    revived = []

    def revive():
        time.sleep(1.0)
        revived.append(Backend('b1', port))

    t = threading.Thread(target=revive, daemon=True)
    t.start()
    try:
        r = bs(two, name='s1', state='ready', wait=True, wait_timeout=20)
        assert not r.get('failed'), r
        assert r['changed'] is True
        assert r['server']['health'] == 'up' and r['server']['state'] == 'ready'
        assert r['waited'] >= 0.5, r['waited']
        assert two.get() == (200, 'b1') or two.get() == (200, 'b1')
    finally:
        t.join(10)
        for b in revived:
            b.stop()


def test_wait_ready_timeout_names_the_check(two):
    two.b2.stop()
    two.wait_health('s2', 'down')
    two.patch('s2', state='maint')
    r = bs(two, name='s2', state='ready', wait=True, wait_timeout=1)
    assert r['failed'] is True and r['changed'] is True
    assert 'server app/s2 is still down after 1s' in r['msg'], r['msg']
    assert 'L4CON' in r['msg'], r['msg']
    assert r['waited'] >= 1.0


def test_survives_reload_and_restart(two):
    assert bs(two, name='s1', state='maint')['changed'] is True
    assert bs(two, name='s2', weight='4')['changed'] is True
    time.sleep(0.3)  # the proxy writes its state file 100 ms after a change
    assert os.path.exists(two.config['global']['state_file'])
    two.reload()
    assert admin(two.server('s1')) == ('maint', 1)
    assert admin(two.server('s2')) == ('ready', 4)
    two.restart()
    assert admin(two.server('s1')) == ('maint', 1)
    assert admin(two.server('s2')) == ('ready', 4)
    assert bs(two, name='s1', state='maint')['changed'] is False
    assert bs(two, name='s2', weight='4')['changed'] is False
