#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vip
short_description: Ensure a virtual IP address is on an interface, or not, and announce it
description:
  - Adds an IPv4 or IPv6 address to a network interface, or removes it, through netlink
    (pyroute2), like C(ip address add|del ADDRESS dev INTERFACE).
  - When it adds an IPv4 address, sends gratuitous ARP announcements (RFC 5227 ARP requests
    whose sender and target are the address) on the interface, so that neighbours and
    switches update their tables at once, as keepalived does when it takes a virtual IP.
  - Use it for a statically placed address, or to place or clear a VIP by hand. Where
    C(fleetproxy vrrp) manages a VIP (the C(fleetproxy.fleet.vip) role), it moves the address
    by itself; do not fight it with this module.
version_added: 0.1.0
author:
  - fleetproxy contributors (@fleetproxy)
options:
  address:
    description:
      - The address, with an optional prefix length (C(198.18.0.100/24)). Without one, C(/32)
        (IPv4) or C(/128) (IPv6), as keepalived's C(virtual_ipaddress).
      - An address that is present with another prefix length is replaced.
      - With O(state=absent), the address is removed whatever its prefix length.
    type: str
    required: true
  interface:
    description:
      - The interface, such as C(eth0). It must exist.
    type: str
    required: true
  state:
    description:
      - Whether the address should be on the interface.
    type: str
    choices: [present, absent]
    default: present
  garp_count:
    description:
      - Gratuitous ARP announcements to send when an IPv4 address is added; C(0) sends none.
      - Nothing is sent on an interface that is down, has C(NOARP) (such as C(lo) or a dummy
        interface), or for an IPv6 address.
    type: int
    default: 3
  garp_interval:
    description:
      - Seconds between two announcements.
    type: float
    default: 0.2
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports whether the address would be added or removed; sends nothing.
  diff_mode:
    support: full
    details:
      - Shows the interface's addresses of the same IP version before and after.
  platform:
    platforms: linux
requirements:
  - pyroute2 (0.7 or later) for the Python that runs the module, e.g. the Debian/Ubuntu package
    C(python3-pyroute2), or the proxy's virtualenv (C(ansible_python_interpreter=/opt/fleetproxy/bin/python)).
  - root, or C(CAP_NET_ADMIN) and C(CAP_NET_RAW).
notes:
  - For an IPv6 address the module sends no announcement; the address is added without
    duplicate address detection (C(nodad)) so that it is usable at once.
seealso:
  - name: RFC 5227, IPv4 Address Conflict Detection (ARP announcements)
    description: The gratuitous ARP the module sends.
    link: https://www.rfc-editor.org/rfc/rfc5227#section-2.3
'''

EXAMPLES = r'''
- name: The VIP is on eth0 of this node
  fleetproxy.fleet.vip:
    address: 198.18.0.100/24
    interface: eth0
  become: true

- name: Take the VIP away from this node
  fleetproxy.fleet.vip:
    address: 198.18.0.100
    interface: eth0
    state: absent
  become: true

- name: Add an address with the proxy's Python (which has pyroute2), announcing it 5 times
  fleetproxy.fleet.vip:
    address: 198.18.0.101/32
    interface: eth1
    garp_count: 5
    garp_interval: 0.5
  vars:
    ansible_python_interpreter: /opt/fleetproxy/bin/python
  become: true
'''

RETURN = r'''
address:
  description: The address with its prefix length, as the module understood it.
  returned: success
  type: str
  sample: 198.18.0.100/24
interface:
  description: The interface.
  returned: success
  type: str
  sample: eth0
addresses:
  description:
    - The interface's addresses of the same IP version after the task (in check mode, as they
      would be).
  returned: success
  type: list
  elements: str
  sample: ["198.18.0.11/24", "198.18.0.100/24"]
garp_sent:
  description: Gratuitous ARP announcements sent.
  returned: success
  type: int
  sample: 3
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetproxy.fleet.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    Links,
    NetlinkFailure,
    mac_bytes,
    parse_address,
    send_garp,
)


def run(module, links, result):
    p = module.params
    iface = parse_address(p['address'])
    link = links.link(p['interface'])
    if link is None:
        module.fail_json(msg='no interface named %s' % p['interface'])

    current = links.addresses(link['index'], iface.version)
    same_ip = [a for a in current if a.ip == iface.ip]
    if p['state'] == 'present':
        remove = [a for a in same_ip if a.network.prefixlen != iface.network.prefixlen]
        add = not [a for a in same_ip if a.network.prefixlen == iface.network.prefixlen]
    else:
        remove = same_ip
        add = False
    after = [a for a in current if a not in remove] + ([iface] if add else [])

    result.update(address=str(iface), interface=p['interface'], addresses=[str(a) for a in after], garp_sent=0)
    result['changed'] = bool(remove or add)
    if module._diff:
        result['diff'] = dict(before='\n'.join(str(a) for a in current) + '\n' if current else '',
                              after='\n'.join(str(a) for a in after) + '\n' if after else '',
                              before_header='%s (IPv%d)' % (p['interface'], iface.version),
                              after_header='%s (IPv%d)' % (p['interface'], iface.version))
    if module.check_mode or not result['changed']:
        return result

    result['changed'] = False  # from here on: what was really done
    for a in remove:
        links.delete(link['index'], a)
        result['changed'] = True
    if add:
        links.add(link['index'], iface)
        result['changed'] = True
        result['garp_sent'] = announce(module, link, iface)
    result['addresses'] = [str(a) for a in links.addresses(link['index'], iface.version)]
    return result


def announce(module, link, iface):
    p = module.params
    if iface.version != 4 or p['garp_count'] == 0:
        return 0
    why = None
    if link['loopback'] or link['noarp']:
        why = 'the interface does not use ARP (NOARP)'
    elif not link['up']:
        why = 'the interface is down'
    elif not link['mac']:
        why = 'the interface has no hardware address'
    if why:
        module.warn('no gratuitous ARP sent for %s on %s: %s' % (iface.ip, link['name'], why))
        return 0
    try:
        return send_garp(link['name'], mac_bytes(link['mac']), iface.ip, p['garp_count'], p['garp_interval'])
    except OSError as exc:
        module.fail_json(changed=True, msg='%s added to %s, but sending gratuitous ARP failed: %s '
                         '(needs CAP_NET_RAW)' % (iface, link['name'], exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            address=dict(type='str', required=True),
            interface=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            garp_count=dict(type='int', default=3),
            garp_interval=dict(type='float', default=0.2),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        parse_address(p['address'])
    except ValueError as exc:
        module.fail_json(msg='address: %s' % exc)
    if not 0 <= p['garp_count'] <= 100:
        module.fail_json(msg='garp_count must be between 0 and 100')
    if not 0 <= p['garp_interval'] <= 60:
        module.fail_json(msg='garp_interval must be between 0 and 60 seconds')
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib('pyroute2'), exception=PYROUTE2_IMPORT_ERROR)

    result = dict(changed=False)
    try:
        with Links() as links:
            run(module, links, result)
    except (NetlinkFailure, OSError) as exc:
        result.pop('diff', None)
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
