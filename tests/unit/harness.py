"""What the module tests run against: a real fleetproxy, small HTTP backends, traffic,
and the modules themselves, run in-process the way Ansible runs them (AnsibleModule
reading its arguments, exit_json/fail_json printing the result)."""

from __future__ import annotations

import contextlib
import http.client
import importlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTION = 'ansible_collections.fleetproxy.fleet'
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


# -- the collection on sys.path ------------------------------------------------------------

class CollectionTree:
    """``<tmp>/ansible_collections/fleetproxy/fleet`` -> the repository (the collection root)."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix='fpm-coll-')
        ns = os.path.join(self.root, 'ansible_collections', 'fleetproxy')
        os.makedirs(ns)
        os.symlink(REPO, os.path.join(ns, 'fleet'))

    def install(self):
        sys.path.insert(0, self.root)
        os.environ['ANSIBLE_COLLECTIONS_PATH'] = self.root

    def remove(self):
        if self.root in sys.path:
            sys.path.remove(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def load_module(name):
    return importlib.import_module('%s.plugins.modules.%s' % (COLLECTION, name))


def run_module(name, args, check_mode=False, diff=False):
    """Run module ``name`` with ``args``; return its result dict (``failed`` set on fail_json)."""
    from unittest import mock

    from ansible.module_utils.common import warnings
    from ansible.module_utils.testing import patch_module_args

    mod = load_module(name)
    full = dict(args)
    full['_ansible_check_mode'] = check_mode
    full['_ansible_diff'] = diff
    out = io.StringIO()
    # Warnings and deprecations are per process in Ansible (one module run per process).
    with patch_module_args(full), contextlib.redirect_stdout(out), \
            mock.patch.dict(warnings._global_warnings, clear=True), \
            mock.patch.dict(warnings._global_deprecations, clear=True):
        try:
            mod.main()
        except SystemExit:
            pass
        else:
            raise AssertionError('module %s returned without exit_json/fail_json' % name)
    text = out.getvalue().strip()
    try:
        return json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError('module %s printed no JSON result: %r' % (name, text))


# -- ports, backends -------------------------------------------------------------------------

def _port_window():
    """Ports below the kernel's ephemeral range, where no client socket takes its local port."""
    try:
        with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(1024, low - 12000), low


_WINDOW = _port_window()
_next_port = [_WINDOW[0] + (os.getpid() * 7919 + 6000) % (_WINDOW[1] - _WINDOW[0])]


def free_port():
    """A TCP port free on every address right now, taken in turn from below the ephemeral range.

    ``bind(0)`` would pick from the ephemeral range, where this suite's own client connections
    take their local ports, so the port could be taken again before the proxy binds it.
    """
    low, high = _WINDOW
    for dummy in range(high - low):
        port = _next_port[0]
        _next_port[0] = low + (port + 1 - low) % (high - low)
        try:
            with socket.socket() as s:
                s.bind(('0.0.0.0', port))
            return port
        except OSError:
            continue
    raise RuntimeError('no free TCP port in %d-%d' % (low, high - 1))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # one write per response (flushed after each request)

    def do_GET(self):  # noqa: N802 - http.server's naming
        query = parse_qs(urlsplit(self.path).query)
        delay = float(query.get('sleep', ['0'])[0])
        if delay:
            self.server.owner.waiting.wait(min(delay, 30.0))
        body = ('%s\n' % self.server.owner.name).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('X-Served-By', self.server.owner.name)
        self.end_headers()
        self.wfile.write(body)
        with self.server.owner.lock:
            self.server.owner.hits += 1

    def log_message(self, *args):
        pass


class Backend:
    """An HTTP/1.1 server on 127.0.0.1 that answers its name; ``?sleep=S`` answers late
    (cut short by :meth:`release`)."""

    def __init__(self, name, port=0):
        self.name = name
        self.hits = 0
        self.lock = threading.Lock()
        self.waiting = threading.Event()
        self.server = ThreadingHTTPServer(('127.0.0.1', port), _Handler)
        self.server.daemon_threads = True
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.address = '127.0.0.1:%d' % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.05},
                                       daemon=True)
        self.thread.start()

    def release(self):
        self.waiting.set()

    def stop(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()


# -- the proxy --------------------------------------------------------------------------------

def server_def(name, address, **extra):
    out = {'name': name, 'address': address}
    out.update(extra)
    return out


class Proxy:
    """``python -m fleetproxy run -c FILE`` with its admin socket and state file in a
    short temporary directory (UNIX socket paths are limited to 107 bytes)."""

    def __init__(self, servers, backend='app', extra_backends=(), state_file=True, workers=1):
        self.dir = tempfile.mkdtemp(prefix='fpm-')
        self.socket = os.path.join(self.dir, 'admin.sock')
        self.port = free_port()
        self.backend = backend
        self.config = {
            'global': {
                'workers': workers,
                'hard_stop_after': '5s',
                'log': {'access': 'none'},
                'admin': {'socket': self.socket},
            },
            'defaults': {'timeouts': {'connect': '1s', 'client': '30s', 'server': '30s'}},
            'frontends': [{'name': 'web', 'bind': ['127.0.0.1:%d' % self.port], 'default_backend': backend}],
            'backends': [{'name': backend, 'servers': list(servers)}] + list(extra_backends),
        }
        if state_file:
            self.config['global']['state_file'] = os.path.join(self.dir, 'state.json')
        self.path = os.path.join(self.dir, 'fleetproxy.yml')
        self.proc = None
        self.write_config()

    def write_config(self):
        with open(self.path, 'w') as f:
            yaml.safe_dump(self.config, f, sort_keys=False)

    def start(self):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        env.pop('NOTIFY_SOCKET', None)
        self.stderr = open(os.path.join(self.dir, 'stderr.log'), 'ab')
        self.proc = subprocess.Popen([sys.executable, '-m', 'fleetproxy', 'run', '-c', self.path],
                                     stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr,
                                     cwd=self.dir, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError('fleetproxy exited with %s:\n%s' % (self.proc.returncode, self.log()))
            try:
                if self.api('GET', '/v1/health')[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError('fleetproxy did not start in %ss:\n%s' % (START_TIMEOUT, self.log()))
            time.sleep(0.05)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.stderr.close()

    def restart(self):
        self.stop()
        return self.start()

    def reload(self):
        status, body = self.api('POST', '/v1/reload')
        assert status == 200, body
        return body

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(os.path.join(self.dir, 'stderr.log'), errors='replace') as f:
                return f.read()[-4000:]
        except OSError:
            return ''

    # -- admin API (independent of the module_utils under test) ----------------------------
    def api(self, method, url, body=None):
        conn = http.client.HTTPConnection('localhost', timeout=10)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.socket)
        conn.sock = sock
        try:
            conn.request(method, url, body=None if body is None else json.dumps(body),
                         headers={'Content-Type': 'application/json'})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return resp.status, (json.loads(data) if data else None)

    def server(self, name, backend=None):
        status, body = self.api('GET', '/v1/backends/%s/servers/%s' % (backend or self.backend, name))
        assert status == 200, body
        return body

    def servers(self, backend=None):
        status, body = self.api('GET', '/v1/backends/%s/servers' % (backend or self.backend))
        assert status == 200, body
        return body

    def patch(self, name, backend=None, **fields):
        status, body = self.api('PATCH', '/v1/backends/%s/servers/%s' % (backend or self.backend, name), fields)
        assert status == 200, body
        return body

    def wait_server(self, name, predicate, timeout=15.0, backend=None):
        deadline = time.monotonic() + timeout
        while True:
            view = self.server(name, backend)
            if predicate(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError('server %s: condition not met in %ss: %r' % (name, timeout, view))
            time.sleep(0.05)

    def wait_health(self, name, health='up', timeout=15.0):
        return self.wait_server(name, lambda v: v['health'] == health, timeout)

    def wait_sessions(self, name, count, timeout=15.0):
        return self.wait_server(name, lambda v: v['sessions']['current'] >= count, timeout)

    def get(self, path='/', timeout=10.0):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        try:
            conn.request('GET', path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode().strip()
        finally:
            conn.close()


class Traffic:
    """Requests through the proxy in a thread, bounded in count and time; counts failures."""

    def __init__(self, proxy, path='/', limit=5000, seconds=60.0, pause=0.005):
        self.proxy = proxy
        self.path = path
        self.limit = limit
        self.seconds = seconds
        self.pause = pause
        self.ok = 0
        self.failed = []
        self.served = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.seconds
        for dummy in range(self.limit):
            if self.stop_event.is_set() or time.monotonic() > deadline:
                return
            try:
                status, body = self.proxy.get(self.path, timeout=5)
            except OSError as exc:
                self.failed.append(repr(exc))
            else:
                if status == 200:
                    self.ok += 1
                    self.served[body] = self.served.get(body, 0) + 1
                else:
                    self.failed.append(status)
            time.sleep(self.pause)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while self.ok == 0 and not self.failed and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(15)


class SlowRequest:
    """One request that the backend answers only after ``seconds`` (or on release())."""

    def __init__(self, proxy, seconds):
        self.proxy = proxy
        self.seconds = seconds
        self.result = None
        self.done_at = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.result = self.proxy.get('/?sleep=%s' % self.seconds, timeout=self.seconds + 15)
        except OSError as exc:
            self.result = exc
        self.done_at = time.monotonic()

    def join(self, timeout=30):
        self.thread.join(timeout)
        return self.result


# -- helpers run as subprocesses (inside network namespaces) ----------------------------------

def capture_arp(ifname, seconds, count):
    """Print ``ready``, then one JSON line per ARP frame seen on ``ifname`` (at most ``count``,
    for at most ``seconds``)."""
    from select import select

    eth_p_arp = 0x0806
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_arp))
    sock.bind((ifname, eth_p_arp))
    print('ready', flush=True)
    deadline = time.monotonic() + seconds
    seen = 0
    while seen < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable = select([sock], [], [], left)[0]
        if not readable:
            break
        frame, addr = sock.recvfrom(2048)
        print(json.dumps({'hex': frame.hex(), 'at': time.monotonic(), 'pkttype': addr[2]}), flush=True)
        seen += 1
    sock.close()


def _main(argv):
    if argv[0] == 'run':
        root = os.environ['ANSIBLE_COLLECTIONS_PATH'].split(':')[0]
        sys.path.insert(0, root)
        result = run_module(argv[1], json.loads(argv[2]), check_mode='--check' in argv, diff='--diff' in argv)
        print(json.dumps(result))
    elif argv[0] == 'capture':
        capture_arp(argv[1], float(argv[2]), int(argv[3]))
    else:
        raise SystemExit('usage: harness.py run MODULE ARGS_JSON [--check] [--diff] | capture IFACE SECONDS COUNT')


if __name__ == '__main__':
    _main(sys.argv[1:])
