# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""The fleetproxy admin API (JSON over the UNIX ``global.admin.socket``) for modules.

Standard library only: modules run on the proxy hosts with their system Python.
The API's semantics (what each call changes, when a delete is refused with 409,
``?wait=``) are those of ``fleetproxy/admin/api.py`` and ``fleetproxy/master.py``
in the collection's ``proxy/`` tree.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time

from urllib.parse import quote

from ansible_collections.fleetproxy.fleet.plugins.module_utils.unix_http import (
    APIError,
    UnixJSONClient,
)

DEFAULT_SOCKET = '/run/fleetproxy/admin.sock'
STATES = ('ready', 'drain', 'maint')
MAX_WEIGHT = 256

# Workers report their counters to the master every 100 ms; a session that a
# worker opened just before it applied a state change shows up in the master's
# view within that time.  "Drained" must therefore hold for longer than a few
# reporting periods before it is believed.
DRAIN_SETTLE = 0.35
POLL_INTERVAL = 0.1

_NAME_RE = re.compile(r'^[A-Za-z0-9_.:-]+$')
_DURATION_RE = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*$')
_DURATION_UNITS = {'us': 1e-6, 'ms': 1e-3, 's': 1.0, 'm': 60.0, 'h': 3600.0, 'd': 86400.0}


def admin_argument_spec():
    """The options every module that talks to the local proxy takes."""
    return dict(
        socket=dict(type='path', default=DEFAULT_SOCKET),
        timeout=dict(type='float', default=10.0),
    )


class ProxyAdmin(UnixJSONClient):
    """Typed calls of the ``/v1`` API.  Names are path-quoted."""

    what = 'fleetproxy'

    @staticmethod
    def _q(name):
        return quote(str(name), safe='')

    def _server_url(self, backend, server):
        return '/v1/backends/%s/servers/%s' % (self._q(backend), self._q(server))

    def health(self):
        status, body = self.request('GET', '/v1/health')
        return status == 200, body

    def info(self):
        return self.call('GET', '/v1/info')

    def frontends(self):
        return self.call('GET', '/v1/frontends')

    def backends(self):
        return self.call('GET', '/v1/backends')

    def backend(self, backend):
        return self.call('GET', '/v1/backends/%s' % self._q(backend))

    def servers(self, backend):
        return self.call('GET', '/v1/backends/%s/servers' % self._q(backend))

    def server(self, backend, server):
        return self.call('GET', self._server_url(backend, server))

    def set_server(self, backend, server, state=None, weight=None):
        body = {}
        if state is not None:
            body['state'] = state
        if weight is not None:
            body['weight'] = weight
        return self.call('PATCH', self._server_url(backend, server), body=body)

    def add_server(self, backend, definition):
        return self.call('POST', '/v1/backends/%s/servers' % self._q(backend), body=definition,
                         expect=(201,))

    def delete_server(self, backend, server, wait=None):
        """DELETE; with ``wait`` (seconds) the proxy waits that long for the last session."""
        url = self._server_url(backend, server)
        timeout = None
        if wait:
            url += '?wait=%dms' % int(max(0.0, wait) * 1000)
            timeout = self.timeout + wait
        self.call('DELETE', url, expect=(204,), timeout=timeout)

    def shutdown_sessions(self, backend, server):
        body = self.call('POST', self._server_url(backend, server) + '/shutdown-sessions')
        return int((body or {}).get('sessions_killed') or 0)

    def reload(self):
        return self.call('POST', '/v1/reload')


def fail_json_from(module, exc, **result):
    """``fail_json`` with a message for an error of the admin socket or API."""
    if isinstance(exc, APIError):
        msg = exc.message
        if exc.status >= 500:
            msg = 'fleetproxy failed on %s %s: %s' % (exc.method, exc.url, exc.message)
        module.fail_json(msg=msg, status=exc.status, **result)
    module.fail_json(msg=str(exc), **result)


# -- values -----------------------------------------------------------------------------

def valid_name(name):
    return bool(name) and bool(_NAME_RE.match(name))


def parse_weight(value):
    """``value`` as given by a user: an int 0-256 or ``"N%"``.

    Returns ``(absolute, percent)``: one of them is None.  Raises ValueError with
    the proxy's own wording.
    """
    if isinstance(value, bool):
        raise ValueError('invalid weight %r: use 0-%d or a percentage' % (value, MAX_WEIGHT))
    if isinstance(value, int):
        absolute = value
    else:
        text = str(value).strip()
        try:
            if text.endswith('%'):
                pct = float(text[:-1])
                if not 0 <= pct <= 100 * MAX_WEIGHT:
                    raise ValueError
                return None, pct
            absolute = int(text)
        except ValueError:
            raise ValueError('invalid weight %r: use 0-%d or a percentage such as 50%%' % (value, MAX_WEIGHT))
    if not 0 <= absolute <= MAX_WEIGHT:
        raise ValueError('weight %d out of range (0-%d)' % (absolute, MAX_WEIGHT))
    return absolute, None


def resolve_weight(value, config_weight):
    """The administrative weight the proxy will set for ``value`` (its own rule:
    a percentage is of the server's configured weight, rounded)."""
    absolute, pct = parse_weight(value)
    if absolute is not None:
        return absolute
    result = int(round(config_weight * pct / 100))
    if not 0 <= result <= MAX_WEIGHT:
        raise ValueError('weight %s of configured weight %d is %d, out of range (0-%d)'
                         % (value, config_weight, result, MAX_WEIGHT))
    return result


def parse_duration(value):
    """Seconds from ``2s``, ``250ms``, ``1m``... (a bare number is milliseconds)."""
    if isinstance(value, bool):
        raise ValueError('invalid duration %r' % (value,))
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError('duration %r is negative' % (value,))
        return value / 1000.0
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError('invalid duration %r (use e.g. 5s, 250ms, 1m; a bare number is ms)' % (value,))
    number, unit = m.groups()
    return float(number) * _DURATION_UNITS[unit or 'ms']


def split_address(value):
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError if malformed."""
    text = str(value).strip()
    if text.startswith('['):
        end = text.find(']')
        if end < 0 or text[end + 1:end + 2] != ':':
            raise ValueError("invalid address %r: expected '[ipv6]:port'" % value)
        host, port_text = text[1:end], text[end + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError('invalid address %r: %r is not an IPv6 address' % (value, host))
    else:
        host, sep, port_text = text.rpartition(':')
        if not sep:
            raise ValueError("invalid address %r: missing ':port'" % value)
        if ':' in host:
            raise ValueError("invalid address %r: write IPv6 addresses as '[addr]:port'" % value)
        if host in ('', '*'):
            raise ValueError('invalid address %r: a server needs a host' % value)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError('invalid address %r: port %r out of range (1-65535)' % (value, port_text))
    return host, int(port_text)


def same_address(wanted, reported):
    """Whether ``wanted`` (as a user wrote it, maybe a host name) is the address the
    proxy reports (always an IP: the proxy resolves names once, at configuration time)."""
    try:
        whost, wport = split_address(wanted)
        rhost, rport = split_address(reported)
    except ValueError:
        return False
    if wport != rport:
        return False
    try:
        rip = ipaddress.ip_address(rhost)
    except ValueError:
        return whost == rhost
    try:
        return ipaddress.ip_address(whost) == rip
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(whost, None, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    for info in infos:
        try:
            if ipaddress.ip_address(info[4][0].split('%')[0]) == rip:
                return True
        except ValueError:
            continue
    return False


def server_summary(view):
    """What ``backend_server`` manages: the administrative state and weight."""
    return {'state': view['state'], 'weight': view['admin_weight']}


def sessions(view):
    return int((view.get('sessions') or {}).get('current') or 0) + int(view.get('queue') or 0)


# -- waiting ------------------------------------------------------------------------------

def wait_for(fetch, done, timeout, settle=0.0, interval=POLL_INTERVAL, clock=time.monotonic,
             sleep=time.sleep):
    """Poll ``fetch()`` until ``done(value)`` has held for ``settle`` seconds.

    Returns ``(ok, value, waited)``.  The first poll happens at once; the last
    one happens at (or after) the deadline, never before it, and a condition
    that turned true just before the deadline gets the time to settle.
    """
    start = clock()
    deadline = start + max(0.0, timeout)
    since = None
    while True:
        value = fetch()
        now = clock()
        if done(value):
            if since is None:
                since = now
            if now - since >= settle - 1e-3:
                return True, value, now - start
        else:
            since = None
            if now >= deadline:
                return False, value, now - start
        if since is None:
            pause = min(interval, deadline - now)
        else:
            pause = min(interval, settle - (now - since))
        sleep(max(pause, 0.005))
