"""The modules as users run them: ansible-playbook, the collection found through
ANSIBLE_COLLECTIONS_PATH, AnsiballZ packaging, and the system Python (no virtualenv:
the modules must work with the standard library only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import CHECK
from harness import server_def

PLAYBOOK = r'''
- name: The proxy modules, end to end
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    sock: "{{ socket }}"
  tasks:
    - name: Read the proxy
      fleetproxy.fleet.proxy_info:
        socket: "{{ sock }}"
      register: before

    - name: Both servers are up
      ansible.builtin.assert:
        that:
          - before.servers['app/s1'].health == 'up'
          - before.servers['app/s2'].state == 'ready'
          - before is not changed

    - name: Drain s1 in check mode
      fleetproxy.fleet.backend_server:
        backend: app
        name: s1
        state: drain
        socket: "{{ sock }}"
      check_mode: true
      register: drain_check

    - name: Drain s1
      fleetproxy.fleet.backend_server:
        backend: app
        name: s1
        state: drain
        wait: true
        wait_timeout: 20
        socket: "{{ sock }}"
      register: drain

    - name: Drain s1 again
      fleetproxy.fleet.backend_server:
        backend: app
        name: s1
        state: drain
        wait: true
        socket: "{{ sock }}"
      register: drain_again

    - name: Ready s1, weight 50% of 4
      fleetproxy.fleet.backend_server:
        backend: app
        server: s1
        state: ready
        weight: 50%
        wait: true
        socket: "{{ sock }}"
      register: ready

    - name: Declare s1 and s3 (check mode)
      fleetproxy.fleet.backend:
        name: app
        servers: "{{ wanted }}"
        socket: "{{ sock }}"
      check_mode: true
      register: plan

    - name: Declare s1 and s3
      fleetproxy.fleet.backend:
        name: app
        servers: "{{ wanted }}"
        wait_timeout: 30
        socket: "{{ sock }}"
      register: applied

    - name: Declare s1 and s3 again
      fleetproxy.fleet.backend:
        name: app
        servers: "{{ wanted }}"
        socket: "{{ sock }}"
      register: applied_again

    - name: Read the proxy again
      fleetproxy.fleet.proxy_info:
        socket: "{{ sock }}"
        gather: [backends]
      register: after

    - name: Every step did what it says
      ansible.builtin.assert:
        that:
          - drain_check is changed
          - drain is changed and drain.after.state == 'drain'
          - drain_again is not changed
          - ready is changed and ready.after.state == 'ready' and ready.after.weight == 2
          - plan is changed and plan.plan.add == ['s3'] and plan.plan.remove == ['s2']
          - applied is changed
          - applied_again is not changed
          - after.servers | list == ['app/s1', 'app/s3']
          - after.servers['app/s3'].health == 'up'
'''


def _ansible_bin(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else shutil.which(name)


@pytest.fixture
def system_python():
    for candidate in ('/usr/bin/python3', shutil.which('python3')):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.skip('no system python3')


def _env():
    env = dict(os.environ)
    env.update(ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0', ANSIBLE_RETRY_FILES_ENABLED='0',
               ANSIBLE_LOCALHOST_WARNING='0', ANSIBLE_INVENTORY_UNPARSED_WARNING='0',
               ANSIBLE_HOST_KEY_CHECKING='0')
    return env


def test_playbook_with_the_system_python(backends, proxy_factory, system_python, tmp_path):
    b1, b2, b3 = backends(3)
    proxy = proxy_factory([server_def('s1', b1.address, weight=4, **CHECK), server_def('s2', b2.address, **CHECK)])
    proxy.wait_health('s1')
    proxy.wait_health('s2')
    playbook = tmp_path / 'play.yml'
    playbook.write_text(PLAYBOOK)
    extra = {
        'socket': proxy.socket,
        'ansible_python_interpreter': system_python,
        'wanted': [dict(name='s1', address=b1.address), dict(CHECK, name='s3', address=b3.address)],
    }
    done = subprocess.run([_ansible_bin('ansible-playbook'), '-i', 'localhost,', '--diff', str(playbook),
                           '-e', json.dumps(extra)],
                          capture_output=True, text=True, timeout=300, env=_env(), cwd=str(tmp_path), check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert 'failed=0' in done.stdout
    # --diff output for backend_server and backend
    assert '+    "state": "drain"' in done.stdout, done.stdout[-4000:]
    assert '"s3": {' in done.stdout
    assert [s['name'] for s in proxy.servers()] == ['s1', 's3']


def test_vip_without_pyroute2_on_the_system_python(system_python, tmp_path):
    check = subprocess.run([system_python, '-c', 'import pyroute2'], capture_output=True, check=False)
    if check.returncode == 0:
        pytest.skip('%s has pyroute2' % system_python)
    done = subprocess.run([_ansible_bin('ansible'), 'localhost', '-i', 'localhost,', '-c', 'local',
                           '-e', 'ansible_python_interpreter=%s' % system_python,
                           '-m', 'fleetproxy.fleet.vip', '-a', 'address=198.18.0.100 interface=lo'],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=str(tmp_path), check=False)
    assert done.returncode != 0
    assert 'Failed to import the required Python library (pyroute2)' in done.stdout, done.stdout + done.stderr
