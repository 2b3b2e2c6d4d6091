"""The host's network, for the daemon: netlink through pyroute2, raw sockets, ARP frames.

Everything here needs CAP_NET_ADMIN (addresses) or CAP_NET_RAW (sockets) and nothing
more; nothing here decides anything (that is :mod:`.state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .packet import VRRP_GROUP, VRRP_PROTO

log = logging.getLogger("fleetproxy.vrrp")

IFF_UP = 0x1
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
IFF_LOWER_UP = 0x10000
ETH_P_ARP = 0x0806
IP_MULTICAST_ALL = 49  # not exported by the socket module on every Python


@dataclass
class Link:
    index: int
    name: str
    mac: str
    up: bool  # administratively up and carrier present


def link_up(flags: int) -> bool:
    return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)


class Netlink:
    """One rtnetlink session for commands (addresses, link queries)."""

    def __init__(self) -> None:
        self._ipr: AsyncIPRoute | None = None

    async def open(self) -> Netlink:
        self._ipr = AsyncIPRoute()
        await self._ipr.setup_endpoint()
        return self

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @property
    def ipr(self) -> AsyncIPRoute:
        assert self._ipr is not None, "Netlink.open() first"
        return self._ipr

    async def link(self, name: str) -> Link | None:
        try:
            msgs = await self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for msg in msgs:
            return Link(msg["index"], msg.get("ifname"), msg.get("address") or "", link_up(msg["flags"]))
        return None

    async def ipv4_addresses(self, index: int) -> list[tuple[str, int, int]]:
        """(address, prefix length, flags) of every IPv4 address on ``index``, in kernel order."""
        out = []
        async for msg in await self.ipr.addr("dump", family=socket.AF_INET, index=index):
            if msg["index"] == index:
                out.append((msg.get("address"), msg["prefixlen"], msg.get("flags") or msg["flags"]))
        return out

    async def add_address(self, index: int, address: str, prefixlen: int) -> bool:
        """Add ``address/prefixlen``; False if it was already there."""
        net = ipaddress.IPv4Interface(f"{address}/{prefixlen}").network
        kwargs: dict[str, Any] = {}
        if prefixlen < 31:
            kwargs["broadcast"] = str(net.broadcast_address)
        try:
            await self.ipr.addr("add", index=index, address=address, prefixlen=prefixlen, **kwargs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise
        return True

    async def del_address(self, index: int, address: str, prefixlen: int) -> bool:
        """Remove ``address/prefixlen``; False if it was not there."""
        try:
            await self.ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True


async def watch_netlink(on_message: Callable[[dict], Awaitable[None] | None]) -> None:
    """Call ``on_message`` for every link and IPv4 address event, until cancelled."""
    ipr = AsyncIPRoute()
    try:
        await ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR)  # not routes, neighbours, IPv6
        while True:
            # get() returns after each batch of messages: keep asking.
            async for msg in ipr.get():
                result = on_message(msg)
                if asyncio.iscoroutine(result):
                    await result
    finally:
        ipr.close()


# --------------------------------------------------------------------------
# The VRRP socket
# --------------------------------------------------------------------------


def open_vrrp_socket(ifname: str, ifindex: int, local: str, multicast: bool) -> socket.socket:
    """A raw IPv4 socket for protocol 112 on one interface.

    We write the IP header ourselves (IP_HDRINCL) so the source is always the primary
    address, never a virtual IP, and the TTL is 255 (RFC 5798 5.1.1.3).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTO)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        # Only the groups joined on this socket, not every group the host joined.
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        if multicast:
            mreqn = struct.pack("4s4si", socket.inet_aton(VRRP_GROUP), socket.inet_aton(local), ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------
# Gratuitous ARP
# --------------------------------------------------------------------------

_ARP = struct.Struct("!HHBBH6s4s6s4s")


def garp_frame(mac: str | bytes, address: str) -> bytes:
    """A gratuitous ARP (an ARP Announcement, RFC 5227 2.3): a broadcast request whose
    sender and target address are both ``address``, sent from ``mac``."""
    hw = mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", ""))
    ip = socket.inet_aton(address)
    eth = b"\xff" * 6 + hw + struct.pack("!H", ETH_P_ARP)
    arp = _ARP.pack(1, 0x0800, 6, 4, 1, hw, ip, b"\0" * 6, ip)
    return (eth + arp).ljust(60, b"\0")


class GarpSender:
    """An AF_PACKET socket on one interface that only sends."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.bind((ifname, 0))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def send(self, mac: str, addresses: list[str], repeat: int) -> int:
        sent = 0
        frames = [garp_frame(mac, a) for a in addresses]
        for _ in range(repeat):
            for frame in frames:
                try:
                    self.sock.send(frame)
                    sent += 1
                except OSError as exc:
                    log.debug("%s: gratuitous ARP not sent: %s", self.ifname, exc)
        return sent

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
