"""The pure VRRPv3 state machine with a fake clock: every row of the table, the timers
to the centisecond, and elections among random routers (hypothesis)."""

from __future__ import annotations

import heapq
import ipaddress
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fleetproxy.vrrp.state import (
    TRANSITIONS,
    AddVips,
    Condition,
    Event,
    RemoveVips,
    SendAdvert,
    SendGarp,
    State,
    Transition,
    VirtualRouter,
    master_down_interval_cs,
    skew_time_cs,
)

ME = "198.18.51.11"
LOWER_ADDR = "198.18.51.5"
HIGHER_ADDR = "198.18.51.20"


def router(priority=100, interval=100, preempt=True, preempt_delay=0.0, address=ME) -> VirtualRouter:
    return VirtualRouter(priority=priority, advert_interval=interval, address=address,
                         preempt=preempt, preempt_delay=preempt_delay)


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def transitions(actions) -> list[tuple[State, State]]:
    return [(a.old, a.new) for a in actions if isinstance(a, Transition)]


def as_backup(now=0.0, **kw) -> VirtualRouter:
    r = router(**kw)
    r.startup(now)
    assert r.state is State.BACKUP
    return r


def as_master(now=0.0, **kw) -> VirtualRouter:
    r = as_backup(now, **kw)
    r.tick(r.deadline)
    assert r.state is State.MASTER
    return r


# --------------------------------------------------------------------------
# Every row of TRANSITIONS
# --------------------------------------------------------------------------

def _drive(key):
    """Put a router in the row's state, fire the row's event under its condition;
    return (router, actions)."""
    state, event, cond = key
    owner = cond is Condition.OWNER
    prio = 255 if owner else 100
    if state is State.INITIALIZE:
        r = router(priority=prio)
    elif state is State.BACKUP:
        r = as_backup(preempt_delay=5.0 if cond is Condition.PREEMPT_WAIT else 0.0)
    elif state is State.MASTER:
        r = as_master()
    elif state is State.MAINT:
        r = router(priority=prio)
        r.enter_maintenance(0.0)
    else:
        r = router(priority=prio)
        r.fault(0.0, "test")
    assert r.state is state
    now = 10.0
    if event is Event.STARTUP:
        return r, r.startup(now)
    if event is Event.SHUTDOWN:
        return r, r.shutdown(now)
    if event is Event.FAULT:
        return r, r.fault(now, "track down")
    if event is Event.RECOVER:
        return r, r.recover(now, "track up")
    if event is Event.PRIORITY:
        return r, r.set_priority(90, now)
    if event in (Event.MASTER_DOWN_TIMER, Event.ADVER_TIMER):
        return r, r.tick(r.deadline)
    if event is Event.MAINT_ON:
        return r, r.enter_maintenance(now)
    if event is Event.MAINT_OFF:
        return r, r.leave_maintenance(now, faulted=cond is Condition.FAULTED)
    assert event is Event.ADVERT
    advert = {
        Condition.ZERO: (HIGHER_ADDR, 0),
        Condition.OTHER: (HIGHER_ADDR, 150),
        Condition.ACCEPT: (HIGHER_ADDR, 150),
        Condition.PREEMPT_WAIT: (HIGHER_ADDR, 50),
        Condition.PREEMPT: (HIGHER_ADDR, 50),
        Condition.WINS: (HIGHER_ADDR, 150),
        Condition.LOSES: (HIGHER_ADDR, 50),
    }[cond]
    return r, r.receive(advert[0], advert[1], 100, now)


_EXPECTED_ACTIONS = {
    (State.INITIALIZE, Event.STARTUP, Condition.OWNER): ["SendAdvert", "AddVips", "SendGarp"],
    (State.BACKUP, Event.MASTER_DOWN_TIMER, Condition.ANY): ["SendAdvert", "AddVips", "SendGarp"],
    (State.MASTER, Event.SHUTDOWN, Condition.ANY): ["SendAdvert", "RemoveVips"],
    (State.MASTER, Event.ADVER_TIMER, Condition.ANY): ["SendAdvert"],
    (State.MASTER, Event.ADVERT, Condition.ZERO): ["SendAdvert"],
    (State.MASTER, Event.ADVERT, Condition.WINS): ["SendAdvert", "RemoveVips"],
    (State.MASTER, Event.ADVERT, Condition.LOSES): ["SendAdvert", "SendGarp"],
    (State.MASTER, Event.PRIORITY, Condition.ANY): ["SendAdvert"],
    (State.MASTER, Event.FAULT, Condition.ANY): ["SendAdvert", "RemoveVips"],
    (State.FAULT, Event.RECOVER, Condition.OWNER): ["SendAdvert", "AddVips", "SendGarp"],
    (State.MASTER, Event.MAINT_ON, Condition.ANY): ["SendAdvert", "RemoveVips"],
    (State.MAINT, Event.MAINT_OFF, Condition.OWNER): ["SendAdvert", "AddVips", "SendGarp"],
}


@pytest.mark.parametrize("key", list(TRANSITIONS), ids=lambda k: f"{k[0].name}-{k[1].name}-{k[2].name}")
def test_every_transition(key):
    new_state, _steps, rfc = TRANSITIONS[key]
    assert rfc  # every row names its source
    r, actions = _drive(key)
    assert r.state is new_state
    io = [k for k in kinds(actions) if k != "Transition"]
    assert io == _EXPECTED_ACTIONS.get(key, [])
    if new_state is not key[0]:
        assert transitions(actions) == [(key[0], new_state)]
        assert actions[-1].rfc == rfc
    else:
        assert transitions(actions) == []


def test_the_table_covers_the_rfc_state_machine():
    rows = set(TRANSITIONS)
    for ev in (Event.SHUTDOWN, Event.ADVERT):
        assert any(k[0] is State.BACKUP and k[1] is ev for k in rows)
        assert any(k[0] is State.MASTER and k[1] is ev for k in rows)
    assert (State.BACKUP, Event.MASTER_DOWN_TIMER, Condition.ANY) in rows
    assert (State.MASTER, Event.ADVER_TIMER, Condition.ANY) in rows


def test_events_without_a_row_are_ignored():
    r = as_backup()
    assert r.recover(1.0, "x") == []
    assert r.state is State.BACKUP
    r = router()
    assert r.receive(HIGHER_ADDR, 200, 100, 0.0) == []  # INITIALIZE ignores adverts
    assert r.tick(100.0) == []
    r.fault(0.0, "t")
    assert r.receive(HIGHER_ADDR, 200, 100, 0.0) == []  # FAULT ignores adverts
    assert r.state is State.FAULT


def test_shutdown_advert_carries_priority_zero():
    r = as_master(priority=200)
    actions = r.shutdown(5.0)
    assert SendAdvert(0) in actions and RemoveVips() in actions
    assert r.deadline is None and r.state is State.INITIALIZE


def test_fault_from_master_leaves_like_shutdown_and_recovers_as_backup():
    r = as_master(priority=200)
    acts = r.fault(1.0, "track tcp 127.0.0.1:80 down")
    assert acts[:2] == [SendAdvert(0), RemoveVips()]
    assert r.state is State.FAULT and r.reason == "track tcp 127.0.0.1:80 down"
    acts = r.recover(2.0, "ok")
    assert r.state is State.BACKUP
    assert r.deadline == pytest.approx(2.0 + r.master_down_interval)


def test_master_actions_are_in_rfc_order():
    r = as_backup()
    acts = r.tick(r.deadline)
    assert kinds(acts) == ["SendAdvert", "AddVips", "SendGarp", "Transition"]
    assert acts[0] == SendAdvert(100)
    assert acts[1] == AddVips() and acts[2] == SendGarp()


# --------------------------------------------------------------------------
# Maintenance (beyond the RFC)
# --------------------------------------------------------------------------

def test_every_maintenance_row_says_it_is_beyond_the_rfc():
    rows = {k: v for k, v in TRANSITIONS.items() if State.MAINT in (k[0], v[0])}
    assert {k[0] for k in rows} == {State.INITIALIZE, State.BACKUP, State.MASTER, State.FAULT, State.MAINT}
    for key, (_new, _steps, rfc) in rows.items():
        assert "beyond the RFC" in rfc, key


def test_master_in_maintenance_leaves_like_shutdown_and_stays_out():
    r = as_master(priority=200)
    acts = r.enter_maintenance(5.0, "maintenance on (uid 0)")
    assert acts[:2] == [SendAdvert(0), RemoveVips()]
    assert transitions(acts) == [(State.MASTER, State.MAINT)]
    assert r.state is State.MAINT and r.deadline is None and r.reason == "maintenance on (uid 0)"
    assert r.master_address is None
    # Nothing brings it back by itself: no timer, lower-priority masters, faults, recoveries.
    assert r.tick(1e9) == []
    assert r.receive(LOWER_ADDR, 50, 100, 6.0) == []
    assert r.fault(6.1, "track down") == [] and r.recover(6.2, "track up") == []
    assert r.set_priority(150, 6.3) == []
    assert r.state is State.MAINT
    # It observes who is master now, and that a master left.
    assert r.master_address == int(ipaddress.IPv4Address(LOWER_ADDR)) and r.master_priority == 50
    assert r.receive(LOWER_ADDR, 0, 100, 7.0) == []
    assert r.master_address is None and r.state is State.MAINT
    assert r.enter_maintenance(7.5) == []  # already in


def test_backup_in_maintenance_stops_competing_and_sends_nothing():
    r = as_backup(priority=150)
    r.receive(HIGHER_ADDR, 200, 100, 1.0)
    acts = r.enter_maintenance(1.5)
    assert kinds(acts) == ["Transition"]
    assert r.state is State.MAINT and r.deadline is None
    # It keeps the master it knew as a Backup (status shows it) and goes on observing.
    assert r.master_address == int(ipaddress.IPv4Address(HIGHER_ADDR)) and r.master_priority == 200
    assert r.receive(HIGHER_ADDR, 0, 100, 2.0) == []
    assert r.master_address is None and r.state is State.MAINT
    r.receive(HIGHER_ADDR, 200, 100, 3.0)
    assert r.master_address == int(ipaddress.IPv4Address(HIGHER_ADDR))


def test_release_returns_as_backup_and_preempts_a_lower_master():
    r = router(priority=200)
    r.enter_maintenance(0.0)  # maintenance kept from an earlier run: never master first
    assert r.state is State.MAINT and r.startup(0.0) == []
    r.receive(LOWER_ADDR, 100, 100, 1.0)
    acts = r.leave_maintenance(1.2)
    assert transitions(acts) == [(State.MAINT, State.BACKUP)]
    assert r.deadline == pytest.approx(1.2 + r.master_down_interval)
    assert r.master_address is None
    r.receive(LOWER_ADDR, 100, 100, 1.5)  # lower priority, preempt: discarded
    r.tick(r.deadline)
    assert r.state is State.MASTER


def test_release_without_preempt_stays_backup_under_a_lower_master():
    r = router(priority=200, preempt=False)
    r.enter_maintenance(0.0)
    r.leave_maintenance(1.0)
    for k in range(40):
        r.receive(LOWER_ADDR, 100, 100, 1.5 + k)
        assert r.tick(1.5 + k + 0.99) == []
    assert r.state is State.BACKUP and r.master_priority == 100


def test_release_with_a_fault_left_goes_to_fault():
    r = as_master()
    r.enter_maintenance(1.0)
    acts = r.leave_maintenance(2.0, faulted=True, reason="released; track proxy down")
    assert transitions(acts) == [(State.MAINT, State.FAULT)] and kinds(acts) == ["Transition"]
    assert r.state is State.FAULT and r.reason == "released; track proxy down"
    r.recover(3.0, "ok")
    assert r.state is State.BACKUP


def test_owner_released_from_maintenance_is_master_at_once():
    r = router(priority=255)
    r.startup(0.0)
    r.enter_maintenance(1.0)
    assert r.leave_maintenance(2.0)[:3] == [SendAdvert(255), AddVips(), SendGarp()]
    assert r.state is State.MASTER


def test_a_master_in_maintenance_hands_over_after_skew_time():
    """On a simulated LAN: the backup takes over Skew_Time after the priority-0 advert,
    not Master_Down_Interval; the node stays out; released, it preempts back."""
    lan = Lan([(200, "198.18.51.11", True), (100, "198.18.51.12", True)])
    lan.start(0, 0.0)
    lan.start(1, 0.0)
    lan.run_until(2.0)
    a, b = lan.routers
    assert (a.state, b.state) == (State.MASTER, State.BACKUP)
    lan._do(0, a.enter_maintenance(lan.now))
    t0 = lan.now
    lan.run_until(t0 + b.skew_time + 2 * lan.delay)
    assert b.state is State.MASTER
    assert b.skew_time < 0.1 < b.master_down_interval  # 10cs interval, priority 100
    lan.run_until(t0 + 10.0)
    assert (a.state, b.state) == (State.MAINT, State.MASTER)
    assert a.master_address == b.address  # the node in maintenance sees who holds the VIP
    assert lan.masters() == 1
    lan._do(0, a.leave_maintenance(lan.now))
    lan.run_until(lan.now + a.master_down_interval + 3 * lan.delay)
    assert (a.state, b.state) == (State.MASTER, State.BACKUP)


# --------------------------------------------------------------------------
# Timers to the centisecond (RFC 5798 6.1)
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "priority, interval, skew, mdi",
    [
        (100, 100, Fraction(15600, 256), Fraction(300) + Fraction(15600, 256)),  # 60.9375cs, 360.9375cs
        (254, 100, Fraction(200, 256), Fraction(300) + Fraction(200, 256)),
        (1, 100, Fraction(25500, 256), Fraction(300) + Fraction(25500, 256)),
        (150, 10, Fraction(1060, 256), Fraction(30) + Fraction(1060, 256)),
        (200, 4095, Fraction(56 * 4095, 256), Fraction(3 * 4095) + Fraction(56 * 4095, 256)),
    ],
)
def test_skew_and_master_down_interval(priority, interval, skew, mdi):
    assert skew_time_cs(priority, interval) == skew
    assert master_down_interval_cs(priority, interval) == mdi
    r = router(priority=priority, interval=interval)
    assert r.skew_time_cs == skew and r.master_down_interval_cs == mdi
    r.startup(7.0)
    assert r.deadline == pytest.approx(7.0 + float(mdi) / 100, abs=1e-9)


def test_backup_timer_fires_exactly_at_master_down_interval():
    r = as_backup(now=0.0, priority=100, interval=100)  # 3.609375 s
    assert r.tick(3.60) == [] and r.state is State.BACKUP
    assert r.tick(3.609) == [] and r.state is State.BACKUP
    r.tick(3.609375)
    assert r.state is State.MASTER
    assert r.deadline == pytest.approx(3.609375 + 1.0)


def test_backup_learns_the_masters_interval():
    r = as_backup(priority=100, interval=100)
    r.receive(HIGHER_ADDR, 200, 25, 1.0)  # master advertises every 250ms
    assert r.master_adver_interval == 25
    assert r.master_down_interval_cs == 75 + Fraction(156 * 25, 256)
    assert r.deadline == pytest.approx(1.0 + (75 + 156 * 25 / 256) / 100)
    # Becoming master again uses its own interval (6.4.2 -> Adver_Timer = Advertisement_Interval).
    r.tick(r.deadline)
    assert r.deadline == pytest.approx(1.0 + (75 + 156 * 25 / 256) / 100 + 1.0)


def test_priority_zero_sets_the_timer_to_skew_time():
    r = as_backup(priority=100, interval=10)
    r.receive(HIGHER_ADDR, 200, 10, 1.0)
    r.receive(HIGHER_ADDR, 0, 10, 1.05)
    assert r.deadline == pytest.approx(1.05 + 156 * 10 / 256 / 100)
    r.tick(r.deadline)
    assert r.state is State.MASTER


def test_adver_timer_repeats_every_interval():
    r = as_master(interval=10)
    t = r.deadline
    for _ in range(5):
        acts = r.tick(t)
        assert acts == [SendAdvert(100)]
        assert r.deadline == pytest.approx(t + 0.1)
        t = r.deadline


# --------------------------------------------------------------------------
# Preemption
# --------------------------------------------------------------------------

def test_backup_with_preempt_discards_lower_priority():
    r = as_backup(priority=100)
    deadline = r.deadline
    assert r.receive(HIGHER_ADDR, 50, 100, 1.0) == []
    assert r.deadline == deadline  # not reset: the timer will preempt
    r.tick(deadline)
    assert r.state is State.MASTER


def test_backup_without_preempt_accepts_lower_priority():
    r = as_backup(priority=100, preempt=False)
    r.receive(HIGHER_ADDR, 50, 100, 1.0)
    assert r.deadline == pytest.approx(1.0 + r.master_down_interval)
    assert r.master_priority == 50


def test_owner_always_preempts():
    r = router(priority=255, preempt=False)
    assert r.preempt
    r.startup(0.0)
    assert r.state is State.MASTER


def test_preempt_delay_holds_back_then_preempts():
    r = as_backup(priority=100, preempt_delay=2.0)
    mdi = r.master_down_interval
    assert r.receive(LOWER_ADDR, 50, 100, 0.5) == []  # the delay starts now
    assert r.deadline == pytest.approx(0.5 + mdi)
    r.receive(LOWER_ADDR, 50, 100, 1.5)
    assert r.deadline == pytest.approx(1.5 + mdi) and r.state is State.BACKUP
    # Past the delay the lower adverts are discarded and the timer preempts.
    r.receive(LOWER_ADDR, 50, 100, 2.6)
    assert r.deadline == pytest.approx(1.5 + mdi)
    r.tick(r.deadline)
    assert r.state is State.MASTER


def test_preempt_delay_is_reset_by_a_better_master():
    r = as_backup(priority=100, preempt_delay=2.0)
    r.receive(LOWER_ADDR, 50, 100, 0.5)
    r.receive(HIGHER_ADDR, 150, 100, 1.0)
    r.receive(LOWER_ADDR, 50, 100, 3.0)  # a new lower master: the delay starts over
    assert r.deadline == pytest.approx(3.0 + r.master_down_interval)


# --------------------------------------------------------------------------
# Master receiving advertisements (6.4.3), ties by address
# --------------------------------------------------------------------------

def test_master_yields_to_higher_priority():
    r = as_master(priority=100)
    acts = r.receive(LOWER_ADDR, 101, 50, 5.0)
    assert r.state is State.BACKUP and RemoveVips() in acts
    assert acts[0] == SendAdvert(100)  # the parting advertisement (split-brain heal)
    assert r.master_adver_interval == 50
    assert r.deadline == pytest.approx(5.0 + r.master_down_interval)


def test_tie_goes_to_the_higher_address():
    r = as_master(priority=100, address=ME)
    r.receive(LOWER_ADDR, 100, 100, 5.0)
    assert r.state is State.MASTER
    r.receive(HIGHER_ADDR, 100, 100, 5.1)
    assert r.state is State.BACKUP


def test_split_heal_master_answers_lower_master_at_once():
    r = as_master(priority=200)
    acts = r.receive(LOWER_ADDR, 100, 100, 5.0)
    assert acts == [SendAdvert(200), SendGarp()]
    assert r.deadline == pytest.approx(6.0)


def test_priority_change_in_master_is_announced():
    r = as_master(priority=200)
    assert r.set_priority(140, 1.0) == [SendAdvert(140)]
    assert r.set_priority(140, 1.0) == []
    with pytest.raises(ValueError):
        r.set_priority(0, 1.0)


def test_constructor_validates():
    with pytest.raises(ValueError):
        router(priority=0)
    with pytest.raises(ValueError):
        router(interval=0)
    with pytest.raises(ValueError):
        router(interval=4096)


# --------------------------------------------------------------------------
# Elections on a simulated LAN (fake clock, hypothesis)
# --------------------------------------------------------------------------


class Lan:
    """Routers on one segment with a fixed delivery delay; the clock is ours."""

    def __init__(self, specs, delay=0.001, interval=10):
        self.delay = delay
        self.routers = [
            VirtualRouter(priority=p, advert_interval=interval, address=a, preempt=pre)
            for p, a, pre in specs
        ]
        self.now = 0.0
        self.inflight: list[tuple[float, int, int, int, int]] = []  # (time, seq, dst, src, prio)
        self._seq = 0
        self.cut: set[int] = set()  # partitioned routers: nothing in or out
        self.log: list[tuple[float, int]] = []  # (time, number of masters) after each event

    def _do(self, i, actions):
        for a in actions:
            if isinstance(a, SendAdvert) and i not in self.cut:
                for j in range(len(self.routers)):
                    if j != i and j not in self.cut:
                        self._seq += 1
                        heapq.heappush(self.inflight, (self.now + self.delay, self._seq, j, i, a.priority))
        self.log.append((self.now, self.masters()))

    def start(self, i, at):
        self.run_until(at)
        self._do(i, self.routers[i].startup(self.now))

    def masters(self) -> int:
        return sum(r.state is State.MASTER for r in self.routers)

    def run_until(self, t_end):
        while True:
            timers = [(r.deadline, i) for i, r in enumerate(self.routers) if r.deadline is not None]
            next_timer = min(timers) if timers else (None, None)
            next_msg = self.inflight[0][0] if self.inflight else None
            candidates = [x for x in (next_timer[0], next_msg) if x is not None]
            if not candidates or min(candidates) > t_end:
                self.now = t_end
                return
            if next_msg is not None and (next_timer[0] is None or next_msg <= next_timer[0]):
                when, _, dst, src, prio = heapq.heappop(self.inflight)
                self.now = when
                if dst in self.cut:
                    continue
                sender = self.routers[src]
                self._do(dst, self.routers[dst].receive(sender.address, prio, sender.advert_interval, when))
            else:
                when, i = next_timer
                self.now = when
                self._do(i, self.routers[i].tick(when))


priorities = st.integers(min_value=1, max_value=254)


@st.composite
def lans(draw, min_size=2, max_size=6):
    n = draw(st.integers(min_size, max_size))
    prios = draw(st.lists(priorities, min_size=n, max_size=n))
    hosts = draw(st.lists(st.integers(2, 250), min_size=n, max_size=n, unique=True))
    addrs = [f"198.18.51.{h}" for h in hosts]
    starts = draw(st.lists(st.floats(0, 0.5), min_size=n, max_size=n))
    return list(zip(prios, addrs, [True] * n, strict=True)), starts


def _best(specs) -> int:
    return max(range(len(specs)), key=lambda i: (specs[i][0], int(ipaddress.IPv4Address(specs[i][1]))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lans())
def test_highest_priority_wins_and_at_most_one_master_once_adverts_flow(case):
    specs, starts = case
    lan = Lan(specs)
    for i in sorted(range(len(specs)), key=lambda i: starts[i]):
        lan.start(i, starts[i])
    worst_mdi = max(r.master_down_interval for r in lan.routers)
    settled = max(starts) + worst_mdi + 3 * lan.delay
    lan.run_until(settled + 5.0)
    assert all(n <= 1 for t, n in lan.log if t >= settled), lan.log
    assert lan.masters() == 1
    winner = next(i for i, r in enumerate(lan.routers) if r.state is State.MASTER)
    # The highest priority wins. Among equals, a backup accepts the master it hears
    # first (6.4.2: priority >= local), so the address decides only between masters.
    top = max(p for p, _, _ in specs)
    assert specs[winner][0] == top
    if [p for p, _, _ in specs].count(top) == 1:
        assert winner == _best(specs)
    for i, r in enumerate(lan.routers):
        if i != winner:
            assert r.state is State.BACKUP
            assert r.master_address == lan.routers[winner].address


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(2, 250), min_size=2, max_size=6, unique=True), priorities)
def test_ties_between_masters_go_to_the_higher_address(hosts, prio):
    specs = [(prio, f"198.18.51.{h}", True) for h in hosts]
    lan = Lan(specs)
    for i in range(len(specs)):
        lan.start(i, 0.0)  # same priority, same instant: all time out together
    lan.run_until(lan.routers[0].master_down_interval + 0.01)
    lan.run_until(3.0)
    assert lan.masters() == 1
    winner = next(i for i, r in enumerate(lan.routers) if r.state is State.MASTER)
    assert winner == _best(specs) == hosts.index(max(hosts))


@settings(max_examples=100, deadline=None)
@given(lans(), st.floats(0.5, 3.0))
def test_partition_heals_to_one_master_within_two_intervals(case, outage):
    specs, starts = case
    lan = Lan(specs)
    for i in range(len(specs)):
        lan.start(i, starts[i])
    lan.run_until(2.0)
    best = _best(specs)
    assume(lan.routers[best].state is State.MASTER)
    # Cut the master off: the others elect one of their own; two masters.
    lan.cut = {best}
    lan.run_until(2.0 + outage)
    assert lan.masters() == 2
    heal = lan.now
    lan.cut = set()
    interval = lan.routers[0].advert_interval / 100
    lan.run_until(heal + 2 * interval)
    assert lan.masters() == 1
    assert lan.routers[best].state is State.MASTER


@settings(max_examples=60, deadline=None)
@given(st.lists(priorities, min_size=2, max_size=5))
def test_without_preempt_a_late_higher_router_does_not_take_over(prios):
    specs = [(p, f"198.18.51.{10 + i}", False) for i, p in enumerate(prios)]
    lan = Lan(specs)
    lan.start(0, 0.0)
    lan.run_until(1.0)
    assert lan.routers[0].state is State.MASTER
    for i in range(1, len(specs)):
        lan.start(i, 1.0 + i * 0.01)
    lan.run_until(5.0)
    assert lan.routers[0].state is State.MASTER and lan.masters() == 1


@given(priorities, st.integers(1, 4095))
def test_float_timers_equal_the_exact_ones(priority, interval):
    r = router(priority=priority, interval=interval)
    assert r.skew_time == pytest.approx(float(skew_time_cs(priority, interval) / 100), abs=1e-12)
    assert r.master_down_interval == pytest.approx(float(master_down_interval_cs(priority, interval) / 100), abs=1e-12)
