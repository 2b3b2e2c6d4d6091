"""Load-balancing algorithms, pure: no I/O, no asyncio, no clock.

Every balancer is given the backend's *usable* servers in configuration order
(:meth:`Balancer.update`, called whenever the set or the weights change) and
answers :meth:`Balancer.pick` on the hot path.  A server is anything with the
attributes ``name``, ``weight`` (effective weight, > 0 for usable servers),
``active`` (requests or connections in flight) and ``maxconn`` (``None`` or 0
for unlimited).  A server at its ``maxconn`` is skipped; when every server is
full, ``pick`` returns ``None`` and the caller queues the request.

Algorithms, named as in HAProxy:

``roundrobin``  smooth weighted round robin (nginx's): weights {5,1,1} give
                a a b a c a a; runtime weight changes apply at once (the
                backend calls ``update`` after every change).
``static-rr``   the same sequence, fixed when the server set was last updated.
``leastconn``   fewest active requests per unit of weight; ties in
                round-robin order.
``source``, ``uri``, ``hdr(NAME)``
                hash of the key; ``map-based`` (a weighted table, the default)
                or ``consistent`` (a ring with points proportional to weight,
                so removing one of N servers remaps about 1/N of the keys).
                Without a key (no such header) they fall back to round robin.
``random``      power of two choices: two weighted random draws, the one with
                fewer active requests per weight wins.
``first``       the first server in order that still has a free slot below
                its ``maxconn``.
"""

from __future__ import annotations

import bisect
import random as _random
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

POINTS_PER_WEIGHT = 160  # ring points per unit of weight for consistent hashing


def _full(s: Any) -> bool:
    mc = s.maxconn
    return bool(mc) and s.active >= mc


def hash_key(key: bytes) -> int:
    """A stable 32-bit hash with good avalanche (crc32, then murmur3's finaliser).

    Stable across processes and restarts, unlike ``hash()``, so every worker and
    every node sends a client to the same server.
    """
    h = zlib.crc32(key)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


class Balancer(Protocol):
    def update(self, servers: Sequence[Any]) -> None: ...

    def pick(self, key: bytes | None = None) -> Any | None: ...


class RoundRobin:
    """Smooth weighted round robin.  Weights are read on every pick; a change of
    weights must be followed by :meth:`update` (``Backend.refresh`` does it), which
    also notices equal weights, where the rotation needs no scan."""

    needs_key = False

    def __init__(self) -> None:
        self._servers: list[Any] = []
        self._current: list[int] = []
        self._uniform = False
        self._next = 0

    def update(self, servers: Sequence[Any]) -> None:
        old = dict(zip(map(id, self._servers), self._current, strict=False))
        self._servers = list(servers)
        self._current = [old.get(id(s), 0) for s in self._servers]
        # Equal weights: smooth WRR is plain rotation, which needs no scan.
        self._uniform = len({s.weight for s in self._servers}) == 1
        self._next %= max(1, len(self._servers))

    def pick(self, key: bytes | None = None) -> Any | None:
        if self._uniform:
            servers = self._servers
            n = len(servers)
            i = self._next
            for _ in range(n):
                s = servers[i]
                i = i + 1 if i + 1 < n else 0
                mc = s.maxconn
                if not mc or s.active < mc:
                    self._next = i
                    return s
            return None
        return self._weighted()

    def _weighted(self) -> Any | None:
        servers = self._servers
        current = self._current
        best = -1
        best_cw = 0
        total = 0
        for i, s in enumerate(servers):
            mc = s.maxconn
            if mc and s.active >= mc:
                continue
            w = s.weight
            cw = current[i] + w
            current[i] = cw
            total += w
            if best < 0 or cw > best_cw:
                best = i
                best_cw = cw
        if best < 0:
            return None
        current[best] = best_cw - total
        return servers[best]


def _smooth_sequence(servers: Sequence[Any]) -> list[Any]:
    """One full cycle of smooth weighted round robin over static weights."""
    rr = RoundRobin()
    rr.update([_Static(s) for s in servers])
    total = sum(s.weight for s in servers)
    return [rr.pick().server for _ in range(total)]  # type: ignore[union-attr]


class _Static:
    __slots__ = ("active", "maxconn", "server", "weight")

    def __init__(self, server: Any) -> None:
        self.server = server
        self.weight = server.weight
        self.active = 0
        self.maxconn = None


class StaticRoundRobin:
    """HAProxy's static-rr: the weighted cycle is fixed at update time."""

    needs_key = False

    def __init__(self) -> None:
        self._cycle: list[Any] = []
        self._pos = 0

    def update(self, servers: Sequence[Any]) -> None:
        self._cycle = _smooth_sequence(servers)
        self._pos = 0

    def pick(self, key: bytes | None = None) -> Any | None:
        cycle = self._cycle
        n = len(cycle)
        for _ in range(n):
            s = cycle[self._pos]
            self._pos = (self._pos + 1) % n
            if not _full(s):
                return s
        return None


class LeastConn:
    """Fewest active requests per unit of weight; ties go round robin."""

    needs_key = False

    def __init__(self) -> None:
        self._servers: list[Any] = []
        self._next = 0

    def update(self, servers: Sequence[Any]) -> None:
        self._servers = list(servers)
        self._next = 0

    def pick(self, key: bytes | None = None) -> Any | None:
        servers = self._servers
        n = len(servers)
        if not n:
            return None
        start = self._next % n
        best = None
        best_i = 0
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            s = servers[i]
            if _full(s):
                continue
            # s.active / s.weight < best.active / best.weight, without floats
            if best is None or s.active * best.weight < best.active * s.weight:
                best = s
                best_i = i
        if best is not None:
            self._next = best_i + 1
        return best


class _HashBase:
    needs_key = True

    def __init__(self, fallback: Balancer | None = None) -> None:
        self._fallback = fallback or RoundRobin()
        self._servers: list[Any] = []

    def update(self, servers: Sequence[Any]) -> None:
        self._servers = list(servers)
        self._fallback.update(servers)


class MapHash(_HashBase):
    """``hash_type: map-based``: a table with each server ``weight`` times."""

    def update(self, servers: Sequence[Any]) -> None:
        super().update(servers)
        self._table = _smooth_sequence(servers)

    def pick(self, key: bytes | None = None) -> Any | None:
        if key is None:
            return self._fallback.pick()
        table = self._table
        n = len(table)
        if not n:
            return None
        start = hash_key(key) % n
        for k in range(n):
            s = table[(start + k) % n]
            if not _full(s):
                return s
        return None


class ConsistentHash(_HashBase):
    """``hash_type: consistent``: a ring with POINTS_PER_WEIGHT points per weight.

    A server's points depend only on its name, so removing one of N servers
    moves only the keys that were on it (about 1/N of them).
    """

    def update(self, servers: Sequence[Any]) -> None:
        super().update(servers)
        ring: list[tuple[int, int]] = []
        for idx, s in enumerate(servers):
            name = s.name.encode()
            for i in range(s.weight * POINTS_PER_WEIGHT):
                ring.append((hash_key(b"%s#%d" % (name, i)), idx))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [servers[i] for _, i in ring]

    def pick(self, key: bytes | None = None) -> Any | None:
        if key is None:
            return self._fallback.pick()
        points = self._points
        n = len(points)
        if not n:
            return None
        i = bisect.bisect_left(points, hash_key(key))
        owners = self._owners
        for k in range(n):
            s = owners[(i + k) % n]
            if not _full(s):
                return s
        return None


class PowerOfTwo:
    """``random``: two weighted random draws, the less loaded one wins."""

    needs_key = False

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()
        self._servers: list[Any] = []
        self._cumulative: list[int] = []

    def update(self, servers: Sequence[Any]) -> None:
        self._servers = list(servers)
        total = 0
        self._cumulative = []
        for s in self._servers:
            total += s.weight
            self._cumulative.append(total)

    def _draw(self) -> Any:
        total = self._cumulative[-1]
        return self._servers[bisect.bisect_right(self._cumulative, self._rng.randrange(total))]

    def pick(self, key: bytes | None = None) -> Any | None:
        if not self._servers:
            return None
        a = self._draw()
        b = self._draw()
        if _full(a):
            a = b
        if _full(b):
            b = a
        if _full(a):
            # both draws are full: fall back to any free server
            free = [s for s in self._servers if not _full(s)]
            return self._rng.choice(free) if free else None
        return b if b.active * a.weight < a.active * b.weight else a


class First:
    """``first``: fill servers in order up to their maxconn."""

    needs_key = False

    def __init__(self) -> None:
        self._servers: list[Any] = []

    def update(self, servers: Sequence[Any]) -> None:
        self._servers = list(servers)

    def pick(self, key: bytes | None = None) -> Any | None:
        for s in self._servers:
            if not _full(s):
                return s
        return None


def make_balancer(algorithm: str, hash_type: str = "map-based") -> Any:
    """The balancer for a backend's ``balance`` and ``hash_type`` settings."""
    if algorithm == "roundrobin":
        return RoundRobin()
    if algorithm == "static-rr":
        return StaticRoundRobin()
    if algorithm == "leastconn":
        return LeastConn()
    if algorithm == "random":
        return PowerOfTwo()
    if algorithm == "first":
        return First()
    if algorithm in ("source", "uri") or algorithm.startswith("hdr("):
        return ConsistentHash() if hash_type == "consistent" else MapHash()
    raise ValueError(f"unknown balance algorithm {algorithm!r}")
