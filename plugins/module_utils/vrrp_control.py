# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""The control socket of ``fleetproxy vrrp`` (JSON over HTTP/1.1 on a UNIX socket).

Standard library only. The API is that of ``fleetproxy/vrrp/control.py`` in the
collection's ``proxy/`` tree: ``GET /v1/status`` for anyone, ``PUT /v1/maintenance``
for root and the daemon's user (the daemon checks the peer with SO_PEERCRED).
"""

from __future__ import annotations

from ansible_collections.fleetproxy.fleet.plugins.module_utils.unix_http import UnixJSONClient

DEFAULT_SOCKET = '/run/fleetproxy-vrrp/vrrp.sock'


class VrrpControl(UnixJSONClient):
    """Typed calls of the daemon's control API."""

    what = 'fleetproxy vrrp'

    def status(self):
        return self.call('GET', '/v1/status')

    def set_maintenance(self, on, instances=None):
        """``{"changed": [names], "status": {...}}``; APIError 403/404/400 change nothing."""
        body = {'maintenance': bool(on)}
        if instances is not None:
            body['instances'] = list(instances)
        return self.call('PUT', '/v1/maintenance', body=body)


def peer_holds_vips(inst):
    """Whether another router holds the instance's virtual IPs, as this node sees it.

    True when this node is in maintenance and holds none of the VIPs, and an
    advertisement with a priority above 0 from another router (only a master sends
    them) reached this node after it entered maintenance, no longer ago than the
    Master_Down_Interval (the RFC's own test of a live master). Entering maintenance
    forgets the previous master, and a priority-0 advertisement (a master leaving)
    forgets it again, so a stale view never counts.
    """
    master = inst.get('master')
    age = inst.get('master_age')
    mdi = inst.get('master_down_interval')
    return (inst.get('state') == 'MAINT'
            and not inst.get('vips_held')
            and master is not None and master != inst.get('address')
            and (inst.get('master_priority') or 0) > 0
            and age is not None and mdi is not None and age <= mdi)


def is_active(inst):
    """Out of maintenance and taking part in the election (BACKUP or MASTER)."""
    return inst.get('state') in ('BACKUP', 'MASTER') and not inst.get('maintenance')


def is_master(inst):
    return inst.get('state') == 'MASTER' and bool(inst.get('vips_held'))


def describe(inst):
    """One line about an instance, for messages."""
    parts = ['%s is %s' % (inst.get('name'), inst.get('state'))]
    if inst.get('master') and inst.get('state') != 'MASTER':
        age = inst.get('master_age')
        parts.append('master %s (priority %s%s)' % (inst['master'], inst.get('master_priority'),
                                                    ', heard %.1fs ago' % age if age is not None else ''))
    elif inst.get('state') != 'MASTER':
        parts.append('no master heard')
    if inst.get('faults'):
        parts.append('faults: %s' % '; '.join(inst['faults']))
    if inst.get('reason'):
        parts.append('last change: %s' % inst['reason'])
    return ', '.join(parts)
