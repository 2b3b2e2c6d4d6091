#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: backend
short_description: Make a fleetproxy backend's server list what you declare, at runtime
description:
  - Compares the servers of a backend of the fleetproxy running on the target host with the
    list in O(servers) and changes the running proxy, through its admin socket, until they
    match, without failing a request.
  - A server in O(servers) that the backend lacks is added, and the module waits until
    health checks see it up (O(wait)).
  - A server the backend has that O(servers) does not list is drained (no new connections),
    and once its last session is done (bounded by O(wait_timeout)) it is put in maintenance
    and removed.
  - A server whose weight or state differs from O(servers) is changed in place.
  - A server whose definition differs (its address, C(backup), or a health-check setting
    that the admin API reports) is replaced under the same name, one at a time (drained,
    removed, added with the new definition, awaited).
  - New servers are added and awaited before anything is drained, so capacity grows before it
    shrinks; a replacement takes one server out of rotation at a time.
  - Runtime additions, removals, weights and states are kept in the proxy's
    C(global.state_file), so the result survives reloads and restarts (set
    C(global.state_file) in the proxy's configuration).
version_added: 0.1.0
author:
  - fleetproxy contributors (@fleetproxy)
options:
  name:
    description:
      - Name of the backend. It must exist in the proxy's configuration; this module manages
        its servers, not the backend itself.
    type: str
    required: true
    aliases: [backend]
  servers:
    description:
      - The complete list of servers the backend should have, in the same terms as a server
        in the proxy's configuration file (C(backends[].servers[])).
      - Settings left out are not compared for a server that already exists, and take the
        backend's C(default_server) (or the configuration's C(defaults)) for a new one.
      - The settings C(check_address), C(fastinter), C(downinter), C(init_state), C(slowstart),
        C(observe), C(error_limit) and C(on_error) are applied when a server is added; the
        admin API does not report them, so they are not compared for an existing server.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name of the server (letters, digits, C(_), C(-), C(.), C(:)), unique in the list.
        type: str
        required: true
      address:
        description:
          - C(host:port) or C([ipv6]:port). A host name is resolved by the proxy when the
            server is added (and by the module, on the target, to compare).
        type: str
        required: true
      weight:
        description:
          - Weight, C(0) to C(256). For an existing server, the administrative weight (the one
            M(fleetproxy.fleet.backend_server) sets) is compared and set.
        type: int
      backup:
        description:
          - Only used when no non-backup server is usable.
          - Unlike the other settings, leaving it out means C(false).
        type: bool
      state:
        description:
          - The server's administrative state. When left out, an existing server keeps its
            state and a new one is added C(ready).
          - A server left in C(drain) by an interrupted removal (O(wait_timeout) expired) stays
            drained if you list it again without O(servers[].state=ready).
        type: str
        choices: [ready, drain, maint]
      check:
        description:
          - Whether the server has active health checks.
        type: bool
      check_address:
        description:
          - Address to check instead of O(servers[].address) (C(host:port)).
        type: str
      inter:
        description:
          - Interval between two health checks, a duration such as C(2s) or C(500ms).
        type: str
      fastinter:
        description:
          - Interval between checks while the server changes state.
        type: str
      downinter:
        description:
          - Interval between checks while the server is down.
        type: str
      rise:
        description:
          - Consecutive successful checks that bring the server up.
        type: int
      fall:
        description:
          - Consecutive failed checks that bring the server down.
        type: int
      init_state:
        description:
          - Health the server starts with before its first check.
        type: str
        choices: [up, down]
      slowstart:
        description:
          - Duration over which the weight ramps up once the server comes up.
        type: str
      maxconn:
        description:
          - Most concurrent connections to the server; more wait in the backend's queue.
        type: int
      observe:
        description:
          - Passive health checks on live traffic.
        type: str
        choices: [none, layer4, layer7]
      error_limit:
        description:
          - Consecutive errors seen by passive checks before O(servers[].on_error) applies.
        type: int
      on_error:
        description:
          - What passive checks do after O(servers[].error_limit) errors.
        type: str
        choices: [mark-down, fastinter]
      cookie:
        description:
          - Cookie value that pins clients to this server, when the backend has C(cookie).
        type: str
  wait:
    description:
      - Wait, bounded by O(wait_timeout), until every server this task adds or replaces (and
        every server it sets C(ready)) is reported up by health checks.
      - Servers being removed are always awaited until their last session is done, since the
        proxy removes only a server without sessions.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds that each wait may take (new servers healthy; removed servers drained; each
        replaced server).
    type: float
    default: 300
  shutdown_sessions:
    description:
      - When a server to be removed or replaced still has sessions after O(wait_timeout),
        terminate them and go on, instead of failing.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetproxy.fleet.proxy_admin
attributes:
  check_mode:
    support: full
    details:
      - Reports the plan (RV(plan)) without changing or waiting for anything.
  diff_mode:
    support: full
    details:
      - Shows the backend's servers (address, weight, backup, state) before and after.
  platform:
    platforms: posix
notes:
  - Replacing a server under the same name survives a reload only if the configuration file
    does not define a server of that name (when it does, the file's definition wins on
    reload). Give a new server a new name, or update the configuration (the role's
    C(fleetproxy_backends)) in the same play.
seealso:
  - module: fleetproxy.fleet.backend_server
  - module: fleetproxy.fleet.proxy_info
'''

EXAMPLES = r'''
- name: Replace server2 by server3, one proxy at a time
  hosts: proxies
  serial: 1
  become: true
  tasks:
    - name: The backend has server1 and server3
      fleetproxy.fleet.backend:
        name: http_back
        servers:
          - name: server1
            address: 198.18.0.21:8080
            weight: 10
            check: true
          - name: server3
            address: 198.18.0.23:8080
            weight: 10
            check: true
            inter: 2s
            rise: 2
        wait_timeout: 120

    - name: Show what would change
      fleetproxy.fleet.backend:
        name: http_back
        servers: "{{ fleetproxy_backends | selectattr('name', 'eq', 'http_back') | map(attribute='servers') | first }}"
      check_mode: true
      diff: true
      register: plan

    - name: Print the plan
      ansible.builtin.debug:
        var: plan.plan
'''

RETURN = r'''
plan:
  description:
    - What the task did, or in check mode would do.
    - C(add), C(replace) and C(remove) list server names; C(update) maps a server name to
      the settings changed in place (C(state), C(weight)).
  returned: always
  type: dict
  contains:
    add:
      description: Servers added.
      type: list
      elements: str
    replace:
      description: Servers replaced under the same name (see RV(replace_reasons)).
      type: list
      elements: str
    remove:
      description: Servers drained and removed.
      type: list
      elements: str
    update:
      description: Servers changed in place, with the new C(state) and/or C(weight).
      type: dict
  sample:
    add: [server3]
    replace: []
    remove: [server2]
    update: {server1: {weight: 20}}
servers:
  description:
    - The backend's servers as the admin API reports them after the task (before it, in
      check mode), with state, health and counters.
  returned: success
  type: list
  elements: dict
  sample:
    - name: server1
      backend: http_back
      address: 198.18.0.21:8080
      state: ready
      health: up
      weight: 20
      admin_weight: 20
      config_weight: 10
      backup: false
waited:
  description: Seconds spent waiting for servers to come up or to drain.
  returned: success
  type: float
  sample: 4.2
sessions_killed:
  description: Sessions terminated because of O(shutdown_sessions).
  returned: success
  type: int
  sample: 0
replace_reasons:
  description: For each server in RV(plan.replace), the settings that differ.
  returned: when a server is (or would be) replaced
  type: dict
  sample: {server2: ["address 198.18.0.22:8080 -> 198.18.0.24:8080"]}
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetproxy.fleet.plugins.module_utils.proxy_admin import (
    DRAIN_SETTLE,
    MAX_WEIGHT,
    STATES,
    ProxyAdmin,
    admin_argument_spec,
    fail_json_from,
    parse_duration,
    same_address,
    sessions,
    split_address,
    valid_name,
    wait_for,
)
from ansible_collections.fleetproxy.fleet.plugins.module_utils.unix_http import APIError, UnixHTTPError

SERVER_SPEC = dict(
    name=dict(type='str', required=True),
    address=dict(type='str', required=True),
    weight=dict(type='int'),
    backup=dict(type='bool'),
    state=dict(type='str', choices=list(STATES)),
    check=dict(type='bool'),
    check_address=dict(type='str'),
    inter=dict(type='str'),
    fastinter=dict(type='str'),
    downinter=dict(type='str'),
    rise=dict(type='int'),
    fall=dict(type='int'),
    init_state=dict(type='str', choices=['up', 'down']),
    slowstart=dict(type='str'),
    maxconn=dict(type='int'),
    observe=dict(type='str', choices=['none', 'layer4', 'layer7']),
    error_limit=dict(type='int'),
    on_error=dict(type='str', choices=['mark-down', 'fastinter']),
    cookie=dict(type='str'),
)
# Keys of a server definition as the proxy's configuration (and POST) takes them.
DEFINITION_KEYS = [k for k in SERVER_SPEC if k != 'state']
DURATIONS = ('inter', 'fastinter', 'downinter', 'slowstart')
RANGES = dict(weight=(0, MAX_WEIGHT), rise=(1, 1000), fall=(1, 1000), maxconn=(1, None), error_limit=(1, 100000))
SHUTDOWN_GRACE = 5.0


def validate(servers):
    """Every problem of the desired list, before anything is changed."""
    errors = []
    seen = set()
    for i, srv in enumerate(servers):
        where = 'servers[%d]' % i
        name = srv['name']
        if not valid_name(name):
            errors.append("%s.name: invalid name %r: use letters, digits, '_', '-', '.', ':'" % (where, name))
        elif name in seen:
            errors.append('%s.name: duplicate server name %r' % (where, name))
        seen.add(name)
        for key in ('address', 'check_address'):
            if srv[key] is not None:
                try:
                    split_address(srv[key])
                except ValueError as exc:
                    errors.append('%s.%s: %s' % (where, key, exc))
        for key in DURATIONS:
            if srv[key] is not None:
                try:
                    parse_duration(srv[key])
                except ValueError as exc:
                    errors.append('%s.%s: %s' % (where, key, exc))
        for key, (low, high) in RANGES.items():
            value = srv[key]
            if value is not None and (value < low or (high is not None and value > high)):
                errors.append('%s.%s: %d out of range (%d-%s)' % (where, key, value, low, high or 'unlimited'))
        if srv['cookie'] is not None and not valid_cookie(srv['cookie']):
            errors.append('%s.cookie: %r is not a valid cookie value' % (where, srv['cookie']))
    return errors


def valid_cookie(value):
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return bool(value) and all(c in allowed for c in value)


def definition(srv):
    """The POST body: only what the user set (the proxy fills the rest from defaults)."""
    body = dict((k, srv[k]) for k in DEFINITION_KEYS if srv[k] is not None)
    if srv['state'] == 'maint' or srv['state'] == 'drain':
        body['disabled'] = True  # never ready, not even for a moment
    return body


def drift(srv, view):
    """Settings of the definition that differ from the running server (-> replace)."""
    out = []
    if not same_address(srv['address'], view['address']):
        out.append('address %s -> %s' % (view['address'], srv['address']))
    if bool(srv['backup']) != bool(view['backup']):
        out.append('backup %s -> %s' % (view['backup'], bool(srv['backup'])))
    check = view.get('check') or {}
    if srv['check'] is not None and srv['check'] != bool(check.get('configured')):
        out.append('check %s -> %s' % (check.get('configured'), srv['check']))
    if srv['inter'] is not None and check.get('inter_ms') is not None:
        wanted = int(parse_duration(srv['inter']) * 1000)
        if wanted != check['inter_ms']:
            out.append('inter %dms -> %dms' % (check['inter_ms'], wanted))
    for key in ('rise', 'fall'):
        if srv[key] is not None and check.get(key) is not None and srv[key] != check[key]:
            out.append('%s %s -> %s' % (key, check[key], srv[key]))
    if srv['maxconn'] is not None and srv['maxconn'] != (view.get('maxconn') or None):
        out.append('maxconn %s -> %s' % (view.get('maxconn') or 'none', srv['maxconn']))
    if srv['cookie'] is not None and view.get('cookie') is not None and srv['cookie'] != view['cookie']:
        out.append('cookie %s -> %s' % (view['cookie'], srv['cookie']))
    return out


def summary(view):
    return dict(address=view['address'], weight=view['admin_weight'], backup=view['backup'], state=view['state'])


def planned_summary(srv, old=None):
    out = dict(address=srv['address'], backup=bool(srv['backup']))
    out['weight'] = srv['weight'] if srv['weight'] is not None else (old['weight'] if old else 'default')
    out['state'] = srv['state'] or (old['state'] if old else 'ready')
    return out


def make_plan(desired, current):
    by_name = dict((v['name'], v) for v in current)
    plan = dict(add=[], replace=[], remove=[], update={})
    reasons = {}
    for srv in desired:
        view = by_name.get(srv['name'])
        if view is None:
            plan['add'].append(srv['name'])
            continue
        why = drift(srv, view)
        if why:
            plan['replace'].append(srv['name'])
            reasons[srv['name']] = why
            continue
        update = {}
        if srv['weight'] is not None and srv['weight'] != view['admin_weight']:
            update['weight'] = srv['weight']
        if srv['state'] is not None and srv['state'] != view['state']:
            update['state'] = srv['state']
        if update:
            plan['update'][srv['name']] = update
    wanted = set(s['name'] for s in desired)
    plan['remove'] = [v['name'] for v in current if v['name'] not in wanted]
    return plan, reasons


class Runner(object):
    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.backend = module.params['name']
        self.timeout = module.params['wait_timeout']
        self.result = dict(changed=False, waited=0.0, sessions_killed=0)

    def fail(self, msg):
        self.result['servers'] = self.servers_now(quiet=True)
        self.module.fail_json(msg=msg, **self.result)

    def servers_now(self, quiet=False):
        try:
            return self.client.servers(self.backend)
        except UnixHTTPError:
            if quiet:
                return self.result.get('servers')
            raise

    def view(self, name):
        return self.client.server(self.backend, name)

    def waited(self, seconds):
        self.result['waited'] = round(self.result['waited'] + seconds, 3)

    # -- steps ----------------------------------------------------------------------------
    def add(self, srv):
        self.client.add_server(self.backend, definition(srv))
        self.result['changed'] = True
        if srv['state'] == 'drain':
            self.client.set_server(self.backend, srv['name'], state='drain')

    def wait_healthy(self, names):
        if not names:
            return
        pending = list(names)

        def fetch():
            return [self.view(n) for n in pending]

        ok, views, waited = wait_for(fetch, lambda vs: all(v['health'] == 'up' for v in vs), self.timeout)
        self.waited(waited)
        if not ok:
            down = []
            for v in views:
                if v['health'] != 'up':
                    check = v.get('check') or {}
                    detail = ', '.join(x for x in (check.get('status'), check.get('description')) if x)
                    down.append('%s%s' % (v['name'], ' (%s)' % detail if detail else ''))
            self.fail('backend %s: server(s) still down after %.0fs: %s'
                      % (self.backend, self.timeout, '; '.join(down)))

    def retire(self, names):
        """Drain, wait for the last session, maint, delete."""
        if not names:
            return
        deadline = time.monotonic() + self.timeout
        for name in names:
            v = self.view(name)
            if v['state'] == 'ready':
                self.client.set_server(self.backend, name, state='drain')
                self.result['changed'] = True

        def fetch():
            return [self.view(n) for n in names]

        ok, views, waited = wait_for(fetch, lambda vs: all(sessions(v) == 0 for v in vs), self.timeout,
                                     settle=DRAIN_SETTLE)
        self.waited(waited)
        busy = [v for v in views if sessions(v)]
        if not ok and not self.module.params['shutdown_sessions']:
            self.fail('backend %s: server(s) still busy after %.0fs draining: %s'
                      % (self.backend, self.timeout,
                         ', '.join('%s (%d sessions)' % (v['name'], sessions(v)) for v in busy)))
        for name in names:
            if self.view(name)['state'] != 'maint':
                self.client.set_server(self.backend, name, state='maint')
                self.result['changed'] = True
        if not ok:
            for v in busy:
                self.kill(v['name'])
        # In maint nothing new arrives; a session a pinned client opened while the
        # server drained gets the rest of the wait to finish (the proxy waits for it).
        for name in names:
            self.delete(name, max(deadline - time.monotonic(), SHUTDOWN_GRACE))

    def kill(self, name):
        killed = self.client.shutdown_sessions(self.backend, name)
        self.result['sessions_killed'] += killed
        if killed:
            self.result['changed'] = True

    def delete(self, name, wait):
        start = time.monotonic()
        try:
            try:
                self.client.delete_server(self.backend, name, wait=wait)
            except APIError as exc:
                if exc.status != 409 or not self.module.params['shutdown_sessions']:
                    raise
                self.kill(name)
                self.client.delete_server(self.backend, name, wait=SHUTDOWN_GRACE)
        except APIError as exc:
            self.waited(time.monotonic() - start)
            self.fail('backend %s: could not remove server %s: %s' % (self.backend, name, exc.message))
        self.waited(time.monotonic() - start)
        self.result['changed'] = True

    def update(self, name, change):
        self.client.set_server(self.backend, name, **change)
        self.result['changed'] = True


def run(r):
    module, client = r.module, r.client
    p = module.params
    desired = p['servers']
    backend = client.backend(p['name'])
    current = backend.get('servers') or []
    plan, reasons = make_plan(desired, current)
    r.result.update(plan=plan, servers=current)
    r.result['changed'] = bool(plan['add'] or plan['replace'] or plan['remove'] or plan['update'])
    if reasons:
        r.result['replace_reasons'] = reasons

    if module._diff:
        before = dict((v['name'], summary(v)) for v in current)
        after = {}
        old = dict((v['name'], summary(v)) for v in current)
        for srv in desired:
            if srv['name'] in plan['add'] or srv['name'] in plan['replace']:
                after[srv['name']] = planned_summary(srv)
            else:
                after[srv['name']] = planned_summary(srv, old[srv['name']])
                after[srv['name']]['address'] = old[srv['name']]['address']
        label = 'backend %s' % p['name']
        r.result['diff'] = dict(before=dict(servers=before), after=dict(servers=after),
                                before_header=label, after_header=label)

    if module.check_mode or not r.result['changed']:
        return r.result
    r.result['changed'] = False  # from here on: what was really done

    by_name = dict((s['name'], s) for s in desired)
    if plan['replace']:
        module.warn('backend %s: replacing %s under the same name; if the configuration file defines a '
                    'server of that name, a reload brings back the file\'s definition'
                    % (p['name'], ', '.join(plan['replace'])))

    # 1. New servers first, so capacity only grows before anything drains.
    for name in plan['add']:
        r.add(by_name[name])
    if p['wait']:
        r.wait_healthy([n for n in plan['add'] if by_name[n]['state'] in (None, 'ready')])

    # 2. Changes in place.
    for name, change in plan['update'].items():
        r.update(name, change)
    if p['wait']:
        r.wait_healthy([n for n, c in plan['update'].items() if c.get('state') == 'ready'])

    # 3. Replacements, one at a time.
    for name in plan['replace']:
        r.retire([name])
        r.add(by_name[name])
        if p['wait'] and by_name[name]['state'] in (None, 'ready'):
            r.wait_healthy([name])

    # 4. Removals, drained together.
    r.retire(plan['remove'])

    r.result['servers'] = client.servers(p['name'])
    return r.result


def main():
    argument_spec = dict(
        name=dict(type='str', required=True, aliases=['backend']),
        servers=dict(type='list', elements='dict', required=True, options=SERVER_SPEC),
        wait=dict(type='bool', default=True),
        wait_timeout=dict(type='float', default=300.0),
        shutdown_sessions=dict(type='bool', default=False),
    )
    argument_spec.update(admin_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params

    errors = validate(p['servers'])
    if p['wait_timeout'] < 0:
        errors.append('wait_timeout must not be negative')
    if p['timeout'] <= 0:
        errors.append('timeout must be positive')
    if errors:
        module.fail_json(msg='; '.join(errors), errors=errors)

    runner = Runner(module, ProxyAdmin(p['socket'], timeout=p['timeout']))
    try:
        result = run(runner)
    except UnixHTTPError as exc:
        fail_json_from(module, exc, **runner.result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
