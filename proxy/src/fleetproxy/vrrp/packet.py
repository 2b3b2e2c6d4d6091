"""VRRPv3 advertisements for IPv4 (RFC 5798 section 5), and an optional HMAC trailer.

Pure bytes in, bytes out. The layout of section 5.1::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |(rsvd) |     Max Adver Int     |          Checksum             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                       IPv4 Address(es)                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The checksum (5.2.8) is the Internet checksum of the VRRP message with the IPv4
pseudo-header (source, destination, zero, protocol 112, length) in front, as
keepalived computes it for version 3.

Authentication is not part of VRRPv3 (RFC 5798 removed it). With ``auth`` set, this
daemon appends a trailer after the addresses and counts it in the checksum::

    b"FPH1" | sequence (8 bytes, big endian) | HMAC-SHA256 (32 bytes)

The HMAC covers the IPv4 source and destination, the VRRP message with a zero
checksum, the magic and the sequence. The sequence grows with every packet and
starts from the wall clock in microseconds, so it keeps growing across restarts;
a receiver drops a sequence that is not above the last one it accepted from that
sender (:class:`ReplayGuard`). Routers that do not speak the trailer (keepalived, or
this daemon without ``auth``) reject such packets on their length, so both ends of a
pair must agree on ``auth``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "TRAILER_LEN",
    "VRRP_GROUP",
    "VRRP_PROTO",
    "VRRP_TTL",
    "Advert",
    "PacketError",
    "ReplayGuard",
    "checksum",
    "decode",
    "encode",
    "ip_header",
    "parse_ip",
]

VRRP_PROTO = 112
VRRP_GROUP = "224.0.0.18"
VRRP_TTL = 255
VERSION = 3
TYPE_ADVERTISEMENT = 1

_HEADER = struct.Struct("!BBBBHH")
_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
_MAGIC = b"FPH1"
_SEQ = struct.Struct("!Q")
TRAILER_LEN = len(_MAGIC) + _SEQ.size + 32


class PacketError(ValueError):
    """A packet that RFC 5798 7.1 says to discard; ``reason`` names the counter."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Advert:
    vrid: int
    priority: int
    max_adver_int: int  # centiseconds
    addresses: tuple[str, ...] = ()
    seq: int | None = None  # from the HMAC trailer, when there is one


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, VRRP_PROTO, length)


def _a4(address: str | bytes | ipaddress.IPv4Address) -> bytes:
    if isinstance(address, bytes):
        return address
    if isinstance(address, str) and address.count(".") == 3:
        try:
            return socket.inet_aton(address)
        except OSError:
            pass
    return ipaddress.IPv4Address(address).packed


def _mac(key: bytes, src: bytes, dst: bytes, body: bytes) -> bytes:
    return hmac.new(key, src + dst + body, hashlib.sha256).digest()


def encode(
    advert: Advert,
    src: str | bytes,
    dst: str | bytes,
    *,
    key: bytes | None = None,
    seq: int | None = None,
) -> bytes:
    """The VRRP message (the IP payload) for ``advert`` sent from ``src`` to ``dst``."""
    if not 1 <= advert.vrid <= 255:
        raise ValueError(f"vrid {advert.vrid} out of range 1-255")
    if not 0 <= advert.priority <= 255:
        raise ValueError(f"priority {advert.priority} out of range 0-255")
    if not 1 <= advert.max_adver_int <= 0xFFF:
        raise ValueError(f"advert interval {advert.max_adver_int}cs out of range 1-4095")
    if len(advert.addresses) > 255:
        raise ValueError("at most 255 addresses fit in one advertisement")
    s, d = _a4(src), _a4(dst)
    body = _HEADER.pack(
        (VERSION << 4) | TYPE_ADVERTISEMENT,
        advert.vrid,
        advert.priority,
        len(advert.addresses),
        advert.max_adver_int & 0xFFF,
        0,
    ) + b"".join(_a4(a) for a in advert.addresses)
    if key is not None:
        if seq is None:
            raise ValueError("an authenticated advertisement needs a sequence number")
        body += _MAGIC + _SEQ.pack(seq)
        body += _mac(key, s, d, body)
    csum = checksum(_pseudo(s, d, len(body)) + body)
    return body[:6] + struct.pack("!H", csum) + body[8:]


def decode(payload: bytes, src: str | bytes, dst: str | bytes, *, key: bytes | None = None) -> Advert:
    """Check ``payload`` as RFC 5798 7.1 asks (but the TTL, which is the IP layer's) and
    return the advertisement, or raise :class:`PacketError`.

    With ``key``, the HMAC trailer must be present and valid; without, it must be absent.
    """
    if len(payload) < _HEADER.size:
        raise PacketError("length", f"{len(payload)} bytes is shorter than the VRRP header")
    vt, vrid, priority, count, rsvd_int, _ = _HEADER.unpack_from(payload)
    if vt >> 4 != VERSION:
        raise PacketError("version", f"version {vt >> 4}, expected 3")
    if vt & 0xF != TYPE_ADVERTISEMENT:
        raise PacketError("type", f"type {vt & 0xF}, expected 1 (ADVERTISEMENT)")
    plain = _HEADER.size + 4 * count
    if len(payload) == plain:
        has_trailer = False
    elif len(payload) == plain + TRAILER_LEN and payload[plain : plain + 4] == _MAGIC:
        has_trailer = True
    else:
        raise PacketError("length", f"{len(payload)} bytes does not match {count} address(es)")
    s, d = _a4(src), _a4(dst)
    if checksum(_pseudo(s, d, len(payload)) + payload) != 0:
        raise PacketError("checksum", "bad checksum")
    interval = rsvd_int & 0xFFF
    if interval == 0:
        raise PacketError("interval", "Max Adver Int is 0")
    seq = None
    if key is not None:
        if not has_trailer:
            raise PacketError("auth", "advertisement without HMAC (auth is on)")
        zeroed = payload[:6] + b"\0\0" + payload[8 : plain + 12]
        if not hmac.compare_digest(_mac(key, s, d, zeroed), payload[plain + 12 :]):
            raise PacketError("auth", "HMAC does not match (wrong key or altered packet)")
        (seq,) = _SEQ.unpack_from(payload, plain + 4)
    elif has_trailer:
        raise PacketError("auth", "advertisement carries an HMAC but auth is off here")
    addresses = tuple(
        socket.inet_ntoa(payload[i : i + 4]) for i in range(_HEADER.size, plain, 4)
    )
    return Advert(vrid, priority, interval, addresses, seq)


class ReplayGuard:
    """The highest sequence accepted per sender; anything not above it is a replay."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def check(self, src: str, seq: int) -> bool:
        last = self._last.get(src)
        if last is not None and seq <= last:
            return False
        self._last[src] = seq
        return True


def ip_header(payload_len: int, src: str | bytes, dst: str | bytes, ttl: int = VRRP_TTL) -> bytes:
    """An IPv4 header for a raw socket with IP_HDRINCL (the kernel fills id and checksum).

    TOS 0xc0 (internetwork control), as routers and keepalived send VRRP.
    """
    return _IP_HEADER.pack(
        0x45, 0xC0, 20 + payload_len, 0, 0, ttl, VRRP_PROTO, 0, _a4(src), _a4(dst)
    )


def parse_ip(datagram: bytes) -> tuple[str, str, int, bytes]:
    """(source, destination, TTL, payload) of an IPv4 datagram from a raw socket."""
    if len(datagram) < 20 or datagram[0] >> 4 != 4:
        raise PacketError("length", "not an IPv4 datagram")
    ihl = (datagram[0] & 0xF) * 4
    total = struct.unpack_from("!H", datagram, 2)[0]
    if ihl < 20 or len(datagram) < ihl or total < ihl:
        raise PacketError("length", "truncated IPv4 header")
    ttl = datagram[8]
    src = socket.inet_ntoa(datagram[12:16])
    dst = socket.inet_ntoa(datagram[16:20])
    return src, dst, ttl, datagram[ihl : min(total, len(datagram))]
