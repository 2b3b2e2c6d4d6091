# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""Addresses on interfaces (pyroute2) and gratuitous ARP (an AF_PACKET socket).

pyroute2 is optional at import time: ``HAS_PYROUTE2`` tells a module whether
to call ``missing_required_lib('pyroute2')``.  The frame builder and the
address parsing need nothing but the standard library.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
import traceback

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
except ImportError:
    IPRoute = None
    NetlinkError = OSError
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
BROADCAST_MAC = b'\xff' * 6
MIN_FRAME = 60  # Ethernet minimum without the FCS

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
IFA_F_NODAD = 0x02


class NetlinkFailure(Exception):
    pass


def parse_address(text):
    """``198.18.0.10/24``, ``198.18.0.10`` (/32) or ``2001:2::10/64`` (/128 without
    a prefix) -> ``ipaddress.IPv4Interface``/``IPv6Interface``; ValueError if invalid."""
    text = str(text).strip()
    if '/' not in text:
        ip = ipaddress.ip_address(text)
        text = '%s/%d' % (ip, ip.max_prefixlen)
    iface = ipaddress.ip_interface(text)
    ip = iface.ip
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError('%s cannot be assigned as a virtual IP' % ip)
    return iface


def arp_announcement(mac, ip):
    """A gratuitous ARP request (RFC 5227 ARP announcement) for ``ip`` from ``mac``,
    as a complete Ethernet frame padded to the minimum length."""
    if len(mac) != 6:
        raise ValueError('a MAC address has 6 bytes')
    spa = ipaddress.IPv4Address(ip).packed
    eth = BROADCAST_MAC + mac + struct.pack('!H', ETH_P_ARP)
    arp = struct.pack('!HHBBH', ARPHRD_ETHER, ETH_P_IP, 6, 4, ARPOP_REQUEST) + mac + spa + b'\x00' * 6 + spa
    frame = eth + arp
    return frame + b'\x00' * (MIN_FRAME - len(frame))


def parse_arp(frame):
    """The fields of an Ethernet ARP frame as a dict, or None (used by tests and logs)."""
    if len(frame) < 42 or struct.unpack('!H', frame[12:14])[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack('!HHBBH', frame[14:22])
    if (htype, ptype, hlen, plen) != (ARPHRD_ETHER, ETH_P_IP, 6, 4):
        return None
    return dict(
        dst=mac_text(frame[0:6]), src=mac_text(frame[6:12]), op=op,
        sha=mac_text(frame[22:28]), spa=str(ipaddress.IPv4Address(frame[28:32])),
        tha=mac_text(frame[32:38]), tpa=str(ipaddress.IPv4Address(frame[38:42])),
    )


def mac_text(raw):
    return ':'.join('%02x' % b for b in bytearray(raw))


def mac_bytes(text):
    parts = str(text).split(':')
    if len(parts) != 6:
        raise ValueError('invalid MAC address %r' % text)
    return bytes(bytearray(int(p, 16) for p in parts))


def send_garp(ifname, mac, ip, count, interval, sleep=time.sleep):
    """Send ``count`` ARP announcements on ``ifname``; returns how many were sent."""
    frame = arp_announcement(mac, ip)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sent = 0
    try:
        sock.bind((ifname, ETH_P_ARP))
        for i in range(count):
            if i:
                sleep(interval)
            sock.send(frame)
            sent += 1
    finally:
        sock.close()
    return sent


def _attr(msg, name):
    try:
        return msg.get_attr(name)
    except AttributeError:  # pragma: no cover - very old pyroute2
        return dict(msg['attrs']).get(name)


class Links(object):
    """A small, synchronous view of links and addresses (one netlink socket)."""

    def __init__(self):
        if not HAS_PYROUTE2:
            raise NetlinkFailure('pyroute2 is not installed')
        self.ipr = IPRoute()

    def close(self):
        self.ipr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def link(self, ifname):
        """``{index, name, mac, flags, up, noarp, loopback}`` or None if there is no such link."""
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        msg = list(self.ipr.get_links(found[0]))[0]
        flags = int(msg['flags'])
        return dict(
            index=found[0],
            name=ifname,
            mac=_attr(msg, 'IFLA_ADDRESS'),
            flags=flags,
            up=bool(flags & IFF_UP),
            noarp=bool(flags & IFF_NOARP),
            loopback=bool(flags & IFF_LOOPBACK),
        )

    def addresses(self, index, version):
        """The interface's addresses of one IP version, as ``ipaddress`` interfaces."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        out = []
        for msg in self.ipr.get_addr(family=family, index=index):
            if int(msg['index']) != index:
                continue
            text = _attr(msg, 'IFA_LOCAL') if version == 4 else None
            text = text or _attr(msg, 'IFA_ADDRESS')
            if text:
                out.append(ipaddress.ip_interface('%s/%d' % (text, int(msg['prefixlen']))))
        return out

    def add(self, index, iface):
        kwargs = dict(index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        if iface.version == 6:
            kwargs['flags'] = IFA_F_NODAD  # a virtual IP must work at once, not after DAD
        self._call('add', kwargs)

    def delete(self, index, iface):
        self._call('del', dict(index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen))

    def _call(self, command, kwargs):
        try:
            self.ipr.addr(command, **kwargs)
        except NetlinkError as exc:
            code = getattr(exc, 'code', None)
            if code in (errno.EPERM, errno.EACCES):
                raise NetlinkFailure('permission denied: changing addresses needs root (CAP_NET_ADMIN); '
                                     'run the task with become')
            raise NetlinkFailure('%s address %s/%s: %s'
                                 % (command, kwargs['address'], kwargs['prefixlen'], exc))
