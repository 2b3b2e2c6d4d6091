# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment(object):

    # The options of every module that talks to the local proxy's admin socket.
    DOCUMENTATION = r'''
options:
  socket:
    description:
      - Path of the proxy's admin socket, the JSON API that C(global.admin.socket) configures.
      - The socket is mode C(0660) by default (C(global.admin.socket_mode)); run the task with
        C(become) or as a member of C(global.admin.socket_group).
    type: path
    default: /run/fleetproxy/admin.sock
  timeout:
    description:
      - Seconds to wait for one answer of the admin API.
      - Waits for sessions or health checks have their own bound, in the modules that wait.
    type: float
    default: 10
notes:
  - The module talks to the proxy on the host it runs on. To change a backend on several
    proxies, run it on each of them (with C(serial) for one proxy at a time).
requirements:
  - fleetproxy running on the target host with C(global.admin.socket) set.
'''
