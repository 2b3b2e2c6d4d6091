# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""JSON over HTTP/1.1 over a UNIX stream socket, with the standard library only.

The base of every control-socket client in this collection: the proxy's admin
API (``proxy_admin``) and, later, the VRRP daemon's control interface.  A
client subclasses :class:`UnixJSONClient` and adds typed methods; modules turn
the two error classes into ``fail_json`` messages:

``SocketError``  nothing answers at the socket path (the daemon is not
                 running, the path is wrong, permission denied) or the
                 connection broke; nothing was changed by this request.
``APIError``     the daemon answered with an error status; ``status`` and
                 ``message`` (the daemon's ``{"error": ...}`` text) tell why.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket


class UnixHTTPError(Exception):
    """Base class of the errors raised by :class:`UnixJSONClient`."""


class SocketError(UnixHTTPError):
    """The socket could not be reached, or the exchange failed."""

    def __init__(self, path, message, missing=False):
        super().__init__(message)
        self.path = path
        self.missing = missing


class APIError(UnixHTTPError):
    """The server answered with an unexpected HTTP status."""

    def __init__(self, method, url, status, body):
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        if isinstance(body, dict) and body.get('error'):
            self.message = str(body['error'])
        elif body is None:
            self.message = 'HTTP %d with no body' % status
        else:
            self.message = 'HTTP %d: %s' % (status, json.dumps(body)[:500])
        super().__init__('%s %s: %s' % (method, url, self.message))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__('localhost', timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixJSONClient(object):
    """One short HTTP/1.1 exchange per call, ``Connection: close``.

    ``what`` names the daemon in error messages ("fleetproxy").
    """

    what = 'the daemon'

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.timeout = float(timeout)

    def request(self, method, url, body=None, timeout=None):
        """``(status, decoded JSON body or None)``; raises :class:`SocketError`."""
        conn = _UnixConnection(self.path, self.timeout if timeout is None else float(timeout))
        try:
            headers = {'Accept': 'application/json', 'Connection': 'close'}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode('utf-8')
                headers['Content-Type'] = 'application/json'
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
        except OSError as exc:
            raise self._socket_error(exc)
        except http.client.HTTPException as exc:
            raise SocketError(self.path, '%s on %s: broken HTTP exchange (%s: %s)'
                              % (self.what, self.path, type(exc).__name__, exc))
        finally:
            conn.close()
        if not data:
            return status, None
        try:
            return status, json.loads(data.decode('utf-8'))
        except ValueError:
            return status, {'error': data.decode('utf-8', 'replace')[:500]}

    def call(self, method, url, body=None, expect=(200,), timeout=None):
        """The decoded body of a response whose status is in ``expect``; else :class:`APIError`."""
        status, data = self.request(method, url, body=body, timeout=timeout)
        if status not in expect:
            raise APIError(method, url, status, data)
        return data

    def _socket_error(self, exc):
        path = self.path
        code = getattr(exc, 'errno', None)
        if isinstance(exc, socket.timeout) or code in (errno.ETIMEDOUT,):
            return SocketError(path, 'no answer from %s on %s within %.0fs' % (self.what, path, self.timeout))
        if code == errno.ENOENT:
            return SocketError(path, 'no control socket at %s: is %s running (and is this its socket path)?'
                               % (path, self.what), missing=True)
        if code == errno.ECONNREFUSED:
            return SocketError(path, 'nothing listens on %s: is %s running?' % (path, self.what), missing=True)
        if code in (errno.EACCES, errno.EPERM):
            return SocketError(path, 'permission denied on %s: run the task with become, or as a member '
                                     'of the socket\'s group' % path)
        if code == errno.ENOTSOCK or code == errno.ENOTDIR:
            return SocketError(path, '%s is not a UNIX socket' % path)
        return SocketError(path, '%s on %s: %s' % (self.what, path, exc))
