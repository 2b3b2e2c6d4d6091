"""The pure parts of plugins/module_utils: values, waiting, frames, the socket client."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from harness import COLLECTION

pa = importlib.import_module(COLLECTION + '.plugins.module_utils.proxy_admin')
nl = importlib.import_module(COLLECTION + '.plugins.module_utils.netlink')
uh = importlib.import_module(COLLECTION + '.plugins.module_utils.unix_http')


@pytest.mark.parametrize('value, expected', [
    (0, (0, None)), (256, (256, None)), ('17', (17, None)), (' 5 ', (5, None)),
    ('50%', (None, 50.0)), ('12.5%', (None, 12.5)), ('0%', (None, 0.0)),
])
def test_parse_weight(value, expected):
    assert pa.parse_weight(value) == expected


@pytest.mark.parametrize('value', [257, -1, '300', 'x', '%', '-5%', '25601%', True, '1.5'])
def test_parse_weight_rejects(value):
    with pytest.raises(ValueError):
        pa.parse_weight(value)


def test_resolve_weight_follows_the_proxy():
    assert pa.resolve_weight('50%', 10) == 5
    assert pa.resolve_weight('25%', 10) == 2  # round(2.5) is 2, as in the proxy (Python's round)
    assert pa.resolve_weight('200%', 100) == 200
    assert pa.resolve_weight(7, 100) == 7
    with pytest.raises(ValueError, match='out of range'):
        pa.resolve_weight('300%', 100)


@pytest.mark.parametrize('text, seconds', [('2s', 2.0), ('250ms', 0.25), ('1m', 60.0), ('100', 0.1), (100, 0.1),
                                           ('1.5s', 1.5), ('100us', 0.0001)])
def test_parse_duration(text, seconds):
    assert pa.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize('text', ['2 weeks', '-1s', 's', '', True])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        pa.parse_duration(text)


def test_addresses():
    assert pa.split_address('198.18.0.1:80') == ('198.18.0.1', 80)
    assert pa.split_address('[::1]:8080') == ('::1', 8080)
    assert pa.split_address('backend.example:443') == ('backend.example', 443)
    for bad in ('198.18.0.1', '::1:80', '[::1]80', '*:80', ':80', 'h:0', 'h:65536', 'h:x', '[zz]:80'):
        with pytest.raises(ValueError):
            pa.split_address(bad)
    assert pa.same_address('127.0.0.1:80', '127.0.0.1:80')
    assert pa.same_address('[0:0::1]:80', '[::1]:80')
    assert not pa.same_address('127.0.0.1:80', '127.0.0.1:81')
    assert not pa.same_address('127.0.0.2:80', '127.0.0.1:80')
    assert pa.same_address('localhost:80', '127.0.0.1:80') or pa.same_address('localhost:80', '[::1]:80')
    assert not pa.same_address('no-such-host.invalid:80', '127.0.0.1:80')


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_returns_at_once_and_bounds_the_wait():
    clock = FakeClock()
    ok, value, waited = pa.wait_for(lambda: 0, lambda v: v == 0, 10, clock=clock, sleep=clock.sleep)
    assert (ok, value, waited) == (True, 0, 0) and clock.sleeps == []

    clock = FakeClock()
    polls = []
    ok, value, waited = pa.wait_for(lambda: polls.append(clock.now) or 1, lambda v: v == 0, 1.0,
                                    interval=0.3, clock=clock, sleep=clock.sleep)
    assert ok is False and value == 1
    # The last poll happens at the deadline, not one interval before it.
    assert polls[-1] == pytest.approx(101.0) and waited == pytest.approx(1.0)
    assert max(clock.sleeps) <= 0.3


def test_wait_for_settles():
    clock = FakeClock()
    values = iter([0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    ok, dummy, waited = pa.wait_for(lambda: next(values), lambda v: v == 0, 10, settle=0.3, interval=0.1,
                                    clock=clock, sleep=clock.sleep)
    # 0 at t=0 and 0.1, 1 at 0.2 (a late report): the clock restarts at 0.3.
    assert ok is True and waited == pytest.approx(0.6)

    # True just before the deadline: it still gets the time to settle.
    clock = FakeClock()
    values = iter([1] * 9 + [0] * 10)
    ok, dummy, waited = pa.wait_for(lambda: next(values), lambda v: v == 0, 0.85, settle=0.3, interval=0.1,
                                    clock=clock, sleep=clock.sleep)
    assert ok is True and waited == pytest.approx(1.15)


def test_arp_announcement_frame():
    mac = bytes.fromhex('020000000001')
    frame = nl.arp_announcement(mac, '198.18.0.100')
    assert len(frame) == 60
    fields = nl.parse_arp(frame)
    assert fields == {'dst': 'ff:ff:ff:ff:ff:ff', 'src': '02:00:00:00:00:01', 'op': 1,
                      'sha': '02:00:00:00:00:01', 'spa': '198.18.0.100',
                      'tha': '00:00:00:00:00:00', 'tpa': '198.18.0.100'}
    assert nl.mac_bytes('02:00:00:00:00:01') == mac
    assert nl.parse_arp(b'\x00' * 60) is None


def test_vip_addresses():
    assert str(nl.parse_address('198.18.0.100')) == '198.18.0.100/32'
    assert str(nl.parse_address('198.18.0.100/24')) == '198.18.0.100/24'
    assert str(nl.parse_address('2001:2::1')) == '2001:2::1/128'
    for bad in ('198.18.0.300', '0.0.0.0', '224.0.0.18/32', 'eth0', '198.18.0.1/33'):
        with pytest.raises(ValueError):
            nl.parse_address(bad)


def test_module_utils_import_without_pyroute2(tmp_path):
    """The import sanity test's rule: module_utils import with the standard library only."""
    blocker = tmp_path / 'pyroute2.py'
    blocker.write_text('raise ImportError("pyroute2 is blocked for this test")\n')
    code = ('import importlib; m = importlib.import_module(%r); '
            'print(m.HAS_PYROUTE2, "pyroute2 is blocked" in m.PYROUTE2_IMPORT_ERROR)'
            % (COLLECTION + '.plugins.module_utils.netlink'))
    root = [p for p in sys.path if os.path.basename(p).startswith('fpm-coll-')][0]
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=False,
                         env={'PYTHONPATH': '%s:%s' % (tmp_path, root), 'PATH': '/usr/bin:/bin'})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['False', 'True']


# -- the UNIX socket client --------------------------------------------------------------

class _Bad(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'<html>oops</html>' if self.path == '/html' else b'{"error": "nope"}'
        self.send_response(500 if self.path == '/html' else 409)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self):
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = 'localhost', 0


def test_client_errors(tmp_path):
    path = str(tmp_path / 'api.sock')
    server = _UnixHTTPServer(path, _Bad)
    t = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    t.start()
    try:
        client = uh.UnixJSONClient(path, timeout=5)
        with pytest.raises(uh.APIError) as info:
            client.call('GET', '/x')
        assert info.value.status == 409 and info.value.message == 'nope'
        status, body = client.request('GET', '/html')
        assert status == 500 and body == {'error': '<html>oops</html>'}
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(uh.SocketError) as info:
        uh.UnixJSONClient(str(tmp_path / 'missing'), timeout=1).call('GET', '/')
    assert info.value.missing is True
    regular = tmp_path / 'file'
    regular.write_text('')
    with pytest.raises(uh.SocketError):
        uh.UnixJSONClient(str(regular), timeout=1).call('GET', '/')
