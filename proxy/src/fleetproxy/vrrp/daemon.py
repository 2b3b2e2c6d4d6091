"""The I/O shell around :class:`.state.VirtualRouter`: one asyncio loop for all instances.

Per instance it owns the raw VRRP socket, the one timer of the state machine, the
virtual addresses (through netlink), gratuitous ARP, the trackers and the notify hooks.
It feeds the machine events with ``loop.time()`` and carries out the actions it
returns, in order, on one queue, so an address is always added before the ARP that
announces it and removed in the order the machine decided. Hooks run in their own
task and never hold up the protocol.

Maintenance (``fleetproxy vrrp maintenance on|off``, over the control socket of
:mod:`.control`) is per instance; with ``state_file`` set it is written there before it
takes effect and read back at start, so a node in maintenance stays out across restarts
and reboots until it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from .config import Instance, Track, VrrpConfig
from .control import ControlServer
from .net import GarpSender, Netlink, link_up, open_vrrp_socket, watch_netlink
from .packet import (
    VRRP_GROUP,
    VRRP_TTL,
    Advert,
    PacketError,
    ReplayGuard,
    decode,
    encode,
    ip_header,
    parse_ip,
)
from .state import AddVips, RemoveVips, SendAdvert, SendGarp, State, Transition, VirtualRouter
from .track import Tracker

log = logging.getLogger("fleetproxy.vrrp")


class StartupError(Exception):
    pass


class InstanceRunner:
    def __init__(self, cfg: Instance, netlink: Netlink, other_vips: set[str] | None = None) -> None:
        # Configuration
        self.cfg = cfg
        self.other_vips = other_vips or set()  # VIPs of other instances on this interface
        self.name = cfg.name
        self.netlink = netlink
        self.key = cfg.hmac_key
        self.vips = [(v.split("/")[0], int(v.split("/")[1])) for v in cfg.virtual_ips]
        self.peers = list(cfg.unicast_peers)
        # The interface
        self.ifindex = 0
        self.mac = ""
        self.address: str | None = None  # primary IPv4 address: source of adverts, tie-breaker
        # Protocol state
        self.machine: VirtualRouter | None = None
        self.since = time.time()
        self.vips_held = False
        self.maintenance = False
        self._heard: dict[int, float] = {}  # advertiser (as int) -> loop time of its last advert
        self.counters: Counter[str] = Counter()
        self._faults: dict[str, str] = {}
        self._trackers: list[Tracker] = []
        self._replay = ReplayGuard()
        self._seq = time.time_ns() // 1000
        self._addr_warned: set[str] = set()
        # I/O
        self._sock: socket.socket | None = None
        self._garp: GarpSender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._actions: asyncio.Queue = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._garp_task: asyncio.Task | None = None
        self._hooks: asyncio.Queue = asyncio.Queue()
        self._hook_task: asyncio.Task | None = None
        self._started = False

    # -- start and stop --------------------------------------------------------------

    async def prepare(self) -> None:
        """Resolve the interface, remove stale virtual IPs, open sockets, run the first
        round of checks. Nothing is sent yet."""
        self._loop = asyncio.get_running_loop()
        link = await self.netlink.link(self.cfg.interface)
        if link is None:
            raise StartupError(f"{self.name}: interface {self.cfg.interface} does not exist")
        self.ifindex, self.mac = link.index, link.mac
        removed = []
        for addr, plen in self.vips:
            if await self.netlink.del_address(self.ifindex, addr, plen):
                removed.append(f"{addr}/{plen}")
        if removed:
            log.warning("%s: removed stale virtual IP(s) %s from %s (left by an earlier run)",
                        self.name, ", ".join(removed), self.cfg.interface)
        self.address = await self._primary_address()
        if self.address is None:
            raise StartupError(f"{self.name}: {self.cfg.interface} has no IPv4 address of its own")
        if not link.up:
            self._faults["link"] = f"{self.cfg.interface} is down"
        self._sock = open_vrrp_socket(self.cfg.interface, self.ifindex, self.address, multicast=not self.peers)
        self._garp = GarpSender(self.cfg.interface)
        self.machine = VirtualRouter(
            priority=self.cfg.priority,
            advert_interval=self.cfg.advert_interval_cs,
            address=self.address,
            preempt=self.cfg.preempt,
            preempt_delay=self.cfg.preempt_delay,
        )
        for spec in self.cfg.track:
            tracker = Tracker(spec, self._on_track)
            self._trackers.append(tracker)
            if spec.kind == "interface":
                tl = await self.netlink.link(spec.interface or "")
                tracker.result(tl is not None and tl.up, "up" if tl is not None and tl.up else "down or missing")
            else:
                tracker.start()
        if self._trackers:
            waits = [t.first_result.wait() for t in self._trackers]
            longest = max(float(t.spec.timeout or 0) for t in self._trackers) + 1.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), longest)

    def start(self) -> None:
        assert self._loop is not None and self._sock is not None and self.machine is not None
        self._worker = self._loop.create_task(self._work(), name=f"vrrp {self.name} actions")
        self._hook_task = self._loop.create_task(self._run_hooks(), name=f"vrrp {self.name} hooks")
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        self._started = True
        self.machine.set_priority(self._effective_priority(), self._now())
        now = self._now()
        if self.maintenance:
            self._feed(self.machine.enter_maintenance(now, "maintenance (kept in the state file)"))
        elif self._faults:
            self._feed(self.machine.fault(now, "; ".join(self._faults.values())))
        else:
            self._feed(self.machine.startup(now))
        log.info(
            "%s: started on %s (%s, %s) vrid %d priority %d, advert interval %gs, %s",
            self.name, self.cfg.interface, self.address, self.mac, self.cfg.vrid,
            self.machine.priority, self.cfg.advert_interval,
            "unicast to " + ", ".join(self.peers) if self.peers else f"multicast {VRRP_GROUP}",
        )

    async def stop(self) -> None:
        """Graceful stop: a master sends priority 0 (RFC 5798 6.4.3) and drops the VIPs."""
        if self._started and self.machine is not None:
            self._feed(self.machine.shutdown(self._now()))
            self._enqueue_hook("STOP", 0)
            self._actions.put_nowait(None)
            if self._worker is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._worker, 5.0)
            self._hooks.put_nowait(None)
            if self._hook_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._hook_task, self.cfg.notify.timeout + 1)
        if self.vips_held:
            await self._remove_vips()
        for t in self._trackers:
            await t.stop()
        for task in (self._garp_task, self._worker, self._hook_task):
            if task is not None and not task.done():
                task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            if self._loop is not None and self._started:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        if self._garp is not None:
            self._garp.close()

    # -- maintenance -----------------------------------------------------------------

    def set_maintenance(self, on: bool, reason: str) -> bool:
        """Enter or leave maintenance; False if already so. A master leaves at once with
        a priority-0 advertisement; released, the instance starts over as a backup
        (or in FAULT while a fault remains)."""
        if on == self.maintenance:
            return False
        self.maintenance = on
        if self._started and self.machine is not None:
            now = self._now()
            if on:
                self._feed(self.machine.enter_maintenance(now, reason))
            else:
                faults = "; ".join(self._faults.values())
                self._feed(self.machine.leave_maintenance(now, bool(faults), f"{reason}; {faults}" if faults else reason))
        log.warning("%s: %s", self.name, reason)
        return True

    # -- feeding the machine -------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _feed(self, actions: list) -> None:
        """Queue the machine's actions and re-arm its timer."""
        for action in actions:
            if isinstance(action, SendAdvert):
                # Sent at once: nothing may delay an advertisement.
                self._send_advert(action.priority)
            else:
                if isinstance(action, Transition):
                    self.since = time.time()
                self._actions.put_nowait(action)
        self._arm()

    def _arm(self) -> None:
        assert self.machine is not None and self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.machine.deadline is not None:
            self._timer = self._loop.call_at(self.machine.deadline, self._on_timer)

    def _on_timer(self) -> None:
        assert self.machine is not None
        self._timer = None
        now = self._now()
        deadline = self.machine.deadline
        if deadline is not None and deadline - 0.002 < now < deadline:
            now = deadline  # the loop may wake a hair early
        self._feed(self.machine.tick(now))

    async def _work(self) -> None:
        while True:
            action = await self._actions.get()
            if action is None:
                return
            try:
                if isinstance(action, AddVips):
                    await self._add_vips()
                elif isinstance(action, RemoveVips):
                    await self._remove_vips()
                elif isinstance(action, SendGarp):
                    self._start_garp()
                elif isinstance(action, Transition):
                    self._transition(action)
            except Exception:
                log.exception("%s: %s failed", self.name, type(action).__name__)

    # -- receiving -----------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):
            try:
                data = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("%s: recv: %s", self.name, exc)
                return
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        assert self.machine is not None
        try:
            src, dst, ttl, payload = parse_ip(data)
        except PacketError:
            self.counters["rx_malformed"] += 1
            return
        if src == self.address:
            return  # our own (RFC 5798 7.1 asks to ignore them)
        if len(payload) >= 2 and payload[1] != self.cfg.vrid:
            self.counters["rx_other_vrid"] += 1
            return
        if ttl != VRRP_TTL:
            self.counters["rx_ttl_error"] += 1
            log.debug("%s: advert from %s with TTL %d discarded (RFC 5798 7.1)", self.name, src, ttl)
            return
        if self.peers and src not in self.peers:
            self.counters["rx_unknown_peer"] += 1
            return
        try:
            advert = decode(payload, src, dst, key=self.key)
        except PacketError as exc:
            self.counters[f"rx_{exc.reason}_error"] += 1
            if exc.reason == "auth":
                self.counters["rx_auth_ignored"] += 1
            log.debug("%s: advert from %s discarded: %s", self.name, src, exc)
            return
        if advert.seq is not None and not self._replay.check(src, advert.seq):
            self.counters["rx_replayed"] += 1
            self.counters["rx_auth_ignored"] += 1
            return
        self.counters["rx_adverts"] += 1
        if advert.priority:
            if len(self._heard) > 64:
                self._heard.clear()
            self._heard[int(ipaddress.IPv4Address(src))] = self._now()
        if advert.priority and set(advert.addresses) != {a for a, _ in self.vips} and src not in self._addr_warned:
            self._addr_warned.add(src)
            log.warning("%s: %s advertises %s, we have %s (RFC 5798 7.1: check the configuration)",
                        self.name, src, ", ".join(advert.addresses), ", ".join(a for a, _ in self.vips))
        self._feed(self.machine.receive(src, advert.priority, advert.max_adver_int, self._now()))

    # -- sending -------------------------------------------------------------------

    def _send_advert(self, priority: int) -> None:
        if self._sock is None or self.address is None:
            return
        advert = Advert(self.cfg.vrid, priority, self.cfg.advert_interval_cs, tuple(a for a, _ in self.vips))
        for dst in self.peers or [VRRP_GROUP]:
            seq = None
            if self.key is not None:
                self._seq += 1
                seq = self._seq
            payload = encode(advert, self.address, dst, key=self.key, seq=seq)
            try:
                self._sock.sendto(ip_header(len(payload), self.address, dst) + payload, (dst, 0))
                self.counters["tx_adverts"] += 1
                if priority == 0:
                    self.counters["tx_priority_zero"] += 1
            except OSError as exc:
                self.counters["tx_errors"] += 1
                log.debug("%s: advert to %s not sent: %s", self.name, dst, exc)

    async def _add_vips(self) -> None:
        for addr, plen in self.vips:
            await self.netlink.add_address(self.ifindex, addr, plen)
        self.vips_held = True

    async def _remove_vips(self) -> None:
        self._stop_garp()
        for addr, plen in self.vips:
            await self.netlink.del_address(self.ifindex, addr, plen)
        self.vips_held = False

    def _start_garp(self) -> None:
        assert self._loop is not None
        self._stop_garp()
        self._garp_burst()
        g = self.cfg.garp
        if g.delay > 0 or g.refresh > 0:
            self._garp_task = self._loop.create_task(self._garp_later(), name=f"vrrp {self.name} garp")

    def _garp_burst(self) -> None:
        if self._garp is not None and self.vips_held:
            self.counters["tx_garp"] += self._garp.send(self.mac, [a for a, _ in self.vips], self.cfg.garp.repeat)

    def _stop_garp(self) -> None:
        if self._garp_task is not None:
            self._garp_task.cancel()
            self._garp_task = None

    async def _garp_later(self) -> None:
        g = self.cfg.garp
        if g.delay > 0:
            await asyncio.sleep(g.delay)
            self._garp_burst()
        while g.refresh > 0:
            await asyncio.sleep(g.refresh)
            self._garp_burst()

    # -- transitions, hooks ----------------------------------------------------------

    def _transition(self, t: Transition) -> None:
        assert self.machine is not None
        self.counters[f"to_{t.new.value.lower()}"] += 1
        log.info("%s: %s -> %s: %s (%s)", self.name, t.old, t.new, t.reason, t.rfc)
        if t.new in (State.MASTER, State.BACKUP, State.FAULT, State.MAINT):
            self._enqueue_hook(t.new.value, self.machine.priority)

    def _enqueue_hook(self, state: str, priority: int) -> None:
        notify = self.cfg.notify
        cmds = [getattr(notify, state.lower(), None), notify.any]
        for cmd in cmds:
            if cmd:
                self._hooks.put_nowait((cmd, state, priority))

    async def _run_hooks(self) -> None:
        while True:
            item = await self._hooks.get()
            if item is None:
                return
            cmd, state, priority = item
            argv = [*shlex.split(cmd), self.name, state, str(priority)]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
                )
            except OSError as exc:
                log.error("%s: notify %s: cannot run %s: %s", self.name, state, argv[0], exc.strerror or exc)
                continue
            try:
                rc = await asyncio.wait_for(proc.wait(), self.cfg.notify.timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                log.error("%s: notify %s: %s killed after %gs", self.name, state, argv[0], self.cfg.notify.timeout)
                continue
            if rc != 0:
                log.warning("%s: notify %s: %s exited with status %d", self.name, state, argv[0], rc)

    # -- tracking and faults ---------------------------------------------------------

    def _on_track(self, tracker: Tracker) -> None:
        spec: Track = tracker.spec
        log.info("%s: track %s is %s (%s)", self.name, tracker.describe(),
                 "up" if tracker.healthy else "down", tracker.detail)
        if spec.weight == 0:
            self._set_fault(f"track:{id(tracker)}", None if tracker.healthy else f"track {tracker.describe()} down")
        elif self._started and self.machine is not None:
            self._feed(self.machine.set_priority(self._effective_priority(), self._now(),
                                                 f"track {tracker.describe()} {'up' if tracker.healthy else 'down'}"))

    def _effective_priority(self) -> int:
        base = self.cfg.priority
        if base == 255:
            return base
        adjust = 0
        for t in self._trackers:
            w = t.spec.weight
            if (w > 0 and t.healthy) or (w < 0 and t.healthy is False):
                adjust += w
        return max(1, min(254, base + adjust))

    def _set_fault(self, key: str, reason: str | None) -> None:
        had = bool(self._faults)
        if reason is None:
            self._faults.pop(key, None)
        else:
            self._faults[key] = reason
        if not self._started or self.machine is None:
            return
        now = self._now()
        if self._faults and not had:
            self._feed(self.machine.fault(now, "; ".join(self._faults.values())))
        elif had and not self._faults:
            self._feed(self.machine.recover(now, f"{key.split(':')[0]} fault cleared, no fault left"))

    async def _primary_address(self) -> str | None:
        if self.cfg.unicast_src:
            return self.cfg.unicast_src
        vips = {a for a, _ in self.vips} | self.other_vips
        addrs = await self.netlink.ipv4_addresses(self.ifindex)
        # The kernel lists primaries first; a secondary (IFA_F_SECONDARY) is never ours to use.
        for addr, _plen, flags in addrs:
            if addr not in vips and not flags & 0x01:
                return addr
        return None

    def on_netlink(self, msg: dict) -> None:
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            name = msg.get("ifname")
            up = event == "RTM_NEWLINK" and link_up(msg["flags"])
            if msg["index"] == self.ifindex:
                self._set_fault("link", None if up else f"{self.cfg.interface} is down")
            for t in self._trackers:
                if t.spec.interface is not None and t.spec.interface == name:
                    t.result(up, "up" if up else "down")

    # -- status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        m = self.machine
        heard = None
        if m is not None and m.master_address is not None and m.state is not State.MASTER:
            at = self._heard.get(m.master_address)
            heard = round(self._now() - at, 3) if at is not None and self._loop is not None else None
        return {
            "name": self.name,
            "interface": self.cfg.interface,
            "vrid": self.cfg.vrid,
            "state": str(m.state) if m else "INIT",
            "priority": m.priority if m else self.cfg.priority,
            "base_priority": self.cfg.priority,
            "address": self.address,
            "mode": "unicast" if self.peers else "multicast",
            "master": str(ipaddress.IPv4Address(m.master_address)) if m and m.master_address is not None else None,
            "master_priority": m.master_priority if m else None,
            "master_age": heard,
            "advert_interval": self.cfg.advert_interval,
            "master_adver_interval": m.master_adver_interval / 100 if m else None,
            "master_down_interval": round(m.master_down_interval, 6) if m else None,
            "virtual_ips": list(self.cfg.virtual_ips),
            "vips_held": self.vips_held,
            "maintenance": self.maintenance,
            "preempt": self.cfg.preempt or self.cfg.priority == 255,
            "reason": m.reason if m else "not started",
            "since": round(self.since, 3),
            "faults": sorted(self._faults.values()),
            "auth": "hmac-sha256" if self.key is not None else None,
            "track": [
                {"kind": t.kind, "target": t.spec.target, "weight": t.spec.weight,
                 "healthy": t.healthy, "detail": t.detail}
                for t in self._trackers
            ],
            "counters": dict(sorted(self.counters.items())),
        }


class Daemon:
    def __init__(self, cfg: VrrpConfig) -> None:
        self.cfg = cfg
        self.netlink = Netlink()
        self.runners: list[InstanceRunner] = []
        self.started = time.time()
        self._server: asyncio.AbstractServer | None = None
        self._control = ControlServer(self.status, self.set_maintenance)
        self._watch: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.netlink.open()
        try:
            try:
                await self._open_status()
            except OSError as exc:
                log.error("cannot open the status socket %s: %s", self.cfg.status_socket, exc.strerror or exc)
                return 1
            by_if: dict[str, set[str]] = {}
            for inst in self.cfg.instances:
                by_if.setdefault(inst.interface, set()).update(inst.vip_addresses)
            self.runners = [
                InstanceRunner(inst, self.netlink, by_if[inst.interface] - set(inst.vip_addresses))
                for inst in self.cfg.instances
            ]
            kept = self._read_state()
            for r in self.runners:
                r.maintenance = r.name in kept
            self._watch = loop.create_task(watch_netlink(self._on_netlink), name="vrrp netlink")
            try:
                for r in self.runners:
                    try:
                        await r.prepare()
                    except (OSError, NetlinkError) as exc:
                        code = getattr(exc, "errno", None) or getattr(exc, "code", None)
                        hint = " (needs CAP_NET_ADMIN and CAP_NET_RAW)" if code in (errno.EPERM, errno.EACCES) else ""
                        raise StartupError(f"{r.name}: cannot set up {r.cfg.interface}: {exc}{hint}") from None
            except StartupError as exc:
                log.error("%s", exc)
                return 1
            for r in self.runners:
                r.start()
            await self._stop.wait()
            log.info("stopping: leaving as master where we are master (priority 0)")
            return 0
        finally:
            for r in self.runners:
                with contextlib.suppress(Exception):
                    await r.stop()
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(BaseException):
                    await self._watch
            await self._close_status()
            await self.netlink.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_sighup(self) -> None:
        log.warning("SIGHUP ignored: the configuration is read at start only; restart the daemon to apply changes")

    def _on_netlink(self, msg: dict) -> None:
        for r in self.runners:
            try:
                r.on_netlink(msg)
            except Exception:
                log.exception("%s: netlink event", r.name)

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "state_file": self.cfg.state_file,
            "instances": [r.status() for r in self.runners],
        }

    # -- maintenance -----------------------------------------------------------------

    def set_maintenance(self, on: bool, names: list[str] | None, who: str) -> list[str]:
        """Maintenance on or off for ``names`` (None: every instance); the names that
        changed. KeyError for an unknown name, OSError if the state file cannot be
        written: in both cases nothing changed."""
        by_name = {r.name: r for r in self.runners}
        chosen = [by_name[n] for n in names] if names is not None else list(self.runners)
        wanted = {r.name for r in self.runners if r.maintenance}
        wanted = wanted | {r.name for r in chosen} if on else wanted - {r.name for r in chosen}
        if wanted != {r.name for r in self.runners if r.maintenance}:
            self._write_state(wanted)
        reason = f"maintenance {'on' if on else 'off'} (by {who})"
        return [r.name for r in chosen if r.set_maintenance(on, reason)]

    def _read_state(self) -> set[str]:
        if self.cfg.state_file is None:
            return set()
        try:
            doc = json.loads(Path(self.cfg.state_file).read_text(encoding="utf-8"))
            names = set(doc["maintenance"])
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read the state file %s (%s): starting without maintenance", self.cfg.state_file, exc)
            return set()
        known = {inst.name for inst in self.cfg.instances}
        if names - known:
            log.warning("state file %s: no instance named %s (ignored)", self.cfg.state_file,
                        ", ".join(sorted(names - known)))
        if names & known:
            log.warning("in maintenance since before this start: %s (fleetproxy vrrp maintenance off releases)",
                        ", ".join(sorted(names & known)))
        return names & known

    def _write_state(self, names: set[str]) -> None:
        if self.cfg.state_file is None:
            return
        path = Path(self.cfg.state_file)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"maintenance": sorted(names)}, fh)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    async def _open_status(self) -> None:
        path = Path(self.cfg.status_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            try:
                _, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
            except (OSError, asyncio.TimeoutError):
                path.unlink()
            else:
                w.close()
                raise SystemExit(f"another fleetproxy vrrp answers on {path}; not starting")
        self._server = await asyncio.start_unix_server(self._control.handle, path=str(path))
        os.chmod(path, 0o666)

    async def _close_status(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            with contextlib.suppress(OSError):
                os.unlink(self.cfg.status_socket)



def run(cfg: VrrpConfig) -> int:
    return asyncio.run(Daemon(cfg).run())
