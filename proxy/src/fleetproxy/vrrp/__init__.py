"""``fleetproxy vrrp``: a VRRPv3 (RFC 5798) virtual-IP failover daemon.

The package is cut along the line between protocol and I/O:

- :mod:`.state`   the RFC 5798 state machine, pure: events in, state and actions out;
- :mod:`.packet`  the VRRPv3 IPv4 advertisement codec (and the optional HMAC trailer);
- :mod:`.config`  the YAML schema of ``vrrp.yml``;
- :mod:`.daemon`  the asyncio shell: raw sockets, timers, netlink, GARP, tracking, hooks;
- :mod:`.cli`     ``fleetproxy vrrp run | check | status``.
"""
