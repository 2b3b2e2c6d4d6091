# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What the vip role renders for each host of a group: priorities from the group's order
or host variables, unicast peers from the group (addresses from host variables or from
facts), the proxy tracker, the key; and what its checks refuse.

ansible-playbook runs the role's checks (``tasks_from: validate``, with the role's vars)
on three local hosts, renders ``templates/vrrp.yml.j2`` for each, and the daemon's own
``fleetproxy vrrp check`` validates every file. No daemon, no root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, '..', '..', '..'))
FLEETPROXY = os.path.join(os.path.dirname(sys.executable), 'fleetproxy')

PLAYBOOK = '''
- name: Render vrrp.yml for every host of the pair
  hosts: proxies
  gather_facts: false
  tasks:
    - name: Network facts (the role reads interfaces and addresses)
      ansible.builtin.setup:
        gather_subset: ["!all", "!min", network]

    - name: The role's checks and variables
      ansible.builtin.include_role:
        name: fleetproxy.fleet.vip
        tasks_from: validate
        public: true

    - name: Render the file
      ansible.builtin.template:
        src: "{{ repo }}/roles/vip/templates/vrrp.yml.j2"
        dest: "{{ out }}/{{ inventory_hostname }}.yml"
        mode: "0644"
'''


def run(tmp_path, hostvars, groupvars, expect_ok=True):
    if shutil.which('ansible-playbook', path=os.path.dirname(sys.executable)) is None:
        pytest.skip('ansible-playbook is not installed in this environment')
    groupvars = dict({'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                      'fleetproxy_vip_interface': 'lo', 'repo': REPO, 'out': str(tmp_path)}, **groupvars)
    inventory = {'all': {'children': {'proxies': {'hosts': hostvars, 'vars': groupvars}}}}
    (tmp_path / 'hosts.yml').write_text(yaml.safe_dump(inventory))
    (tmp_path / 'play.yml').write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0', ANSIBLE_HOST_KEY_CHECKING='0')
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'),
                           '-i', str(tmp_path / 'hosts.yml'), str(tmp_path / 'play.yml')],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    output = done.stdout + done.stderr
    assert (done.returncode == 0) == expect_ok, output
    if not expect_ok:
        return output
    rendered = {}
    for host in hostvars:
        doc = yaml.safe_load((tmp_path / ('%s.yml' % host)).read_text())
        rendered[host] = doc
        # The daemon's checker reads the key file: point it at a copy here.
        checked = yaml.safe_load(yaml.safe_dump(doc))
        for inst in checked['instances']:
            if 'auth' in inst:
                key = tmp_path / 'vrrp.key'
                key.write_text(groupvars['fleetproxy_vip_auth_key'] + '\n')
                inst['auth']['hmac_key_file'] = str(key)
        path = tmp_path / ('%s-check.yml' % host)
        path.write_text(yaml.safe_dump(checked))
        check = subprocess.run([FLEETPROXY, 'vrrp', 'check', '-c', str(path)], capture_output=True, text=True,
                               timeout=60, check=False)
        assert check.returncode == 0, check.stderr
    return rendered


VIP = {'fleetproxy_vip_addresses': ['198.18.222.100/24']}


def test_priorities_follow_the_group_unless_set(tmp_path):
    out = run(tmp_path, {'lb1': {}, 'lb2': {}, 'lb3': {'fleetproxy_vip_priority': 120}}, VIP)
    prio = dict((h, doc['instances'][0]['priority']) for h, doc in out.items())
    assert prio == {'lb1': 150, 'lb2': 100, 'lb3': 120}
    inst = out['lb1']['instances'][0]
    assert inst == {
        'name': 'vip', 'interface': 'lo', 'vrid': 51, 'priority': 150, 'advert_interval': '1s',
        'preempt': True, 'preempt_delay': '0s', 'virtual_ips': ['198.18.222.100/24'],
        'track': [{'proxy': '/run/fleetproxy/admin.sock', 'weight': 0}],
    }
    assert out['lb1']['status_socket'] == '/run/fleetproxy-vrrp/vrrp.sock'
    assert out['lb1']['state_file'] == '/var/lib/fleetproxy-vrrp/state.json'


def test_unicast_peers_come_from_the_group(tmp_path):
    hosts = {
        'lb1': {'fleetproxy_vip_unicast_address': '198.18.222.11'},
        'lb2': {'fleetproxy_vip_unicast_address': '198.18.222.12'},
        'lb3': {},  # from its facts: the address of `lo`
    }
    groupvars = dict(VIP, fleetproxy_vip_unicast=True, fleetproxy_vip_track_proxy=False,
                     fleetproxy_vip_track=[{'tcp': '127.0.0.1:443', 'weight': -60}],
                     fleetproxy_vip_advert_interval='200ms', fleetproxy_vip_vrid=7,
                     fleetproxy_vip_notify={'master': '/usr/local/bin/on-master'},
                     fleetproxy_vip_auth_key='0123456789abcdef0123')
    out = run(tmp_path, hosts, groupvars)
    peers = dict((h, (doc['instances'][0]['unicast_src'], doc['instances'][0]['unicast_peers']))
                 for h, doc in out.items())
    assert peers == {
        'lb1': ('198.18.222.11', ['198.18.222.12', '127.0.0.1']),
        'lb2': ('198.18.222.12', ['198.18.222.11', '127.0.0.1']),
        'lb3': ('127.0.0.1', ['198.18.222.11', '198.18.222.12']),
    }
    inst = out['lb2']['instances'][0]
    assert inst['track'] == [{'tcp': '127.0.0.1:443', 'weight': -60}]
    assert inst['notify'] == {'master': '/usr/local/bin/on-master'}
    assert inst['auth'] == {'hmac_key_file': '/etc/fleetproxy/vrrp.key'}
    assert (inst['vrid'], inst['advert_interval']) == (7, '200ms')


@pytest.mark.parametrize('hostvars, groupvars, message', [
    ({'lb1': {}}, {}, 'fleetproxy_vip_addresses is empty on lb1'),
    ({'lb1': {}}, dict(VIP, fleetproxy_vip_interface='nosuch0'), 'lb1 has no interface nosuch0'),
    ({'lb1': {}}, dict(VIP, fleetproxy_vip_group='other'), 'lb1 is not in the group fleetproxy_vip_group=other'),
    ({'lb1': {}}, dict(VIP, fleetproxy_vip_auth_key='short'), 'at least 16 characters'),
    ({'lb1': {'fleetproxy_vip_priority': 300}}, VIP, 'fleetproxy_vip_priority must be 1-255'),
])
def test_bad_settings_fail_with_a_message(tmp_path, hostvars, groupvars, message):
    output = run(tmp_path, hostvars, groupvars, expect_ok=False)
    assert message in output, output
