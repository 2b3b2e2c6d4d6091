#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: backend_server
short_description: Drain, disable, enable or reweight a server of the local fleetproxy
description:
  - Sets the administrative state and/or the weight of one server of a backend of the
    fleetproxy running on the target host, through its admin socket, like HAProxy's
    C(set server BACKEND/SERVER state|weight) on the runtime API.
  - C(ready) takes traffic; C(drain) takes no new connections except clients pinned to it
    (cookie or stick table), and finishes its sessions; C(maint) takes nothing new at all.
    Sessions in progress are never cut unless O(shutdown_sessions=true).
  - Optionally waits until the server is drained (no active session) after C(drain) or
    C(maint), or healthy after C(ready).
  - Reports C(changed) only when the state or the weight actually changes (or sessions
    were shut down); traffic counters never count as a change.
  - The change is kept in the proxy's C(global.state_file), so it survives reloads and
    restarts while the server's definition in the configuration file stays the same.
version_added: 0.1.0
author:
  - fleetproxy contributors (@fleetproxy)
options:
  backend:
    description:
      - Name of the backend.
    type: str
    required: true
  name:
    description:
      - Name of the server in O(backend).
    type: str
    required: true
    aliases: [server]
  state:
    description:
      - The administrative state the server should be in.
      - C(ready) takes traffic when healthy; C(drain) keeps serving only its current
        sessions and clients pinned to it; C(maint) takes no new traffic at all.
      - When omitted, the state is left as it is.
    type: str
    choices: [ready, drain, maint]
  weight:
    description:
      - The server's weight, an integer from C(0) to C(256), or a percentage of the weight in
        its definition such as C(50%) (rounded, HAProxy's rule).
      - C(0) keeps the server up but sends it no new traffic (like C(drain) for balancing).
      - When omitted, the weight is left as it is.
    type: str
  wait:
    description:
      - Wait until the server reaches what the state promises, bounded by O(wait_timeout).
      - With C(drain) or C(maint), until the server has no active session; the condition must
        hold for a few hundred milliseconds (the proxy's workers report their counters every
        100 ms) before it is believed.
      - With C(ready), until health checks report the server up (at once for a server
        without health checks).
      - When O(state) is omitted, waits according to the server's current state.
      - The module fails when the wait times out, reporting what it did change.
      - Nothing is awaited in check mode.
    type: bool
    default: false
  wait_timeout:
    description:
      - Seconds to wait for with O(wait=true).
    type: float
    default: 60
  shutdown_sessions:
    description:
      - With O(state=drain) or O(state=maint), terminate the sessions still open on the server.
      - With O(wait=false) this happens right after the state change. With O(wait=true) only the
        sessions still open when O(wait_timeout) expires are terminated, and the module then
        succeeds instead of failing (a graceful drain with a deadline).
      - Not allowed with O(state=ready).
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetproxy.fleet.proxy_admin
attributes:
  check_mode:
    support: full
    details:
      - Reports the change it would make; reads the proxy's state but changes nothing and
        waits for nothing.
  diff_mode:
    support: full
    details:
      - Shows the server's state and weight before and after.
  platform:
    platforms: posix
seealso:
  - module: fleetproxy.fleet.backend
  - module: fleetproxy.fleet.proxy_info
  - name: HAProxy management guide, set server
    description: The runtime API command this module mirrors.
    link: https://docs.haproxy.org/2.6/management.html#9.3-set%20server
'''

EXAMPLES = r'''
- name: Drain server1 and wait until its last session is done
  fleetproxy.fleet.backend_server:
    backend: http_back
    name: server1
    state: drain
    wait: true
    wait_timeout: 120
  become: true

- name: Put server1 in maintenance; cut what is still open after 30 seconds
  fleetproxy.fleet.backend_server:
    backend: http_back
    name: server1
    state: maint
    wait: true
    wait_timeout: 30
    shutdown_sessions: true
  become: true

- name: Enable server1 again and wait until health checks see it up
  fleetproxy.fleet.backend_server:
    backend: http_back
    name: server1
    state: ready
    wait: true
  become: true

- name: Send server2 half of its configured share of traffic
  fleetproxy.fleet.backend_server:
    backend: http_back
    name: server2
    weight: 50%
    socket: /run/fleetproxy/admin.sock
  become: true
'''

RETURN = r'''
before:
  description: The server's administrative state and weight before the task.
  returned: success
  type: dict
  sample: {"state": "ready", "weight": 10}
after:
  description:
    - The server's administrative state and weight after the task.
    - In check mode, what they would be.
  returned: success
  type: dict
  sample: {"state": "drain", "weight": 10}
server:
  description:
    - The server as the admin API reports it after the task (C(GET /v1/backends/B/servers/S)),
      with health, check status and counters. See M(fleetproxy.fleet.proxy_info).
  returned: success
  type: dict
  sample:
    name: server1
    backend: http_back
    address: 198.18.0.21:8080
    state: drain
    health: up
    usable: false
    backup: false
    weight: 10
    admin_weight: 10
    config_weight: 10
    sessions: {"current": 0, "max": 12, "total": 5231}
waited:
  description: Seconds spent waiting (O(wait=true)); C(0) otherwise.
  returned: success
  type: float
  sample: 3.42
sessions_killed:
  description: Number of sessions terminated by O(shutdown_sessions).
  returned: success
  type: int
  sample: 0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetproxy.fleet.plugins.module_utils.proxy_admin import (
    DRAIN_SETTLE,
    ProxyAdmin,
    admin_argument_spec,
    fail_json_from,
    parse_weight,
    resolve_weight,
    server_summary,
    sessions,
    wait_for,
)
from ansible_collections.fleetproxy.fleet.plugins.module_utils.unix_http import UnixHTTPError

SHUTDOWN_GRACE = 5.0  # seconds for killed sessions to disappear from the counters


def _drained(view):
    return sessions(view) == 0


def _healthy(view):
    return view['health'] == 'up'


def run(module, client):
    p = module.params
    backend, name = p['backend'], p['name']
    result = dict(changed=False, waited=0.0, sessions_killed=0)

    view = client.server(backend, name)
    before = server_summary(view)
    after = dict(before)
    if p['state'] is not None:
        after['state'] = p['state']
    if p['weight'] is not None:
        try:
            after['weight'] = resolve_weight(p['weight'], view['config_weight'])
        except ValueError as exc:
            module.fail_json(msg='weight: %s' % exc, **result)

    result.update(before=before, after=after, server=view)
    if module._diff:
        label = '%s/%s' % (backend, name)
        result['diff'] = dict(before=before, after=after, before_header=label, after_header=label)

    change = {}
    if after['state'] != before['state']:
        change['state'] = after['state']
    if after['weight'] != before['weight']:
        # Send what the user wrote: the proxy applies its own rule to a percentage.
        change['weight'] = p['weight'] if parse_weight(p['weight'])[1] is not None else after['weight']
    result['changed'] = bool(change)

    if module.check_mode:
        return result

    if change:
        view = client.set_server(backend, name, **change)
        result['server'] = view
        result['after'] = server_summary(view)

    state = view['state']
    if state == 'ready':
        if p['wait']:
            ok, view, waited = wait_for(lambda: client.server(backend, name), _healthy, p['wait_timeout'])
            result.update(server=view, waited=round(waited, 3))
            if not ok:
                check = view.get('check') or {}
                detail = ', '.join(x for x in (check.get('status'), check.get('description')) if x)
                module.fail_json(msg='server %s/%s is still down after %.0fs%s'
                                 % (backend, name, p['wait_timeout'], ' (last check: %s)' % detail if detail else ''),
                                 **result)
        return result

    # drain or maint
    if p['wait']:
        ok, view, waited = wait_for(lambda: client.server(backend, name), _drained, p['wait_timeout'],
                                    settle=DRAIN_SETTLE)
        result.update(server=view, waited=round(waited, 3))
        if ok:
            return result
        if not p['shutdown_sessions']:
            module.fail_json(msg='server %s/%s still has %d active session(s) after %.0fs in %s'
                             % (backend, name, sessions(view), p['wait_timeout'], state), **result)
    elif p['shutdown_sessions'] and not change:
        # Nothing changed: only cut sessions that are really there (a fresh state change
        # may not show its last sessions yet, so then the command is always sent).
        view = client.server(backend, name)
        result['server'] = view
        if _drained(view):
            return result

    if p['shutdown_sessions']:
        result['sessions_killed'] = client.shutdown_sessions(backend, name)
        if result['sessions_killed']:
            result['changed'] = True
        ok, view, waited = wait_for(lambda: client.server(backend, name), _drained, SHUTDOWN_GRACE,
                                    settle=DRAIN_SETTLE)
        result.update(server=view, waited=round(result['waited'] + waited, 3))
        if not ok:
            module.fail_json(msg='server %s/%s still has %d active session(s) %.0fs after they were shut down'
                             % (backend, name, sessions(view), SHUTDOWN_GRACE), **result)
    return result


def main():
    argument_spec = dict(
        backend=dict(type='str', required=True),
        name=dict(type='str', required=True, aliases=['server']),
        state=dict(type='str', choices=['ready', 'drain', 'maint']),
        weight=dict(type='str'),
        wait=dict(type='bool', default=False),
        wait_timeout=dict(type='float', default=60.0),
        shutdown_sessions=dict(type='bool', default=False),
    )
    argument_spec.update(admin_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params

    # Bad arguments fail before anything is asked of the proxy.
    if p['weight'] is not None:
        try:
            parse_weight(p['weight'])
        except ValueError as exc:
            module.fail_json(msg='weight: %s' % exc)
    if p['wait_timeout'] < 0:
        module.fail_json(msg='wait_timeout must not be negative')
    if p['timeout'] <= 0:
        module.fail_json(msg='timeout must be positive')
    if p['shutdown_sessions'] and p['state'] == 'ready':
        module.fail_json(msg='shutdown_sessions applies to state drain or maint, not ready')

    client = ProxyAdmin(p['socket'], timeout=p['timeout'])
    try:
        result = run(module, client)
    except UnixHTTPError as exc:
        fail_json_from(module, exc)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
