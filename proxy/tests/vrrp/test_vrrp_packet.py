"""The VRRPv3 codec: layout, RFC checksum with the pseudo-header, HMAC trailer, replay."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetproxy.vrrp.net import garp_frame
from fleetproxy.vrrp.packet import (
    TRAILER_LEN,
    Advert,
    PacketError,
    ReplayGuard,
    checksum,
    decode,
    encode,
    ip_header,
    parse_ip,
)

SRC, GROUP = "198.18.51.11", "224.0.0.18"
KEY = b"k" * 32


def _ref_checksum(src: str, dst: str, payload: bytes) -> int:
    """An independent one's-complement sum, word by word."""
    data = socket.inet_aton(src) + socket.inet_aton(dst) + bytes([0, 112]) + struct.pack("!H", len(payload))
    data += payload[:6] + b"\0\0" + payload[8:]
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def test_layout_of_an_advertisement():
    adv = Advert(vrid=51, priority=150, max_adver_int=100, addresses=("198.18.30.100", "198.18.30.101"))
    p = encode(adv, SRC, GROUP)
    assert len(p) == 8 + 8
    assert p[0] == 0x31  # version 3, type 1
    assert p[1] == 51 and p[2] == 150 and p[3] == 2
    assert struct.unpack("!H", p[4:6])[0] == 100  # rsvd 0, 12-bit interval
    assert p[8:12] == socket.inet_aton("198.18.30.100")
    assert struct.unpack("!H", p[6:8])[0] == _ref_checksum(SRC, GROUP, p)
    assert checksum(socket.inet_aton(SRC) + socket.inet_aton(GROUP) + bytes([0, 112, 0, 16]) + p) == 0


@given(
    vrid=st.integers(1, 255),
    prio=st.integers(0, 255),
    interval=st.integers(1, 4095),
    addrs=st.lists(st.ip_addresses(v=4).map(str), max_size=20),
    dst=st.sampled_from([GROUP, "198.18.51.12"]),
)
def test_roundtrip(vrid, prio, interval, addrs, dst):
    adv = Advert(vrid, prio, interval, tuple(addrs))
    p = encode(adv, SRC, dst)
    assert struct.unpack("!H", p[6:8])[0] == _ref_checksum(SRC, dst, p)
    assert decode(p, SRC, dst) == adv


@given(st.integers(0, 11), st.integers(0, 7))
def test_any_flipped_bit_is_caught(byte, bit):
    p = bytearray(encode(Advert(51, 100, 100, ("198.18.30.100",)), SRC, GROUP))
    p[byte] ^= 1 << bit
    with pytest.raises(PacketError):
        decode(bytes(p), SRC, GROUP)


def test_checksum_covers_the_pseudo_header():
    p = encode(Advert(51, 100, 100, ("198.18.30.100",)), SRC, GROUP)
    with pytest.raises(PacketError) as exc:
        decode(p, "198.18.51.99", GROUP)
    assert exc.value.reason == "checksum"


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda p: p[:7], "length"),
        (lambda p: bytes([0x21]) + p[1:], "version"),  # VRRPv2
        (lambda p: bytes([0x32]) + p[1:], "type"),
        (lambda p: p[:3] + bytes([3]) + p[4:], "length"),  # count says 3, one address present
        (lambda p: p + b"\0\0\0\0", "length"),
    ],
)
def test_malformed(mutate, reason):
    p = encode(Advert(51, 100, 100, ("198.18.30.100",)), SRC, GROUP)
    with pytest.raises(PacketError) as exc:
        decode(mutate(p), SRC, GROUP)
    assert exc.value.reason == reason


def test_zero_interval_is_rejected():
    p = bytearray(encode(Advert(51, 100, 100, ()), SRC, GROUP))
    p[4:6] = b"\0\0"
    p[6:8] = b"\0\0"
    p[6:8] = struct.pack("!H", _ref_checksum(SRC, GROUP, bytes(p)))
    with pytest.raises(PacketError) as exc:
        decode(bytes(p), SRC, GROUP)
    assert exc.value.reason == "interval"


def test_encode_validates():
    with pytest.raises(ValueError):
        encode(Advert(0, 100, 100), SRC, GROUP)
    with pytest.raises(ValueError):
        encode(Advert(1, 100, 0), SRC, GROUP)
    with pytest.raises(ValueError):
        encode(Advert(1, 100, 100), SRC, GROUP, key=KEY)  # no sequence


# -- HMAC ----------------------------------------------------------------------

def test_hmac_roundtrip_and_sequence():
    adv = Advert(51, 100, 10, ("198.18.30.100",))
    p = encode(adv, SRC, GROUP, key=KEY, seq=12345)
    assert len(p) == 12 + TRAILER_LEN
    got = decode(p, SRC, GROUP, key=KEY)
    assert got.seq == 12345 and got.priority == 100


@pytest.mark.parametrize(
    "key_rx, tamper",
    [(b"x" * 32, None), (KEY, 2), (KEY, 20), (KEY, -1), (None, None)],
    ids=["wrong-key", "priority-changed", "sequence-changed", "mac-changed", "auth-off-here"],
)
def test_hmac_rejects(key_rx, tamper):
    p = bytearray(encode(Advert(51, 100, 10, ("198.18.30.100",)), SRC, GROUP, key=KEY, seq=7))
    if tamper is not None:
        p[tamper] ^= 0x01
        body = bytes(p)
        p[6:8] = struct.pack("!H", _ref_checksum(SRC, GROUP, body))  # a careful forger fixes the checksum
    with pytest.raises(PacketError) as exc:
        decode(bytes(p), SRC, GROUP, key=key_rx)
    assert exc.value.reason == "auth"


def test_unauthenticated_advert_is_refused_when_auth_is_on():
    p = encode(Advert(51, 100, 10, ("198.18.30.100",)), SRC, GROUP)
    with pytest.raises(PacketError) as exc:
        decode(p, SRC, GROUP, key=KEY)
    assert exc.value.reason == "auth"


def test_hmac_binds_the_addresses():
    p = encode(Advert(51, 100, 10, ()), SRC, GROUP, key=KEY, seq=1)
    with pytest.raises(PacketError):
        decode(p, SRC, "198.18.51.12", key=KEY)


def test_replay_guard():
    g = ReplayGuard()
    assert g.check("a", 10) and g.check("a", 11)
    assert not g.check("a", 11) and not g.check("a", 5)
    assert g.check("b", 1)


# -- IP layer ---------------------------------------------------------------------

def test_ip_header_and_parse():
    payload = encode(Advert(51, 100, 100, ()), SRC, GROUP)
    dgram = ip_header(len(payload), SRC, GROUP) + payload
    src, dst, ttl, body = parse_ip(dgram)
    assert (src, dst, ttl, body) == (SRC, GROUP, 255, payload)
    assert dgram[9] == 112 and dgram[1] == 0xC0
    with pytest.raises(PacketError):
        parse_ip(b"\x60" + b"\0" * 39)


def test_garp_frame():
    f = garp_frame("02:00:00:00:00:01", "198.18.30.100")
    assert len(f) == 60
    assert f[:6] == b"\xff" * 6 and f[6:12] == bytes.fromhex("020000000001")
    assert f[12:14] == b"\x08\x06"
    op, sha, spa, tha, tpa = struct.unpack("!6xH6s4s6s4s", f[14:42])
    assert op == 1 and spa == tpa == socket.inet_aton("198.18.30.100")
    assert sha == bytes.fromhex("020000000001") and tha == b"\0" * 6
