"""fleetproxy.fleet.vrrp_state against a real ``fleetproxy vrrp`` pair (root).

Two daemons run in network namespaces joined by a Linux bridge (the failover lab of
``fleetproxy.vrrp.lab``, on 198.18.222.0/24 with names prefixed ``fpv2t``); the module
talks to node a's control socket the way Ansible runs it. What the LAN sees (who
holds the virtual IP) is read from the namespaces themselves, independently of the
module's own observation.
"""

from __future__ import annotations

import os
import time

import pytest

from harness import run_module

labmod = pytest.importorskip('fleetproxy.vrrp.lab', reason='the fleetproxy package (proxy/) is not installed')

pytestmark = pytest.mark.timeout(300)

SUBNET = '198.18.222'
VIP = SUBNET + '.100'


class Lab(labmod.Lab):
    SUBNET = SUBNET
    OBSERVER_IP = SUBNET + '.2'


_REASON = []


def _unavailable():
    if not _REASON:
        _REASON.append(labmod.available())
        if _REASON[0] is None:
            labmod.remove_leftovers('fpv2t')
    return _REASON[0]


def make_lab(request):
    reason = _unavailable()
    if reason:
        pytest.skip('vrrp_state tests need a fleetproxy vrrp pair in network namespaces: %s' % reason)
    lab = Lab(2, prefix='fpv2t')
    request.addfinalizer(lab.close)
    lab.build()
    return lab


@pytest.fixture(scope='module')
def pair(request):
    """Node a (priority 150) is master, node b (100) backup; adverts every 100 ms."""
    lab = make_lab(request)
    a, b = lab.nodes
    lab.start_vrrp(a, priority=150)
    lab.start_vrrp(b, priority=100)
    lab.wait_state(a, 'MASTER', 10)
    lab.wait_state(b, 'BACKUP', 10)
    lab.sock_a = lab.path('%s.sock' % a.ns)
    lab.sock_b = lab.path('%s.sock' % b.ns)
    return lab


@pytest.fixture
def settled(pair):
    """The pair as the fixture made it, before and after each test."""
    a, b = pair.nodes
    yield pair
    for sock in (pair.sock_a, pair.sock_b):
        run_module('vrrp_state', {'state': 'active', 'socket': sock, 'wait': False})
    pair.wait_state(a, 'MASTER', 10)
    pair.wait_state(b, 'BACKUP', 10)


def vrrp(sock, **args):
    args.setdefault('socket', sock)
    return run_module('vrrp_state', args)


def test_check_mode_reports_and_changes_nothing(settled):
    a, b = settled.nodes
    result = run_module('vrrp_state', {'state': 'maintenance', 'socket': settled.sock_a}, check_mode=True, diff=True)
    assert result['changed'] is True and not result.get('failed'), result
    assert result['diff'] == {'before': {'vip': 'active'}, 'after': {'vip': 'maintenance'}}
    assert result['waited'] == 0.0
    time.sleep(0.5)
    assert settled.state(a) == 'MASTER' and a.has(VIP) and not b.has(VIP)
    assert settled.status(a)['maintenance'] is False


def test_maintenance_moves_the_vip_to_the_peer_and_waits_for_it(settled):
    a, b = settled.nodes
    t0 = time.monotonic()
    result = vrrp(settled.sock_a, state='maintenance', wait_timeout=20)
    took = time.monotonic() - t0
    assert result['changed'] is True and not result.get('failed'), result
    # When the module returns, the peer holds the VIP (seen from the namespaces).
    assert b.has(VIP) and not a.has(VIP)
    assert settled.state(b) == 'MASTER'
    inst, = result['instances']
    assert inst['state'] == 'MAINT' and inst['maintenance'] is True and inst['vips_held'] is False
    assert inst['master'] == b.ip and inst['master_priority'] == 100
    assert 0 <= inst['master_age'] <= inst['master_down_interval']
    assert result['before'] == {'vip': 'active'} and result['after'] == {'vip': 'maintenance'}
    # A priority-0 handover: Skew_Time of b (61 ms at 100 ms adverts) plus an advert or
    # two to observe, plus the module's polling; generous for a loaded machine.
    assert result['waited'] < 3.0 and took < 10.0, result

    again = vrrp(settled.sock_a, state='maintenance', wait_timeout=20)
    assert again['changed'] is False and not again.get('failed'), again
    assert again['instances'][0]['master'] == b.ip

    # Stays out: three Master_Down_Intervals later b still holds the VIP.
    time.sleep(1.2)
    assert b.has(VIP) and not a.has(VIP)


def test_active_with_wait_master_brings_the_node_back(settled):
    a, b = settled.nodes
    assert vrrp(settled.sock_a, state='maintenance')['changed'] is True
    result = vrrp(settled.sock_a, state='active', wait_master=True, wait_timeout=20)
    assert result['changed'] is True and not result.get('failed'), result
    inst, = result['instances']
    assert inst['state'] == 'MASTER' and inst['vips_held'] is True
    assert a.has(VIP) and not b.has(VIP)
    again = vrrp(settled.sock_a, state='active', wait_master=True)
    assert again['changed'] is False and not again.get('failed'), again


def test_active_without_wait_master_returns_as_backup(settled):
    a = settled.nodes[0]
    vrrp(settled.sock_a, state='maintenance')
    result = run_module('vrrp_state', {'state': 'active', 'socket': settled.sock_a}, diff=True)
    assert result['changed'] is True and not result.get('failed'), result
    assert result['diff'] == {'before': {'vip': 'maintenance'}, 'after': {'vip': 'active'}}
    assert result['instances'][0]['state'] in ('BACKUP', 'MASTER')
    settled.wait_state(a, 'MASTER', 5)  # and then preempts (priority 150 > 100)


def test_the_backup_in_maintenance_sees_the_master_at_once(settled):
    a, b = settled.nodes
    result = vrrp(settled.sock_b, state='maintenance', instances=['vip'])
    assert result['changed'] is True and not result.get('failed'), result
    assert result['instances'][0]['master'] == a.ip
    assert a.has(VIP) and settled.state(b) == 'MAINT'


def test_wait_master_fails_before_changing_when_it_cannot_preempt(settled):
    b = settled.nodes[1]
    vrrp(settled.sock_b, state='maintenance')
    result = vrrp(settled.sock_b, state='active', wait_master=True)
    assert result.get('failed') and 'preemption needs a higher priority' in result['msg'], result
    assert 'nothing was changed' in result['msg'] and result['changed'] is False
    assert settled.status(b)['maintenance'] is True


def test_unknown_instance_fails_and_changes_nothing(settled):
    a = settled.nodes[0]
    result = vrrp(settled.sock_a, state='maintenance', instances=['vip', 'nope'])
    assert result.get('failed') and "no instance named 'nope'" in result['msg'] and 'it has: vip' in result['msg']
    assert settled.state(a) == 'MASTER' and a.has(VIP)


def test_bad_arguments_and_a_missing_daemon(settled, tmp_path):
    result = vrrp(settled.sock_a, state='maintenance', wait_master=True)
    assert result.get('failed') and 'wait_master applies to state=active' in result['msg']
    result = vrrp(str(tmp_path / 'none.sock'), state='maintenance')
    assert result.get('failed') and 'is fleetproxy vrrp running' in result['msg'], result


def test_a_caller_that_is_not_root_is_refused(settled):
    a = settled.nodes[0]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            from ansible_collections.fleetproxy.fleet.plugins.module_utils.unix_http import APIError
            from ansible_collections.fleetproxy.fleet.plugins.module_utils.vrrp_control import VrrpControl
            try:
                VrrpControl(settled.sock_a).set_maintenance(True)
            except APIError as exc:
                code = 0 if exc.status == 403 and 'may not change maintenance' in exc.message else 2
        finally:
            os._exit(code)
    os.chmod(settled.dir, 0o755)
    status = os.waitpid(pid, 0)[1]
    assert os.waitstatus_to_exitcode(status) == 0
    assert settled.state(a) == 'MASTER'


def test_no_peer_times_out_and_rolls_back(request):
    """Nobody to take over: the module fails after wait_timeout and takes node a out of
    maintenance again, so the VIP comes back to it."""
    lab = make_lab(request)
    a = lab.nodes[0]
    lab.start_vrrp(a, priority=150)
    lab.wait_state(a, 'MASTER', 10)
    sock = lab.path('%s.sock' % a.ns)
    t0 = time.monotonic()
    result = vrrp(sock, state='maintenance', wait_timeout=1.5)
    took = time.monotonic() - t0
    assert result.get('failed'), result
    assert 'no peer took over the virtual IPs within 1.5s' in result['msg'] and 'no master heard' in result['msg']
    assert 'Maintenance was switched off again for vip' in result['msg']
    assert 1.5 <= took < 8.0
    assert result['changed'] is False and result['after'] == {'vip': 'active'}
    assert lab.status(a)['maintenance'] is False
    lab.wait_state(a, 'MASTER', 5)
    assert a.has(VIP)

    kept = vrrp(sock, state='maintenance', wait_timeout=0.5, rollback=False)
    assert kept.get('failed') and 'switched off again' not in kept['msg']
    assert lab.status(a)['state'] == 'MAINT' and not a.has(VIP)
