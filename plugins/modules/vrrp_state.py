#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vrrp_state
short_description: Move the virtual IPs away from a node for maintenance, and bring it back
description:
  - Puts the instances of the C(fleetproxy vrrp) daemon on the target host into maintenance, or
    takes them out of it, through the daemon's control socket (C(fleetproxy vrrp maintenance on|off)).
  - In maintenance a master leaves at once with a priority-0 advertisement, as on a graceful stop,
    so its peer takes the virtual IPs after Skew_Time; the node then stays out, also across
    restarts of the daemon and reboots, until it is brought back.
  - With O(state=maintenance) and O(wait=true) the module waits until the peer holds the virtual IPs,
    as this node observes it - this node is in C(MAINT) and holds none of the virtual IPs, and an
    advertisement with a priority above 0 from another router (only a master sends them) reached it
    after it entered maintenance, no longer ago than the Master_Down_Interval. A priority-0
    advertisement (the peer leaving too) makes it wait again.
  - With O(state=active) and O(wait=true) it waits until the node takes part in the election again
    (C(BACKUP) or C(MASTER)); with O(wait_master=true) until it is master and holds the virtual IPs,
    which happens by itself only with preemption and a priority above the current master's.
  - Reports C(changed) only when an instance enters or leaves maintenance.
version_added: 0.1.0
author:
  - fleetproxy contributors (@fleetproxy)
options:
  state:
    description:
      - V(maintenance) takes the instances out of service (the peer takes the virtual IPs).
      - V(active) brings them back into the election.
    type: str
    required: true
    choices: [maintenance, active]
  instances:
    description:
      - The instances (C(name) in C(/etc/fleetproxy/vrrp.yml), V(vip) with the role
        C(fleetproxy.fleet.vip)) to act on. Unknown names fail the task before anything changes.
      - Every instance of the daemon when omitted.
    type: list
    elements: str
    aliases: [instance]
  wait:
    description:
      - Wait until what O(state) promises is observed (see the description), bounded by O(wait_timeout).
      - Also when nothing changed, so a repeated task still guarantees the outcome.
      - Nothing is awaited in check mode.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait with O(wait=true).
    type: float
    default: 30
  wait_master:
    description:
      - With O(state=active) and O(wait=true), wait until this node is master again.
      - Fails before changing anything when an instance cannot become master by itself - preemption
        off, or a priority not above that of the master it currently hears.
    type: bool
    default: false
  rollback:
    description:
      - With O(state=maintenance) and O(wait=true), when no peer takes the virtual IPs within
        O(wait_timeout), take the instances this task put into maintenance out of it again (so this
        node can hold the virtual IPs) before failing. V(false) leaves them in maintenance.
    type: bool
    default: true
  socket:
    description:
      - Path of the daemon's control socket (C(status_socket) in its configuration).
      - Changing maintenance needs root (C(become)) or the daemon's user.
    type: path
    default: /run/fleetproxy-vrrp/vrrp.sock
  timeout:
    description:
      - Seconds to wait for one answer of the daemon.
    type: float
    default: 10
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would change; reads the daemon's status, changes nothing and waits for nothing.
  diff_mode:
    support: full
    details:
      - Shows each instance as V(maintenance) or V(active) before and after.
  platform:
    platforms: posix
notes:
  - The module acts on the daemon of the host it runs on. The peer's daemon needs nothing; it must
    be running and not in maintenance itself, or nobody takes over.
  - The playbook C(fleetproxy.fleet.node_maintenance) moves the virtual IPs away, runs your tasks
    and brings the node back with this module.
  - The role C(fleetproxy.fleet.vip) deploys the daemon; the collection's README, section
    "Failover - fleetproxy vrrp", describes it.
requirements:
  - C(fleetproxy vrrp) running on the target host (the role C(fleetproxy.fleet.vip)).
seealso:
  - module: fleetproxy.fleet.backend_server
'''

EXAMPLES = r'''
- name: Move the virtual IPs to the peer and wait until it holds them
  fleetproxy.fleet.vrrp_state:
    state: maintenance
    wait_timeout: 20
  become: true

- name: Bring the node back and wait until it is master again (it preempts)
  fleetproxy.fleet.vrrp_state:
    state: active
    wait_master: true
  become: true

- name: Only one instance of a daemon that serves several
  fleetproxy.fleet.vrrp_state:
    state: maintenance
    instances: [web_vip]
    socket: /run/fleetproxy-vrrp/vrrp.sock
  become: true
'''

RETURN = r'''
before:
  description: Each selected instance as V(maintenance) or V(active) before the task.
  returned: success
  type: dict
  sample: {"vip": "active"}
after:
  description: Each selected instance as V(maintenance) or V(active) after the task (in check mode, what it would be).
  returned: success
  type: dict
  sample: {"vip": "maintenance"}
instances:
  description:
    - The selected instances as the daemon reports them after the task (and the wait).
    - C(state) is C(INIT), C(BACKUP), C(MASTER), C(FAULT) or C(MAINT); C(master) is the master's address
      as this node last heard it and C(master_age) how long ago (seconds); C(vips_held) whether this node
      holds the virtual IPs.
  returned: success
  type: list
  elements: dict
  sample:
    - name: vip
      state: MAINT
      maintenance: true
      priority: 150
      address: 198.18.0.11
      master: 198.18.0.12
      master_priority: 100
      master_age: 0.41
      master_down_interval: 3.609
      vips_held: false
      virtual_ips: ["198.18.0.100/24"]
      reason: "maintenance on (by uid 0 (pid 4242))"
waited:
  description: Seconds spent waiting; C(0) without O(wait) and in check mode.
  returned: success
  type: float
  sample: 0.73
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetproxy.fleet.plugins.module_utils.unix_http import APIError, UnixHTTPError
from ansible_collections.fleetproxy.fleet.plugins.module_utils.vrrp_control import (
    DEFAULT_SOCKET,
    VrrpControl,
    describe,
    is_active,
    is_master,
    peer_holds_vips,
)

POLL_INTERVAL = 0.1


def _label(inst):
    return 'maintenance' if inst.get('maintenance') else 'active'


def _select(module, status, names):
    by_name = dict((i['name'], i) for i in status.get('instances') or [])
    if names is None:
        return [by_name[n] for n in sorted(by_name)]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        module.fail_json(msg='no instance named %s in the daemon on %s (it has: %s)'
                         % (', '.join(repr(n) for n in unknown), module.params['socket'],
                            ', '.join(sorted(by_name)) or 'none'))
    return [by_name[n] for n in dict.fromkeys(names)]


def _poll(client, names, done, timeout):
    """Poll the status until ``done(instance)`` holds for every selected instance."""
    start = time.monotonic()
    deadline = start + max(0.0, timeout)
    while True:
        status = client.status()
        chosen = [i for i in status.get('instances') or [] if i['name'] in names]
        now = time.monotonic()
        if all(done(i) for i in chosen):
            return True, chosen, now - start
        if now >= deadline:
            return False, chosen, now - start
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - now)))


def _cannot_become_master(inst):
    if is_master(inst):
        return None
    if not inst.get('preempt'):
        return '%s does not preempt: it takes the virtual IPs back only when the master goes' % inst['name']
    theirs = inst.get('master_priority')
    if inst.get('master') and inst.get('master') != inst.get('address') and theirs is not None \
            and theirs >= inst.get('priority', 0):
        return ('%s has priority %s and the master it hears (%s) has %s: preemption needs a higher priority'
                % (inst['name'], inst.get('priority'), inst['master'], theirs))
    return None


def run(module, client):
    p = module.params
    on = p['state'] == 'maintenance'
    chosen = _select(module, client.status(), p['instances'])
    names = [i['name'] for i in chosen]
    before = dict((i['name'], _label(i)) for i in chosen)
    after = dict((n, p['state']) for n in names)
    to_change = [n for n in names if before[n] != after[n]]
    result = dict(changed=bool(to_change), before=before, after=after, instances=chosen, waited=0.0)
    if module._diff:
        result['diff'] = dict(before=before, after=after)

    if not on and p['wait'] and p['wait_master']:
        problems = [x for x in (_cannot_become_master(i) for i in chosen) if x]
        if problems:
            result.update(changed=False, after=dict(before))
            module.fail_json(msg='wait_master: %s; nothing was changed' % '; '.join(problems), **result)

    if module.check_mode:
        return result

    if to_change:
        answer = client.set_maintenance(on, to_change)
        changed_now = answer.get('changed') or []
        result['instances'] = [i for i in (answer.get('status') or {}).get('instances') or [] if i['name'] in names]
        result['changed'] = bool(changed_now)
    else:
        changed_now = []
    if not p['wait']:
        return result

    if on:
        ok, view, waited = _poll(client, names, peer_holds_vips, p['wait_timeout'])
        result.update(instances=view, waited=round(waited, 3))
        if ok:
            return result
        lines = [describe(i) for i in view if not peer_holds_vips(i)]
        msg = 'no peer took over the virtual IPs within %gs: %s' % (p['wait_timeout'], '; '.join(lines))
        if p['rollback'] and changed_now:
            client.set_maintenance(False, changed_now)
            result['instances'] = [i for i in client.status().get('instances') or [] if i['name'] in names]
            result['after'] = dict(before)
            result['changed'] = False
            msg += '. Maintenance was switched off again for %s so that this node can hold them' % ', '.join(changed_now)
        module.fail_json(msg=msg, **result)

    done = is_master if p['wait_master'] else is_active
    ok, view, waited = _poll(client, names, done, p['wait_timeout'])
    result.update(instances=view, waited=round(waited, 3))
    if not ok:
        module.fail_json(msg='not %s within %gs: %s'
                         % ('master again' if p['wait_master'] else 'back in the election (BACKUP or MASTER)',
                            p['wait_timeout'], '; '.join(describe(i) for i in view if not done(i))), **result)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', required=True, choices=['maintenance', 'active']),
            instances=dict(type='list', elements='str', aliases=['instance']),
            wait=dict(type='bool', default=True),
            wait_timeout=dict(type='float', default=30.0),
            wait_master=dict(type='bool', default=False),
            rollback=dict(type='bool', default=True),
            socket=dict(type='path', default=DEFAULT_SOCKET),
            timeout=dict(type='float', default=10.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p['wait_timeout'] < 0:
        module.fail_json(msg='wait_timeout must not be negative')
    if p['timeout'] <= 0:
        module.fail_json(msg='timeout must be positive')
    if p['wait_master'] and p['state'] != 'active':
        module.fail_json(msg='wait_master applies to state=active')
    if p['instances'] is not None and not all(p['instances']):
        module.fail_json(msg='instances: empty name')

    client = VrrpControl(p['socket'], timeout=p['timeout'])
    try:
        result = run(module, client)
    except APIError as exc:
        module.fail_json(msg='fleetproxy vrrp refused: %s' % exc.message, status=exc.status)
    except UnixHTTPError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
