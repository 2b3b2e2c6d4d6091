#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: proxy_info
short_description: Read the frontends, backends and servers of the local fleetproxy
description:
  - Returns what the admin API of the fleetproxy running on the target host reports about the
    process, its frontends, and its backends with every server's state, health, weight,
    health-check status and counters.
  - Meant for C(assert) tasks and for decisions in playbooks (which servers are up, is a
    server drained).
  - Fails when no proxy answers on O(socket); with O(fail_if_absent=false) it returns
    RV(running=false) instead.
version_added: 0.1.0
author:
  - fleetproxy contributors (@fleetproxy)
options:
  backends:
    description:
      - Only these backends (by name). Unknown names fail the task.
      - All backends when omitted.
    type: list
    elements: str
  gather:
    description:
      - What to read.
    type: list
    elements: str
    choices: [info, frontends, backends]
    default: [info, frontends, backends]
  fail_if_absent:
    description:
      - When V(false), a proxy that is not running (no socket, or nothing listening) is not an
        error; the module returns RV(running=false).
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - fleetproxy.fleet.proxy_admin
attributes:
  check_mode:
    support: full
    details:
      - The module only reads; it runs the same in check mode.
  diff_mode:
    support: N/A
    details:
      - The module only reads.
  platform:
    platforms: posix
seealso:
  - module: fleetproxy.fleet.backend_server
  - module: fleetproxy.fleet.backend
'''

EXAMPLES = r'''
- name: Read the proxy's state
  fleetproxy.fleet.proxy_info:
  register: proxy
  become: true

- name: Both servers of http_back are up and ready
  ansible.builtin.assert:
    that:
      - proxy.servers['http_back/server1'].health == 'up'
      - proxy.servers['http_back/server2'].state == 'ready'
      - proxy.backends | selectattr('name', 'eq', 'http_back') | map(attribute='usable_servers') | first == 2

- name: Only one backend, no frontends
  fleetproxy.fleet.proxy_info:
    backends: [http_back]
    gather: [backends]
  register: back
  become: true
'''

RETURN = r'''
running:
  description: Whether a proxy answered on O(socket).
  returned: always
  type: bool
  sample: true
healthy:
  description: Whether the proxy says it serves (C(GET /v1/health)); false while it starts or stops.
  returned: when running
  type: bool
  sample: true
info:
  description: The process (C(GET /v1/info)).
  returned: when running and C(info) is gathered
  type: dict
  sample:
    version: 0.1.0
    pid: 812
    uptime_s: 3600.2
    config: /etc/fleetproxy/fleetproxy.yml
    generation: 3
    reloads: 2
    last_reload_error: null
    workers: [{"pid": 3301, "generation": 3, "stopping": false}]
frontends:
  description: Every frontend (C(GET /v1/frontends)) with its binds and counters.
  returned: when running and C(frontends) is gathered
  type: list
  elements: dict
  sample:
    - name: http_front
      mode: http
      bind: ["*:80"]
      default_backend: http_back
      sessions: {"current": 3, "max": 80, "total": 120453}
      requests: 240110
backends:
  description: Every backend (or those in O(backends)) with its servers (C(GET /v1/backends)).
  returned: when running and C(backends) is gathered
  type: list
  elements: dict
  sample:
    - name: http_back
      mode: http
      balance: roundrobin
      status: UP
      usable_servers: 2
      servers:
        - name: server1
          address: 198.18.0.21:8080
          state: ready
          health: up
          usable: true
          weight: 1
          admin_weight: 1
          config_weight: 1
          check: {"configured": true, "enabled": true, "status": "L7OK", "description": "HTTP status 200"}
          sessions: {"current": 1, "max": 40, "total": 60211}
servers:
  description: The same servers, keyed C(BACKEND/SERVER), for direct lookups in asserts.
  returned: when running and C(backends) is gathered
  type: dict
  sample:
    http_back/server1: {"name": "server1", "backend": "http_back", "state": "ready", "health": "up"}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetproxy.fleet.plugins.module_utils.proxy_admin import (
    ProxyAdmin,
    admin_argument_spec,
    fail_json_from,
)
from ansible_collections.fleetproxy.fleet.plugins.module_utils.unix_http import SocketError, UnixHTTPError


def gather(module, client):
    p = module.params
    result = dict(changed=False, running=True)
    result['healthy'] = client.health()[0]
    if 'info' in p['gather']:
        result['info'] = client.info()
    if 'frontends' in p['gather']:
        result['frontends'] = client.frontends()
    if 'backends' in p['gather']:
        if p['backends'] is None:
            backends = client.backends()
        else:
            backends = [client.backend(name) for name in p['backends']]
        result['backends'] = backends
        result['servers'] = dict(('%s/%s' % (b['name'], s['name']), s)
                                 for b in backends for s in b.get('servers') or [])
    return result


def main():
    argument_spec = dict(
        backends=dict(type='list', elements='str'),
        gather=dict(type='list', elements='str', choices=['info', 'frontends', 'backends'],
                    default=['info', 'frontends', 'backends']),
        fail_if_absent=dict(type='bool', default=True),
    )
    argument_spec.update(admin_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if module.params['timeout'] <= 0:
        module.fail_json(msg='timeout must be positive')

    client = ProxyAdmin(module.params['socket'], timeout=module.params['timeout'])
    try:
        result = gather(module, client)
    except SocketError as exc:
        if exc.missing and not module.params['fail_if_absent']:
            module.exit_json(changed=False, running=False, msg=str(exc))
        fail_json_from(module, exc, running=not exc.missing)
    except UnixHTTPError as exc:
        fail_json_from(module, exc, running=True)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
