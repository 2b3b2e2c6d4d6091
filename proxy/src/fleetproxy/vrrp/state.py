"""The VRRPv3 state machine of RFC 5798 section 6.4, for one virtual router, without I/O.

Rule 1: everything that decides what a virtual router does next lives in this file:
which state it is in, which timer runs and when it fires, whom it accepts as master,
when it sends an advertisement, takes or drops the virtual addresses, and announces
them with gratuitous ARP.

Rule 2: nothing here touches the world. No sockets, no clock, no netlink, no logging.
Every event comes in with ``now`` (seconds on any monotonic clock) and everything the
machine wants done comes back as a list of *actions* (:class:`SendAdvert`,
:class:`AddVips`, :class:`RemoveVips`, :class:`SendGarp`, :class:`Transition`) for
the I/O shell to carry out, in order. The machine runs at most one timer (the RFC's
Adver_Timer in Master, Master_Down_Timer in Backup); its expiry is :attr:`deadline`,
and the shell calls :meth:`VirtualRouter.tick` once that time has come.

Rule 3: the transitions are the table :data:`TRANSITIONS` below, keyed by
(state, event, condition), each with the RFC section it implements. The class at the
end only evaluates the condition and applies the row; an event with no row in the
current state is ignored (the RFC discards it). States and steps beyond the RFC are
marked as such: FAULT (tracking said the node must not be master, as in keepalived),
MAINT (an operator took the node out of service until released), ``preempt_delay``, announcing a priority change at once, and the split-brain heal:
a master that yields sends one parting advertisement, and a master that hears a
lower-priority master answers at once and re-sends gratuitous ARP, so whichever of
two masters hears the other first, the winner re-announces the virtual addresses.

Timers are computed in centiseconds, the unit of the advertisement interval on the
wire, with exact fractions (Skew_Time is rarely a whole number of centiseconds).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "TRANSITIONS",
    "AddVips",
    "Condition",
    "Event",
    "RemoveVips",
    "SendAdvert",
    "SendGarp",
    "State",
    "Step",
    "Transition",
    "VirtualRouter",
    "master_down_interval_cs",
    "skew_time_cs",
]


class State(enum.Enum):
    INITIALIZE = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"  # not in the RFC: a failed tracker or interface keeps the node out
    MAINT = "MAINT"  # not in the RFC: an operator keeps the node out until released

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    STARTUP = "startup"
    SHUTDOWN = "shutdown"
    ADVERT = "advertisement received"
    MASTER_DOWN_TIMER = "Master_Down_Timer fired"
    ADVER_TIMER = "Adver_Timer fired"
    FAULT = "fault"
    RECOVER = "fault cleared"
    PRIORITY = "priority changed"
    MAINT_ON = "maintenance on"
    MAINT_OFF = "maintenance off"


class Condition(enum.Enum):
    ANY = "always"
    OWNER = "Priority = 255 (address owner)"
    NOT_OWNER = "Priority < 255"
    ZERO = "advertisement Priority = 0 (the master is leaving)"
    OTHER = "advertisement Priority > 0 (a master is there)"
    FAULTED = "a tracker or the interface still fails"
    ACCEPT = "Preempt_Mode False, or advertisement Priority >= local Priority"
    PREEMPT_WAIT = "advertisement Priority < local Priority, preempt_delay still running"
    PREEMPT = "advertisement Priority < local Priority, Preempt_Mode True"
    WINS = "advertisement Priority > local, or equal and sender address > local address"
    LOSES = "advertisement Priority < local, or equal and sender address < local address"


class Step(enum.Enum):
    """What a row of the table does, in order. Timer and bookkeeping steps are
    applied by the machine itself; the others become actions for the shell."""

    SEND_ADVERT = "send an ADVERTISEMENT"
    SEND_ADVERT_ZERO = "send an ADVERTISEMENT with Priority = 0"
    ADD_VIPS = "add the virtual addresses"
    REMOVE_VIPS = "remove the virtual addresses"
    SEND_GARP = "broadcast gratuitous ARP for each virtual address"
    START_ADVER_TIMER = "set Adver_Timer to Advertisement_Interval"
    OWN_INTERVAL = "set Master_Adver_Interval to Advertisement_Interval"
    LEARN_MASTER = "set Master_Adver_Interval from the ADVERTISEMENT; note the master"
    FORGET_MASTER = "forget the master"
    START_MASTER_DOWN_TIMER = "set Master_Down_Timer to Master_Down_Interval"
    SKEW_MASTER_DOWN_TIMER = "set Master_Down_Timer to Skew_Time"
    CANCEL_TIMER = "cancel the running timer"


S, E, C, A = State, Event, Condition, Step

_BECOME_MASTER = (A.SEND_ADVERT, A.ADD_VIPS, A.SEND_GARP, A.START_ADVER_TIMER)
_BECOME_BACKUP = (A.OWN_INTERVAL, A.START_MASTER_DOWN_TIMER)

#: (state, event, condition) -> (next state, steps, where the RFC says so)
TRANSITIONS: dict[tuple[State, Event, Condition], tuple[State, tuple[Step, ...], str]] = {
    # -- Initialize ----------------------------------------------------------------
    (S.INITIALIZE, E.STARTUP, C.OWNER): (S.MASTER, _BECOME_MASTER, "RFC 5798 6.4.1"),
    (S.INITIALIZE, E.STARTUP, C.NOT_OWNER): (S.BACKUP, _BECOME_BACKUP, "RFC 5798 6.4.1"),
    (S.INITIALIZE, E.FAULT, C.ANY): (S.FAULT, (), "not in the RFC: tracking failed before startup"),
    # -- Backup --------------------------------------------------------------------
    (S.BACKUP, E.SHUTDOWN, C.ANY): (S.INITIALIZE, (A.CANCEL_TIMER,), "RFC 5798 6.4.2"),
    (S.BACKUP, E.MASTER_DOWN_TIMER, C.ANY): (S.MASTER, _BECOME_MASTER, "RFC 5798 6.4.2"),
    (S.BACKUP, E.ADVERT, C.ZERO): (S.BACKUP, (A.SKEW_MASTER_DOWN_TIMER,), "RFC 5798 6.4.2"),
    (S.BACKUP, E.ADVERT, C.ACCEPT): (
        S.BACKUP, (A.LEARN_MASTER, A.START_MASTER_DOWN_TIMER), "RFC 5798 6.4.2",
    ),
    (S.BACKUP, E.ADVERT, C.PREEMPT_WAIT): (
        S.BACKUP, (A.LEARN_MASTER, A.START_MASTER_DOWN_TIMER),
        "RFC 5798 6.4.2, held back by preempt_delay (not in the RFC)",
    ),
    (S.BACKUP, E.ADVERT, C.PREEMPT): (S.BACKUP, (), "RFC 5798 6.4.2: discard, let the timer preempt"),
    (S.BACKUP, E.PRIORITY, C.ANY): (S.BACKUP, (), "RFC 5798 6.1: Skew_Time follows the priority"),
    (S.BACKUP, E.FAULT, C.ANY): (S.FAULT, (A.CANCEL_TIMER,), "not in the RFC: tracking failed"),
    # -- Master --------------------------------------------------------------------
    (S.MASTER, E.SHUTDOWN, C.ANY): (
        S.INITIALIZE, (A.CANCEL_TIMER, A.SEND_ADVERT_ZERO, A.REMOVE_VIPS), "RFC 5798 6.4.3",
    ),
    (S.MASTER, E.ADVER_TIMER, C.ANY): (
        S.MASTER, (A.SEND_ADVERT, A.START_ADVER_TIMER), "RFC 5798 6.4.3",
    ),
    (S.MASTER, E.ADVERT, C.ZERO): (S.MASTER, (A.SEND_ADVERT, A.START_ADVER_TIMER), "RFC 5798 6.4.3"),
    (S.MASTER, E.ADVERT, C.WINS): (
        S.BACKUP,
        (A.SEND_ADVERT, A.CANCEL_TIMER, A.LEARN_MASTER, A.START_MASTER_DOWN_TIMER, A.REMOVE_VIPS),
        "RFC 5798 6.4.3; the parting advertisement is not in the RFC: it tells the winner "
        "that there were two masters, so the winner re-sends GARP (split-brain heal)",
    ),
    (S.MASTER, E.ADVERT, C.LOSES): (
        S.MASTER, (A.SEND_ADVERT, A.START_ADVER_TIMER, A.SEND_GARP),
        "RFC 5798 6.4.3 discards it; split-brain heal (not in the RFC): assert mastership at once",
    ),
    (S.MASTER, E.PRIORITY, C.ANY): (
        S.MASTER, (A.SEND_ADVERT, A.START_ADVER_TIMER),
        "not in the RFC: announce a changed priority at once",
    ),
    (S.MASTER, E.FAULT, C.ANY): (
        S.FAULT, (A.CANCEL_TIMER, A.SEND_ADVERT_ZERO, A.REMOVE_VIPS),
        "not in the RFC: tracking failed; leave as on shutdown (6.4.3)",
    ),
    # -- Fault ---------------------------------------------------------------------
    (S.FAULT, E.RECOVER, C.OWNER): (S.MASTER, _BECOME_MASTER, "as startup, RFC 5798 6.4.1"),
    (S.FAULT, E.RECOVER, C.NOT_OWNER): (S.BACKUP, _BECOME_BACKUP, "as startup, RFC 5798 6.4.1"),
    (S.FAULT, E.SHUTDOWN, C.ANY): (S.INITIALIZE, (), "not in the RFC"),
    # -- Maintenance (beyond the RFC) ------------------------------------------------
    # An operator takes the node out (`fleetproxy vrrp maintenance on`) until released.
    # A master leaves as on shutdown, with a priority-0 advertisement, so a backup takes
    # over after Skew_Time instead of Master_Down_Interval. In MAINT adverts are only
    # observed (who is master now); faults and priority changes wait for the release.
    (S.INITIALIZE, E.MAINT_ON, C.ANY): (S.MAINT, (), "beyond the RFC: maintenance from the start"),
    (S.BACKUP, E.MAINT_ON, C.ANY): (
        S.MAINT, (A.CANCEL_TIMER,), "beyond the RFC: maintenance; a Backup is silent, it stops competing",
    ),
    (S.MASTER, E.MAINT_ON, C.ANY): (
        S.MAINT, (A.CANCEL_TIMER, A.SEND_ADVERT_ZERO, A.REMOVE_VIPS),
        "beyond the RFC: maintenance; leave as on shutdown (RFC 5798 6.4.3)",
    ),
    (S.FAULT, E.MAINT_ON, C.ANY): (S.MAINT, (), "beyond the RFC: maintenance"),
    (S.MAINT, E.ADVERT, C.OTHER): (S.MAINT, (A.LEARN_MASTER,), "beyond the RFC: observe who is master"),
    (S.MAINT, E.ADVERT, C.ZERO): (S.MAINT, (A.FORGET_MASTER,), "beyond the RFC: observe that the master left"),
    (S.MAINT, E.MAINT_OFF, C.FAULTED): (S.FAULT, (), "beyond the RFC: released, but a fault remains"),
    (S.MAINT, E.MAINT_OFF, C.OWNER): (S.MASTER, _BECOME_MASTER, "beyond the RFC: released, then as startup (RFC 5798 6.4.1)"),
    (S.MAINT, E.MAINT_OFF, C.NOT_OWNER): (S.BACKUP, _BECOME_BACKUP, "beyond the RFC: released, then as startup (RFC 5798 6.4.1)"),
    (S.MAINT, E.SHUTDOWN, C.ANY): (S.INITIALIZE, (), "beyond the RFC"),
}

_EXTERNAL = {A.SEND_ADVERT, A.SEND_ADVERT_ZERO, A.ADD_VIPS, A.REMOVE_VIPS, A.SEND_GARP}


# --------------------------------------------------------------------------
# Actions for the shell
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SendAdvert:
    priority: int


@dataclass(frozen=True)
class AddVips:
    pass


@dataclass(frozen=True)
class RemoveVips:
    pass


@dataclass(frozen=True)
class SendGarp:
    pass


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: str
    rfc: str


Action = SendAdvert | AddVips | RemoveVips | SendGarp | Transition


# --------------------------------------------------------------------------
# Timers (RFC 5798 6.1), in centiseconds
# --------------------------------------------------------------------------


def skew_time_cs(priority: int, master_adver_interval: int) -> Fraction:
    """Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256."""
    return Fraction((256 - priority) * master_adver_interval, 256)


def master_down_interval_cs(priority: int, master_adver_interval: int) -> Fraction:
    """Master_Down_Interval = (3 * Master_Adver_Interval) + Skew_Time."""
    return 3 * master_adver_interval + skew_time_cs(priority, master_adver_interval)


def _address(value: int | str | ipaddress.IPv4Address) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int.from_bytes(socket.inet_aton(value), "big") if value.count(".") == 3 else int(ipaddress.IPv4Address(value))
        except OSError:
            pass
    return int(ipaddress.IPv4Address(value))


def _dotted(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


# --------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------


class VirtualRouter:
    """One virtual router (one VRID on one interface) as RFC 5798 section 6 describes it.

    ``priority`` is the configured priority (255 = address owner); :meth:`set_priority`
    changes the priority in use (tracking weights), never the owner status.
    ``advert_interval`` is in centiseconds (1-4095); ``preempt_delay`` in seconds.
    ``address`` is this router's primary address, the tie-breaker of 6.4.3.
    """

    def __init__(
        self,
        *,
        priority: int,
        advert_interval: int,
        address: int | str | ipaddress.IPv4Address,
        preempt: bool = True,
        preempt_delay: float = 0.0,
    ) -> None:
        if not 1 <= priority <= 255:
            raise ValueError(f"priority {priority} out of range 1-255")
        if not 1 <= advert_interval <= 4095:
            raise ValueError(f"advert_interval {advert_interval}cs out of range 1-4095")
        self.owner = priority == 255
        self.priority = priority
        self.advert_interval = advert_interval
        self.address = _address(address)
        # The address owner always preempts (RFC 5798 6.1, Preempt_Mode).
        self.preempt = preempt or self.owner
        self.preempt_delay = preempt_delay

        self.state = State.INITIALIZE
        self.master_adver_interval = advert_interval
        self.master_address: int | None = None
        self.master_priority: int | None = None
        #: When the running timer fires (None: no timer); the shell calls tick() then.
        self.deadline: float | None = None
        self._timer: Event | None = None
        self._preempt_at: float | None = None
        self._advert: tuple[int, int, int] = (0, 0, 0)
        self._timer_reason = ""
        self.reason = "not started"

    # -- timers ----------------------------------------------------------------------

    @property
    def skew_time_cs(self) -> Fraction:
        return skew_time_cs(self.priority, self.master_adver_interval)

    @property
    def master_down_interval_cs(self) -> Fraction:
        return master_down_interval_cs(self.priority, self.master_adver_interval)

    @property
    def skew_time(self) -> float:
        # The same value as skew_time_cs / 100, without Fraction on the hot path.
        return (256 - self.priority) * self.master_adver_interval / 25600

    @property
    def master_down_interval(self) -> float:
        return (1024 - self.priority) * self.master_adver_interval / 25600

    # -- events ----------------------------------------------------------------------

    def startup(self, now: float) -> list[Action]:
        cond = C.OWNER if self.owner else C.NOT_OWNER
        return self._apply(E.STARTUP, cond, now, "startup")

    def shutdown(self, now: float) -> list[Action]:
        return self._apply(E.SHUTDOWN, C.ANY, now, "shutdown")

    def fault(self, now: float, reason: str) -> list[Action]:
        return self._apply(E.FAULT, C.ANY, now, reason)

    def recover(self, now: float, reason: str) -> list[Action]:
        cond = C.OWNER if self.owner else C.NOT_OWNER
        return self._apply(E.RECOVER, cond, now, reason)

    def enter_maintenance(self, now: float, reason: str = "maintenance on") -> list[Action]:
        return self._apply(E.MAINT_ON, C.ANY, now, reason)

    def leave_maintenance(self, now: float, faulted: bool = False, reason: str = "maintenance off") -> list[Action]:
        """Release maintenance; ``faulted``: a tracker or the link still fails (the shell knows)."""
        cond = C.FAULTED if faulted else C.OWNER if self.owner else C.NOT_OWNER
        return self._apply(E.MAINT_OFF, cond, now, reason)

    def set_priority(self, priority: int, now: float, reason: str = "") -> list[Action]:
        if not 1 <= priority <= 255:
            raise ValueError(f"priority {priority} out of range 1-255")
        if priority == self.priority:
            return []
        old, self.priority = self.priority, priority
        return self._apply(E.PRIORITY, C.ANY, now, reason or f"priority {old} -> {priority}")

    def tick(self, now: float) -> list[Action]:
        """Fire the running timer if its deadline has come; otherwise do nothing."""
        if self.deadline is None or now < self.deadline or self._timer is None:
            return []
        reason = self._timer_reason if self._timer is E.MASTER_DOWN_TIMER else "Adver_Timer"
        return self._apply(self._timer, C.ANY, now, reason)

    def receive(
        self, src: int | str | ipaddress.IPv4Address, priority: int, max_adver_int: int, now: float
    ) -> list[Action]:
        """An ADVERTISEMENT for this VRID that passed the checks of RFC 5798 7.1."""
        src = _address(src)
        self._advert = (src, priority, max_adver_int)
        if priority == 0:
            return self._apply(E.ADVERT, C.ZERO, now, "priority-0 advertisement from {who}: master left")
        if self.state is S.MAINT:
            return self._apply(E.ADVERT, C.OTHER, now, "advertisement from {who} priority {prio}")
        if self.state is S.BACKUP:
            if not self.preempt or priority >= self.priority:
                self._preempt_at = None
                cond = C.ACCEPT
            elif self.preempt_delay > 0 and (self._preempt_at is None or now < self._preempt_at):
                if self._preempt_at is None:
                    self._preempt_at = now + self.preempt_delay
                cond = C.PREEMPT_WAIT
            else:
                cond = C.PREEMPT
            return self._apply(E.ADVERT, cond, now, "advertisement from {who} priority {prio}")
        if self.state is S.MASTER:
            if priority > self.priority or (priority == self.priority and src > self.address):
                return self._apply(E.ADVERT, C.WINS, now, "advertisement from {who} priority {prio} beats ours ({ours})")
            return self._apply(
                E.ADVERT, C.LOSES, now, "advertisement from {who} priority {prio} while master ({ours}): split-brain heal"
            )
        return []

    # -- the table -----------------------------------------------------------------

    def _apply(self, event: Event, cond: Condition, now: float, reason: str) -> list[Action]:
        row = TRANSITIONS.get((self.state, event, cond))
        if row is None:
            return []
        new, steps, rfc = row
        actions: list[Action] = []
        for step in steps:
            if step in _EXTERNAL:
                actions.append(self._external(step))
            else:
                self._internal(step, now)
        old = self.state
        self.state = new
        if new is not S.BACKUP:
            self._preempt_at = None
        if new is S.MASTER:
            self.master_address, self.master_priority = self.address, self.priority
        elif new is not S.BACKUP and not (new is S.MAINT and old in (S.MAINT, S.BACKUP)):
            # MAINT keeps what it observes, and a Backup going into maintenance keeps
            # the master it knows; from any other state it starts from nobody.
            self.master_address = self.master_priority = None
        if new is not old:
            if event is E.ADVERT:  # formatted only when it is shown
                src, prio, _ = self._advert
                reason = reason.format(who=_dotted(src), prio=prio, ours=self.priority)
            self.reason = reason
            actions.append(Transition(old, new, reason, rfc))
        return actions

    def _external(self, step: Step) -> Action:
        if step is A.SEND_ADVERT:
            return SendAdvert(self.priority)
        if step is A.SEND_ADVERT_ZERO:
            return SendAdvert(0)
        if step is A.ADD_VIPS:
            return AddVips()
        if step is A.REMOVE_VIPS:
            return RemoveVips()
        return SendGarp()

    def _internal(self, step: Step, now: float) -> None:
        if step is A.START_ADVER_TIMER:
            self._set_timer(E.ADVER_TIMER, now + self.advert_interval / 100)
        elif step is A.OWN_INTERVAL:
            self.master_adver_interval = self.advert_interval
            self.master_address = self.master_priority = None
        elif step is A.LEARN_MASTER:
            src, priority, interval = self._advert
            # A zero interval is malformed; the codec rejects it, never divide by it here.
            self.master_adver_interval = max(1, interval)
            self.master_address, self.master_priority = src, priority
        elif step is A.FORGET_MASTER:
            self.master_address = self.master_priority = None
        elif step is A.START_MASTER_DOWN_TIMER:
            self._set_timer(E.MASTER_DOWN_TIMER, now + self.master_down_interval)
            self._timer_reason = (
                f"no advertisement for {self.master_down_interval:.3f}s (Master_Down_Interval)"
            )
        elif step is A.SKEW_MASTER_DOWN_TIMER:
            self._set_timer(E.MASTER_DOWN_TIMER, now + self.skew_time)
            self._timer_reason = f"the master left (priority 0); Skew_Time {self.skew_time:.3f}s passed"
        elif step is A.CANCEL_TIMER:
            self._timer = self.deadline = None

    def _set_timer(self, which: Event, when: float) -> None:
        self._timer, self.deadline = which, when
