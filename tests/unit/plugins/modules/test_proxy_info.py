"""fleetproxy.fleet.proxy_info against a real proxy."""

from __future__ import annotations

import time

from harness import Traffic, run_module, server_def


def info(proxy, check_mode=False, **args):
    args.setdefault('socket', proxy.socket)
    return run_module('proxy_info', args, check_mode=check_mode)


def test_everything_for_asserts(two):
    two.patch('s2', state='drain', weight=4)
    with Traffic(two, limit=30) as traffic:
        first = info(two)
    assert traffic.failed == [] and traffic.ok > 0
    # Workers report counters every 100 ms: wait for the report of the traffic above.
    deadline = time.monotonic() + 10
    while two.api('GET', '/v1/frontends/web')[1]['requests'] < traffic.ok and time.monotonic() < deadline:
        time.sleep(0.05)
    second = info(two, check_mode=True)
    for r in (first, second):
        assert not r.get('failed'), r
        assert r['changed'] is False
        assert r['running'] is True and r['healthy'] is True
    r = second
    assert r['info']['name'] == 'fleetproxy' and r['info']['config'] == two.path
    assert [f['name'] for f in r['frontends']] == ['web']
    assert r['frontends'][0]['bind'] == ['127.0.0.1:%d' % two.port]
    assert [b['name'] for b in r['backends']] == ['app']
    s1, s2 = r['servers']['app/s1'], r['servers']['app/s2']
    assert (s1['state'], s1['health'], s1['admin_weight']) == ('ready', 'up', 1)
    assert (s2['state'], s2['health'], s2['admin_weight']) == ('drain', 'up', 4)
    assert s1['check']['configured'] is True and s1['check']['status'] == 'L4OK'
    assert r['backends'][0]['servers'][0] == s1
    assert s1['sessions']['total'] > 0, 'traffic went to s1'
    assert r['frontends'][0]['requests'] >= first['frontends'][0]['requests']
    assert r['frontends'][0]['requests'] == traffic.ok


def test_selection(backends, proxy_factory):
    (b1,) = backends(1)
    other = {'name': 'other', 'servers': [server_def('o1', b1.address)]}
    proxy = proxy_factory([server_def('s1', b1.address)], extra_backends=[other])
    r = info(proxy, backends=['other'], gather=['backends'])
    assert not r.get('failed'), r
    assert [b['name'] for b in r['backends']] == ['other']
    assert list(r['servers']) == ['other/o1']
    assert 'info' not in r and 'frontends' not in r
    r = info(proxy, backends=['nope'])
    assert r['failed'] is True and "no backend named 'nope'" in r['msg']
    r = info(proxy, gather=['everything'])
    assert r['failed'] is True and 'gather' in r['msg']


def test_no_proxy(tmp_path):
    path = str(tmp_path / 'admin.sock')
    r = run_module('proxy_info', {'socket': path})
    assert r['failed'] is True and 'is fleetproxy running' in r['msg']
    r = run_module('proxy_info', {'socket': path, 'fail_if_absent': False})
    assert not r.get('failed'), r
    assert r['running'] is False and r['changed'] is False
