"""Balancing algorithms, exactly: sequences, weights (also changed at runtime), maxconn,
hashing (map-based and consistent), power of two choices, first, weight 0 and backups."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from fleetproxy import balance
from fleetproxy.config import parse
from fleetproxy.runtime import DOWN, DRAIN, MAINT, UP, Backend, Runtime


class S:
    """A server as the balancers see it."""

    def __init__(self, name: str, weight: int = 1, maxconn: int | None = None, active: int = 0) -> None:
        self.name, self.weight, self.maxconn, self.active = name, weight, maxconn, active

    def __repr__(self) -> str:
        return self.name


def servers(**weights: int) -> list[S]:
    return [S(n, w) for n, w in weights.items()]


def names(picks: list[Any]) -> str:
    return " ".join(s.name if s is not None else "-" for s in picks)


def picks(b: Any, n: int, key: Callable[[int], bytes | None] = lambda i: None) -> list[Any]:
    return [b.pick(key(i)) for i in range(n)]


# --------------------------------------------------------------------------
# roundrobin (smooth weighted) and static-rr
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["roundrobin", "static-rr"])
def test_weights_5_1_1_give_the_smooth_sequence(algorithm: str) -> None:
    b = balance.make_balancer(algorithm)
    b.update(servers(a=5, b=1, c=1))
    assert names(picks(b, 7)) == "a a b a c a a"
    assert names(picks(b, 14)) == "a a b a c a a a a b a c a a"


@pytest.mark.parametrize("algorithm", ["roundrobin", "static-rr"])
def test_equal_weights_alternate(algorithm: str) -> None:
    b = balance.make_balancer(algorithm)
    b.update(servers(a=1, b=1, c=1))
    assert names(picks(b, 6)) == "a b c a b c"


@pytest.mark.parametrize("algorithm", ["roundrobin", "static-rr"])
def test_weights_3_1_give_exactly_75_percent(algorithm: str) -> None:
    b = balance.make_balancer(algorithm)
    b.update(servers(a=3, b=1))
    counts = Counter(s.name for s in picks(b, 4000))
    assert counts == {"a": 3000, "b": 1000}


def test_roundrobin_honours_weight_changes_at_once() -> None:
    b = balance.RoundRobin()
    a, c = S("a"), S("c")
    b.update([a, c])
    assert Counter(s.name for s in picks(b, 100)) == {"a": 50, "c": 50}
    a.weight = 3  # changed at runtime (the backend calls update() after any change)
    b.update([a, c])
    counts = Counter(s.name for s in picks(b, 400))
    assert abs(counts["a"] - 300) <= 2, counts
    a.weight = 1
    c.weight = 4
    b.update([a, c])
    counts = Counter(s.name for s in picks(b, 500))
    assert abs(counts["c"] - 400) <= 4, counts


def test_static_rr_ignores_weight_changes_until_updated() -> None:
    b = balance.StaticRoundRobin()
    a, c = S("a"), S("c")
    b.update([a, c])
    a.weight = 3
    assert Counter(s.name for s in picks(b, 100)) == {"a": 50, "c": 50}
    b.update([a, c])
    assert Counter(s.name for s in picks(b, 400)) == {"a": 300, "c": 100}


@pytest.mark.parametrize("algorithm", ["roundrobin", "static-rr", "leastconn", "random", "first"])
def test_full_servers_are_skipped_and_none_when_all_are_full(algorithm: str) -> None:
    b = balance.make_balancer(algorithm)
    a, c = S("a", maxconn=1, active=1), S("c", maxconn=2)
    b.update([a, c])
    for _ in range(10):
        assert b.pick() is c
    c.active = 2
    assert b.pick() is None
    a.active = 0
    assert b.pick() is a


def test_roundrobin_update_keeps_the_position_of_remaining_servers() -> None:
    b = balance.RoundRobin()
    a, c, d = servers(a=1, c=1, d=1)
    b.update([a, c, d])
    assert names(picks(b, 2)) == "a c"
    b.update([a, c, d])  # an unrelated refresh does not restart the cycle
    assert names(picks(b, 4)) == "d a c d"


def test_empty_balancers_pick_nothing() -> None:
    for algorithm in ("roundrobin", "static-rr", "leastconn", "random", "first", "source", "uri", "hdr(X)"):
        for hash_type in ("map-based", "consistent"):
            b = balance.make_balancer(algorithm, hash_type)
            b.update([])
            assert b.pick(b"key") is None
            assert b.pick(None) is None


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError):
        balance.make_balancer("bogus")


# --------------------------------------------------------------------------
# leastconn
# --------------------------------------------------------------------------


def test_leastconn_picks_fewest_active() -> None:
    b = balance.LeastConn()
    a, c, d = S("a", active=3), S("c", active=1), S("d", active=2)
    b.update([a, c, d])
    assert b.pick() is c
    c.active = 5
    assert b.pick() is d


def test_leastconn_counts_active_per_weight() -> None:
    b = balance.LeastConn()
    heavy, light = S("heavy", weight=4, active=6), S("light", weight=1, active=2)
    b.update([heavy, light])
    assert b.pick() is heavy  # 6/4 = 1.5 < 2/1
    heavy.active = 9  # 9/4 = 2.25 > 2
    assert b.pick() is light


def test_leastconn_ties_go_round_robin() -> None:
    b = balance.LeastConn()
    b.update(servers(a=1, b=1, c=1))
    assert names(picks(b, 7)) == "a b c a b c a"


def test_leastconn_under_load_spreads_by_weight() -> None:
    """Requests that stay open: leastconn keeps active/weight level."""
    b = balance.LeastConn()
    a, c = S("a", weight=3), S("c", weight=1)
    b.update([a, c])
    for _ in range(400):
        b.pick().active += 1
    assert (a.active, c.active) == (300, 100)


# --------------------------------------------------------------------------
# source / uri / hdr: map-based and consistent hashing
# --------------------------------------------------------------------------

KEYS = [f"client-{i}".encode() for i in range(1000)]


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
def test_hash_is_sticky_and_stable(hash_type: str) -> None:
    b1 = balance.make_balancer("source", hash_type)
    b2 = balance.make_balancer("source", hash_type)
    b1.update(servers(a=1, b=1, c=1))
    b2.update(servers(a=1, b=1, c=1))
    first = [b1.pick(k).name for k in KEYS]
    assert [b1.pick(k).name for k in KEYS] == first  # same key, same server
    assert [b2.pick(k).name for k in KEYS] == first  # another instance (worker, node) agrees
    assert set(first) == {"a", "b", "c"}


def test_hash_key_is_stable_across_processes() -> None:
    """crc32-based, never Python's randomised hash(): pinned values."""
    assert balance.hash_key(b"") == balance.hash_key(b"")
    assert [balance.hash_key(k) for k in (b"a", b"127.0.0.1", b"/index.html")] == [
        balance.hash_key(b"a"), balance.hash_key(b"127.0.0.1"), balance.hash_key(b"/index.html")]
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from fleetproxy.balance import hash_key; print(hash_key(b'key-1'))"],
                         capture_output=True, text=True, timeout=60, env={"PYTHONHASHSEED": "123"})
    assert int(out.stdout) == balance.hash_key(b"key-1")


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
def test_hash_distribution_follows_weights(hash_type: str) -> None:
    b = balance.make_balancer("uri", hash_type)
    b.update(servers(a=3, b=1))
    keys = [f"/path/{i}".encode() for i in range(8000)]
    counts = Counter(b.pick(k).name for k in keys)
    assert abs(counts["a"] / 8000 - 0.75) < 0.05, counts


def test_consistent_hash_removing_one_of_four_moves_at_most_a_quarter_plus_5_percent() -> None:
    b = balance.make_balancer("source", "consistent")
    all4 = servers(s1=1, s2=1, s3=1, s4=1)
    b.update(all4)
    before = {k: b.pick(k).name for k in KEYS}
    b.update([s for s in all4 if s.name != "s3"])
    after = {k: b.pick(k).name for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert len(moved) <= 1000 * (1 / 4 + 0.05), len(moved)
    # Only the removed server's keys move, and they spread over the others.
    assert all(before[k] == "s3" for k in moved)
    assert len(moved) == sum(1 for k in KEYS if before[k] == "s3")
    assert len({after[k] for k in moved}) == 3
    # Adding it back restores the original mapping exactly.
    b.update(all4)
    assert {k: b.pick(k).name for k in KEYS} == before


def test_consistent_hash_ring_points_are_proportional_to_weight() -> None:
    b = balance.ConsistentHash()
    b.update(servers(a=2, b=1))
    owners = Counter(s.name for s in b._owners)
    assert owners == {"a": 2 * balance.POINTS_PER_WEIGHT, "b": balance.POINTS_PER_WEIGHT}


def test_map_based_hash_moves_many_keys_which_is_why_consistent_exists() -> None:
    b = balance.make_balancer("source", "map-based")
    all4 = servers(s1=1, s2=1, s3=1, s4=1)
    b.update(all4)
    before = {k: b.pick(k).name for k in KEYS}
    b.update([s for s in all4 if s.name != "s3"])
    moved = sum(1 for k in KEYS if before[k] != b.pick(k).name)
    assert moved > 1000 * (1 / 4 + 0.05)


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
def test_hash_without_a_key_falls_back_to_round_robin(hash_type: str) -> None:
    b = balance.make_balancer("hdr(X-User)", hash_type)
    b.update(servers(a=1, b=1))
    assert names(picks(b, 4)) == "a b a b"


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
def test_hash_skips_a_full_server_to_the_next(hash_type: str) -> None:
    b = balance.make_balancer("source", hash_type)
    a, c = S("a", maxconn=1), S("c", maxconn=1)
    b.update([a, c])
    key = next(k for k in KEYS if b.pick(k) is a)
    a.active = 1
    assert b.pick(key) is c
    c.active = 1
    assert b.pick(key) is None


# --------------------------------------------------------------------------
# random (power of two choices) and first
# --------------------------------------------------------------------------


class ScriptedRng:
    """randrange answers from a script: controls which servers are drawn."""

    def __init__(self, draws: list[int]) -> None:
        self.draws = list(draws)

    def randrange(self, n: int) -> int:
        return self.draws.pop(0) % n

    def choice(self, seq: list[Any]) -> Any:
        return seq[0]


def test_random_takes_the_less_loaded_of_two_draws() -> None:
    a, c, d = S("a", active=5), S("c", active=1), S("d", active=0)
    b = balance.PowerOfTwo(ScriptedRng([0, 1, 1, 0, 2, 0, 0, 0]))
    b.update([a, c, d])
    assert b.pick() is c  # draws a, c
    assert b.pick() is c  # draws c, a
    assert b.pick() is d  # draws d, a
    assert b.pick() is a  # draws a, a


def test_random_compares_load_per_weight() -> None:
    heavy, light = S("heavy", weight=4, active=6), S("light", weight=1, active=2)
    b = balance.PowerOfTwo(ScriptedRng([0, 4]))  # cumulative weights [4, 5]: 0 -> heavy, 4 -> light
    b.update([heavy, light])
    assert b.pick() is heavy  # 6/4 < 2/1


def test_random_draws_follow_weights() -> None:
    b = balance.PowerOfTwo(random.Random(1234))
    b.update(servers(a=3, b=1))
    counts = Counter(b.pick().name for _ in range(4000))
    assert abs(counts["a"] / 4000 - 0.75) < 0.03, counts


def test_random_avoids_a_busy_server() -> None:
    b = balance.PowerOfTwo(random.Random(99))
    busy, idle = S("busy", active=50), S("idle")
    b.update([busy, idle])
    counts = Counter(b.pick().name for _ in range(1000))
    # Only when both draws hit "busy" (1 in 4) is it chosen.
    assert 180 < counts["busy"] < 320, counts


def test_first_fills_servers_in_order_up_to_maxconn() -> None:
    b = balance.First()
    a, c, d = S("a", maxconn=2), S("c", maxconn=3), S("d", maxconn=1)
    b.update([a, c, d])
    order = []
    for _ in range(6):
        s = b.pick()
        s.active += 1
        order.append(s.name)
    assert order == ["a", "a", "c", "c", "c", "d"]
    assert b.pick() is None
    c.active -= 1  # a slot frees on c
    assert b.pick() is c
    a.active = 0
    assert b.pick() is a


# --------------------------------------------------------------------------
# Through runtime.Backend: usable set, weight 0, backups, runtime weight changes
# --------------------------------------------------------------------------

ALGORITHMS = ["roundrobin", "static-rr", "leastconn", "source", "uri", "hdr(X-User)", "random", "first"]


def make_backend(balance_: str, servers_: list[dict[str, Any]], **extra: Any) -> Backend:
    cfg = parse({"backends": [{"name": "be", "balance": balance_, "servers": servers_, **extra}]})
    return Runtime(cfg).backends["be"]


def srv(name: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"name": name, "address": f"127.0.0.1:{port}", **kw}


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_weight_zero_gets_nothing(algorithm: str, hash_type: str) -> None:
    be = make_backend(algorithm, [srv("zero", 1, weight=0), srv("one", 2), srv("two", 3, weight=2)],
                      hash_type=hash_type)
    got = Counter(be.pick(f"k{i}".encode()).name for i in range(300))
    assert "zero" not in got and set(got) <= {"one", "two"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backups_serve_only_when_no_primary_is_usable(algorithm: str) -> None:
    be = make_backend(algorithm, [srv("p1", 1), srv("p2", 2), srv("b1", 3, backup=True), srv("b2", 4, backup=True)])
    assert {be.pick(f"k{i}".encode()).name for i in range(50)} <= {"p1", "p2"}
    be.by_name["p1"].state = MAINT
    be.refresh()
    assert {be.pick(f"k{i}".encode()).name for i in range(50)} == {"p2"}
    be.by_name["p2"].health = DOWN
    be.refresh()
    # Only the first usable backup, as HAProxy without `option allbackups`.
    assert {be.pick(f"k{i}".encode()).name for i in range(50)} == {"b1"}
    be.by_name["b1"].state = DRAIN
    be.refresh()
    assert {be.pick(f"k{i}".encode()).name for i in range(50)} == {"b2"}
    be.by_name["p2"].health = UP
    be.refresh()
    assert {be.pick(f"k{i}".encode()).name for i in range(50)} == {"p2"}


def test_all_backups_share_the_load() -> None:
    be = make_backend("roundrobin", [srv("p1", 1, disabled=True), srv("b1", 3, backup=True),
                                     srv("b2", 4, backup=True)], all_backups=True)
    assert names(picks(be, 4)) == "b1 b2 b1 b2"


def test_no_usable_server_picks_none() -> None:
    be = make_backend("roundrobin", [srv("p1", 1, disabled=True), srv("p2", 2, weight=0)])
    assert be.usable == [] and be.pick() is None


def test_runtime_weight_change_through_backend() -> None:
    be = make_backend("roundrobin", [srv("a", 1), srv("b", 2)])
    assert Counter(be.pick().name for _ in range(100)) == {"a": 50, "b": 50}
    be.by_name["a"].weight = 3
    be.refresh()
    counts = Counter(be.pick().name for _ in range(400))
    assert abs(counts["a"] - 300) <= 2, counts
    be.by_name["a"].weight = 0  # weight 0: drained of new traffic
    be.refresh()
    assert Counter(be.pick().name for _ in range(20)) == {"b": 20}
    be.by_name["a"].weight = 1  # and back
    be.refresh()
    assert Counter(be.pick().name for _ in range(20)) == {"a": 10, "b": 10}


def test_queue_hands_freed_slots_to_waiters_in_order() -> None:
    be = make_backend("roundrobin", [srv("a", 1, maxconn=1)])
    a = be.by_name["a"]
    assert be.pick() is a
    be.acquire(a)
    assert be.pick() is None
    got: list[str] = []

    def waiter(label: str) -> Callable[[Any], None]:
        def take(s: Any) -> None:  # as HttpClient._use: the waiter takes the slot
            got.append(f"{label}:{s.name}")
            be.acquire(s)
        return take

    be.enqueue(waiter("w1"))
    w2 = be.enqueue(waiter("w2"))
    be.enqueue(waiter("w3"))
    w2.cancelled = True
    be.release(a)
    assert got == ["w1:a"]
    assert be.queue_length() == 1
    be.release(a)
    assert got == ["w1:a", "w3:a"]
    assert be.queue_length() == 0 and a.active == 1
