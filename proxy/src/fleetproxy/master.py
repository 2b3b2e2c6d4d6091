"""The master process: listeners, workers, health checks, admin API, reload.

``fleetproxy run`` starts the master.  It binds every listener once, starts
``global.workers`` worker processes that inherit the listening sockets and
run the data path, runs the health checks and the control plane, and keeps
the administrative truth (state, weights, health) in its own
:class:`~fleetproxy.runtime.Runtime`, whose counters are the sums of the
workers' reports.

Reload (SIGHUP, ``fleetproxy reload``, the API): the new file is validated
first; an invalid file leaves everything as it was and the errors are logged
and returned.  Otherwise new workers start on the same listening sockets,
and only once they accept do the old workers stop accepting, finish their
in-flight requests, close idle keep-alive connections after the current
response, and exit within ``hard_stop_after``.  No connection waiting in an
accept queue is lost: the sockets are shared, never closed in between.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
import time
from typing import Any

import yaml

from . import config as config_mod
from . import state as state_mod
from .config import Config, ConfigError, ServerConfig, resolve_server
from .health import HealthChecker
from .ipc import Channel, encode
from .process import make_listener
from .runtime import DOWN, MAINT, READY, STATES, UP, Runtime, Server, fingerprint

log = logging.getLogger("fleetproxy")

WORKER_READY_TIMEOUT = 30.0
SLOWSTART_TICK = 0.5


def sd_notify(message: str) -> None:
    """systemd's notify protocol: one datagram, no library needed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


def resolve_workers(value: int | str) -> int:
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return int(value)


class ControlError(Exception):
    """A refused runtime change; ``status`` is the HTTP status the API answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class WorkerHandle:
    def __init__(self, master: Master, generation: int, index: int) -> None:
        self.master = master
        self.generation = generation
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.ready: asyncio.Future[None] = master.loop.create_future()
        self.stats: dict[str, Any] | None = None
        self.stopping = False
        self.pid = 0
        # Changes broadcast before the channel is up (a reload or a replacement in
        # progress) wait here and follow the init message; the worker applies them
        # before its listeners accept.
        self.backlog: list[bytes] | None = []

    def send(self, msg: dict[str, Any]) -> None:
        self.write(encode(msg))

    def write(self, data: bytes) -> None:
        if self.backlog is not None:
            self.backlog.append(data)
        elif self.channel is not None and not self.channel.closed and self.channel.transport is not None:
            self.channel.transport.write(data)

    def open(self, channel: Channel, init: dict[str, Any]) -> None:
        """The channel is up: the init message, then what was broadcast meanwhile."""
        self.channel = channel
        channel.send(init)
        self.flush()

    def flush(self) -> None:
        backlog, self.backlog = self.backlog or [], None
        for data in backlog:
            self.write(data)


class Master:
    def __init__(self, config_path: str | None, cfg: Config, raw: dict[str, Any],
                 event_loop: str = "auto") -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.raw = raw
        self.event_loop = event_loop
        self.loop = asyncio.get_running_loop()
        self.started = time.time()
        self.listeners: dict[str, socket.socket] = {}
        self.workers: list[WorkerHandle] = []
        self.generation = 0
        self.nworkers = resolve_workers(cfg.global_.workers)
        self.reuseport = self._reuseport_mode(cfg)
        self.runtime = Runtime(cfg, self.loop.time())
        self.added: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, str]] = {}
        self.retired: dict[str, dict[str, list[int]]] = {"fe": {}, "be": {}, "srv": {}}
        self.counters_dirty = True
        self.rates: dict[str, tuple[float, int]] = {}
        self.reloads = 0
        self.last_reload_error: list[str] = []
        self.stopping = False
        self.soft_stopping = False   # SIGTERM received, serving out global.grace
        self.stop_event = asyncio.Event()
        self.health = HealthChecker(self.loop, self._health_changed)
        self.admin: Any = None
        self._reload_lock = asyncio.Lock()
        self._save_handle: asyncio.TimerHandle | None = None
        self._slowstart: dict[int, tuple[Server, float]] = {}
        self._slowstart_handle: asyncio.TimerHandle | None = None

    # -- start, stop ------------------------------------------------------------------
    async def start(self) -> None:
        record = state_mod.load(self.cfg.global_.state_file)
        changes = self._restore(self.runtime, self.cfg, record)
        self._bind(self.cfg)
        from .admin import AdminServer

        self.admin = AdminServer(self)
        await self.admin.start()
        await self._spawn_generation(changes)
        self.health.sync(list(self.runtime.servers()))
        for fe in self.cfg.frontends:
            for bind in fe.bind:
                log.info("frontend %s (%s) listening on %s%s", fe.name, fe.mode, bind.address,
                         " (tls)" if bind.tls is not None else "")
        log.info("started %d worker(s) (pids %s), %s listening sockets", len(self._current()),
                 ", ".join(str(w.pid) for w in self._current()),
                 "per-worker (SO_REUSEPORT)" if self.reuseport else "shared")

    async def stop(self) -> None:
        self.stopping = True
        self.health.stop()
        hard = self.cfg.global_.hard_stop_after
        for w in self.workers:
            w.stopping = True
            w.send({"op": "stop", "hard_stop_after": hard})
        # The workers close their copies at once; closing ours too makes the kernel
        # refuse new connections instead of queueing them for nobody.
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()
        await self._wait_exit(self.workers, hard + 5)
        if self.admin is not None:
            await self.admin.stop()
        self._save_now()

    def _current(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.generation == self.generation and not w.stopping]

    # -- listeners and workers ----------------------------------------------------------
    def _reuseport_mode(self, cfg: Config) -> bool:
        """One listening socket per worker (SO_REUSEPORT) or one shared by all.

        A shared socket spreads connections unevenly over workers (the kernel
        wakes them in turn, the busiest wins; see proxy/bench/worker_spread.py);
        per-worker sockets spread them evenly, but connections queued on the
        socket of a worker that stops are reset unless the kernel migrates them
        to the group's other sockets (net.ipv4.tcp_migrate_req=1, Linux 5.14).
        ``auto`` therefore chooses per-worker sockets when there are several
        workers and migration is on."""
        setting = cfg.global_.tune.reuseport
        if setting is False or self.nworkers <= 1:
            return False
        try:
            with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
                migrate = f.read().strip() == "1"
        except OSError:
            migrate = False
        if setting is True and not migrate:
            log.warning("tune.reuseport is on but net.ipv4.tcp_migrate_req is 0: connections "
                        "queued on a stopping worker's socket will be reset at reloads")
        return True if setting is True else migrate

    def _backlogs(self, cfg: Config) -> dict[str, int]:
        wanted: dict[str, int] = {}
        for fe in cfg.frontends:
            backlog = fe.backlog or fe.maxconn or cfg.global_.maxconn
            for address in fe.addresses:
                wanted[address] = min(backlog, 65535)
        return wanted

    def _bind(self, cfg: Config) -> None:
        """Bind new addresses; keep sockets of addresses that stay.  With per-worker
        sockets the master only holds each port (bound, not listening)."""
        wanted = self._backlogs(cfg)
        opened: list[str] = []
        try:
            for address, backlog in wanted.items():
                if address not in self.listeners:
                    self.listeners[address] = make_listener(
                        address, backlog, reuseport=self.reuseport, listen=not self.reuseport)
                    opened.append(address)
        except OSError:
            for address in opened:
                self.listeners.pop(address).close()
            raise

    async def _spawn_generation(self, changes: list[dict[str, Any]]) -> list[WorkerHandle]:
        self.generation += 1
        handles = [WorkerHandle(self, self.generation, i) for i in range(self.nworkers)]
        self.workers.extend(handles)
        try:
            await asyncio.gather(*(self._spawn(h, changes) for h in handles))
            await asyncio.wait_for(asyncio.gather(*(h.ready for h in handles)), WORKER_READY_TIMEOUT)
        except Exception:
            for h in handles:
                h.stopping = True
                if h.proc is not None and h.proc.returncode is None:
                    h.proc.kill()
            raise
        return handles

    async def _spawn(self, handle: WorkerHandle, changes: list[dict[str, Any]]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        addresses = {a for fe in self.cfg.frontends for a in fe.addresses}
        own: list[socket.socket] = []
        if self.reuseport:
            # This worker's own sockets in each address's SO_REUSEPORT group.
            try:
                for address, backlog in self._backlogs(self.cfg).items():
                    own.append(make_listener(address, backlog, reuseport=True))
            except OSError:
                for sock in own:
                    sock.close()
                theirs.close()
                ours.close()
                raise
            fds = {address: sock.fileno() for address, sock in zip(self._backlogs(self.cfg), own, strict=True)}
        else:
            # Only the listeners of this configuration: a worker that inherited the socket of an
            # address a reload removes would keep it open (and never accept) after the master closes it.
            fds = {address: sock.fileno() for address, sock in self.listeners.items() if address in addresses}
        try:
            handle.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fleetproxy.process", str(theirs.fileno()), self.event_loop,
                pass_fds=[theirs.fileno(), *fds.values()],
            )
        finally:
            theirs.close()
            for sock in own:
                sock.close()  # the worker holds it now; the master must not (it would queue for nobody)
        handle.pid = handle.proc.pid
        ours.setblocking(False)
        _, channel = await self.loop.connect_accepted_socket(
            lambda: Channel(lambda m: self._on_worker_message(handle, m),
                            lambda exc: None),
            ours,
        )
        handle.open(channel, {
            "op": "init",
            "config": self.raw,
            "source": self.config_path,
            "listeners": fds,
            "changes": changes,
            "sticks": self._stick_entries(),
            "workers": self.nworkers,
        })
        self.loop.create_task(self._watch(handle))

    async def _watch(self, handle: WorkerHandle) -> None:
        assert handle.proc is not None
        code = await handle.proc.wait()
        if not handle.ready.done():
            handle.ready.set_exception(RuntimeError(f"worker {handle.pid} exited with {code} before ready"))
            handle.ready.exception()  # retrieved: the spawner reports it
        self._retire(handle)
        if handle in self.workers:
            self.workers.remove(handle)
        if handle.stopping or self.stopping:
            log.info("worker %d exited (%s)", handle.pid, code)
            return
        log.error("worker %d died unexpectedly (exit status %s); starting a new one", handle.pid, code)
        replacement = WorkerHandle(self, handle.generation, handle.index)
        self.workers.append(replacement)
        try:
            await self._spawn(replacement, self._current_changes())
            await asyncio.wait_for(replacement.ready, WORKER_READY_TIMEOUT)
        except Exception as exc:
            log.error("could not replace worker: %s", exc)

    async def _wait_exit(self, handles: list[WorkerHandle], timeout: float) -> None:
        procs = [h.proc for h in handles if h.proc is not None and h.proc.returncode is None]
        if not procs:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout)
        except asyncio.TimeoutError:
            for p in procs:
                if p.returncode is None:
                    log.warning("worker %d did not exit in time: killing it", p.pid)
                    p.kill()

    def _on_worker_message(self, handle: WorkerHandle, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "stats":
            handle.stats = msg
            self.counters_dirty = True
        elif op == "ready":
            if not handle.ready.done():
                handle.ready.set_result(None)
        elif op == "observe":
            self._observed(msg)
        elif op == "stick":
            # Kept here too, so that workers started later (reload, replacement) get it.
            be = self.runtime.backends.get(msg["backend"])
            if be is not None and be.stick is not None:
                be.stick.put(msg["key"].encode("latin-1"), msg["server"], self.loop.time())
            for w in self.workers:
                if w is not handle:
                    w.send(msg)

    def _stick_entries(self) -> dict[str, list[tuple[str, str, float]]]:
        """Every backend's stick table as (key, server, seconds left)."""
        now = self.loop.time()
        out = {}
        for be in self.runtime.backends.values():
            if be.stick is not None and be.stick.entries:
                out[be.name] = [(k.decode("latin-1"), name, round(exp - now, 3))
                                for k, (name, exp) in be.stick.entries.items() if exp > now]
        return out

    def broadcast(self, msg: dict[str, Any]) -> None:
        data = encode(msg)
        for w in self.workers:
            w.write(data)

    # -- counters ---------------------------------------------------------------------------
    def _retire(self, handle: WorkerHandle) -> None:
        """Keep an exited worker's totals (gauges drop to zero)."""
        snap = handle.stats
        if not snap:
            return
        gauges = {"fe": (0,), "be": (0, 6), "srv": (0,)}
        for kind in ("fe", "be", "srv"):
            acc = self.retired[kind]
            for name, values in snap.get(kind, {}).items():
                vals = list(values)
                for g in gauges[kind]:
                    vals[g] = 0
                old = acc.get(name)
                acc[name] = vals if old is None else [a + b for a, b in zip(old, vals, strict=False)]
        handle.stats = None
        self.counters_dirty = True

    def refresh_counters(self) -> None:
        """Sum the workers' latest reports into the master's runtime objects."""
        if not self.counters_dirty:
            return
        self.counters_dirty = False
        sources = [self.retired] + [w.stats for w in self.workers if w.stats]
        rt = self.runtime

        def total(kind: str, name: str, size: int) -> list[int]:
            out = [0] * size
            for src in sources:
                vals = src.get(kind, {}).get(name)
                if vals:
                    for i in range(min(size, len(vals))):
                        out[i] += vals[i]
            return out

        for fe in rt.frontends.values():
            v = total("fe", fe.name, 14)
            (fe.conns, fe.max_conns, fe.total_conns, fe.requests, fe.bytes_in, fe.bytes_out,
             fe.bad_requests) = v[:7]
            fe.responses = v[7:13]
            fe.tls_failures = v[13]
        for be in rt.backends.values():
            v = total("be", be.name, 13)
            (be.active, be.total, be.bytes_in, be.bytes_out, be.no_server, be.queue_timeouts) = v[:6]
            be.queued = v[6]
            be.responses = v[7:13]
            for s in be.servers:
                v = total("srv", s.log_prefix, 15)
                (s.active, s.max_active, s.total, s.bytes_in, s.bytes_out, s.conn_errors,
                 s.resp_errors, s.retries, s.redispatches) = v[:9]
                s.responses = v[9:15]

    def process_conns(self) -> int:
        return sum((w.stats or {}).get("conns", 0) for w in self.workers)

    # -- runtime changes -------------------------------------------------------------------
    def _server(self, backend: str, server: str) -> Server:
        try:
            return self.runtime.server(backend, server)
        except KeyError as exc:
            raise ControlError(exc.args[0], 404) from None

    def _change(self, change: dict[str, Any]) -> Server | None:
        server = self.runtime.apply(change, self.loop.time())
        self.broadcast(change)
        self._schedule_save()
        return server

    def set_server(self, backend: str, server: str, *, state: str | None = None,
                   weight: int | str | None = None, health: str | None = None) -> Server:
        """Change a server's administrative state, weight or (forced) health."""
        s = self._server(backend, server)
        change: dict[str, Any] = {"op": "server", "backend": backend, "server": server}
        if state is not None:
            if state not in STATES:
                raise ControlError(f"invalid state {state!r}: use ready, drain or maint")
            if state != s.state:
                change["state"] = state
        if weight is not None:
            new = self.parse_weight(s, weight)
            if new != s.uweight:
                change["uweight"] = new
                change["weight"] = new
        if health is not None:
            if health not in (UP, DOWN):
                raise ControlError(f"invalid health {health!r}: use up or down")
            if health != s.health:
                change["health"] = health
        if len(change) == 3:
            return s
        old_state, old_health = s.state, s.health
        self._change(change)
        if "state" in change:
            log.info("server %s state %s -> %s (admin)", s.log_prefix, old_state, s.state)
        if "health" in change:
            log.info("server %s health %s -> %s (forced by admin)", s.log_prefix, old_health, s.health)
        if "uweight" in change:
            log.info("server %s weight set to %d (admin)", s.log_prefix, s.uweight)
        if (old_state == MAINT and s.state != MAINT) or (old_health == DOWN and s.health == UP):
            self._start_slowstart(s)
        return s

    @staticmethod
    def parse_weight(s: Server, weight: int | str) -> int:
        """0-256, or ``N%`` of the server's configured weight (HAProxy's rule)."""
        if isinstance(weight, bool):
            raise ControlError(f"invalid weight {weight!r}")
        if isinstance(weight, str):
            text = weight.strip()
            try:
                if text.endswith("%"):
                    pct = float(text[:-1])
                    if not 0 <= pct < math.inf:
                        raise ValueError
                    # HAProxy: initial weight x N / 100, truncated, at most 256.
                    value = min(256, int(s.config_weight * min(pct, 25600.0) / 100))
                else:
                    value = int(text)
            except ValueError:
                raise ControlError(f"invalid weight {weight!r}: use 0-256 or a percentage") from None
        else:
            value = int(weight)
        if not 0 <= value <= 256:
            raise ControlError(f"weight {value} out of range (0-256)")
        return value

    def set_check_enabled(self, backend: str, server: str, enabled: bool) -> Server:
        s = self._server(backend, server)
        if not s.check:
            raise ControlError(f"server {s.log_prefix} has no health check configured", 409)
        if s.check_enabled != enabled:
            change: dict[str, Any] = {"op": "server", "backend": backend, "server": server,
                                      "check_enabled": enabled}
            if not enabled and s.health != UP:
                change["health"] = UP  # without checks a server counts as up (HAProxy)
            self._change(change)
            self.health.sync(list(self.runtime.servers()))
            log.info("server %s health checks %s (admin)", s.log_prefix, "enabled" if enabled else "disabled")
        return s

    def add_server(self, backend: str, settings: dict[str, Any]) -> Server:
        be = self.runtime.backends.get(backend)
        if be is None:
            raise ControlError(f"no backend named {backend!r}", 404)
        try:
            srv_cfg = ServerConfig.model_validate(settings)
        except Exception as exc:
            from pydantic import ValidationError

            if isinstance(exc, ValidationError):
                errors = config_mod._pydantic_errors(exc)
                raise ControlError("; ".join(f"{p}: {m}" if p else m for p, m in errors)) from None
            raise ControlError(str(exc)) from None
        if srv_cfg.name in be.by_name:
            raise ControlError(f"backend {backend!r} already has a server named {srv_cfg.name!r}", 409)
        resolve_server(srv_cfg, be.cfg, self.cfg.defaults)
        cookie = srv_cfg.cookie or srv_cfg.name
        if be.cookie is not None and cookie in be.by_cookie:
            raise ControlError(f"cookie value {cookie!r} is already used in backend {backend!r}", 409)
        dumped = srv_cfg.model_dump(mode="json")
        server = self._change({"op": "add_server", "backend": backend, "config": dumped})
        assert server is not None
        in_config = any(s.name == srv_cfg.name and fingerprint(s) == fingerprint(srv_cfg)
                        for s in be.cfg.servers)
        if in_config:
            # The file's own server is back: nothing to remember.
            self.deleted.get(backend, {}).pop(srv_cfg.name, None)
        else:
            # A new server, or a replacement of a file server under its name (its
            # deletion record stays, so a reload keeps the replacement).
            self.added.setdefault(backend, {})[srv_cfg.name] = dumped
        self.health.sync(list(self.runtime.servers()))
        log.info("server %s added (admin)%s", server.log_prefix,
                 ", health checks start it down" if server.health == DOWN else "")
        return server

    def removable(self, s: Server) -> str | None:
        """Why ``s`` cannot be deleted now, or None."""
        if s.state != MAINT:
            return f"server {s.log_prefix} is in state {s.state}; put it in maint first"
        self.refresh_counters()
        if s.active:
            return f"server {s.log_prefix} still has {s.active} active session(s)"
        return None

    def delete_server(self, backend: str, server: str) -> None:
        s = self._server(backend, server)
        why = self.removable(s)
        if why:
            raise ControlError(why, 409)
        self._change({"op": "del_server", "backend": backend, "server": server})
        self.added.get(backend, {}).pop(server, None)
        file_server = next((c for c in be_cfg_servers(self.cfg, backend) if c.name == server), None)
        if file_server is not None:
            self.deleted.setdefault(backend, {})[server] = fingerprint(file_server)
        self.health.sync(list(self.runtime.servers()))
        log.info("server %s deleted (admin)", s.log_prefix)

    async def wait_removable(self, backend: str, server: str, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        while True:
            s = self._server(backend, server)
            why = self.removable(s)
            if why is None:
                return
            if s.state != MAINT or self.loop.time() >= deadline:
                raise ControlError(why, 409)
            await asyncio.sleep(0.05)

    def shutdown_sessions(self, backend: str, server: str) -> None:
        s = self._server(backend, server)
        self.broadcast({"op": "shutdown", "backend": backend, "server": server})
        log.info("server %s: sessions shut down (admin)", s.log_prefix)

    # -- health --------------------------------------------------------------------------------
    def _health_changed(self, s: Server, health: str, reason: str) -> None:
        if self.runtime.backends.get(s.backend.name) is not s.backend:
            return  # a server of a configuration replaced by a reload
        level = logging.WARNING if health == DOWN else logging.INFO
        log.log(level, "server %s is %s: %s", s.log_prefix, health.upper(), reason)
        self._change({"op": "server", "backend": s.backend.name, "server": s.name, "health": health})
        if health == UP:
            self._start_slowstart(s)
        be = s.backend
        if not be.usable:
            log.warning("backend %s has no server available", be.name)

    def _observed(self, msg: dict[str, Any]) -> None:
        """A worker saw ``error_limit`` consecutive errors on a server (passive check)."""
        try:
            s = self.runtime.server(msg["backend"], msg["server"])
        except KeyError:
            return
        if msg.get("ok"):
            return
        if not (s.check and s.check_enabled):
            # Only an active check could bring it back up: never mark it down (HAProxy's
            # observe needs check).
            log.warning("server %s: passive check saw errors (%s); no active check to act on",
                        s.log_prefix, msg.get("reason", ""))
            return
        if s.cfg.on_error == "mark-down" and s.health == UP:
            self._health_changed(s, DOWN, f"passive check: {msg.get('reason', 'errors')}")
            self.health.wake(s, fast=False)
        else:
            log.info("server %s: passive check saw errors (%s); checking at fastinter",
                     s.log_prefix, msg.get("reason", ""))
            self.health.wake(s, fast=True)

    def _start_slowstart(self, s: Server) -> None:
        if not s.cfg.slowstart or s.uweight <= 1:
            return
        self._slowstart[id(s)] = (s, self.loop.time())
        self._slowstart_step()

    def _slowstart_step(self) -> None:
        self._slowstart_handle = None
        now = self.loop.time()
        for key, (s, since) in list(self._slowstart.items()):
            ramp = s.cfg.slowstart or 0.0
            elapsed = now - since
            if elapsed >= ramp or s.health != UP or s.state == MAINT:
                weight = s.uweight
                del self._slowstart[key]
            else:
                weight = max(1, math.ceil(s.uweight * elapsed / ramp))
            if weight != s.weight and self.runtime.backends.get(s.backend.name) is s.backend:
                self._change({"op": "server", "backend": s.backend.name, "server": s.name, "weight": weight})
        if self._slowstart:
            self._slowstart_handle = self.loop.call_later(SLOWSTART_TICK, self._slowstart_step)

    # -- state file -----------------------------------------------------------------------------
    def _restore(self, runtime: Runtime, cfg: Config, record: dict[str, Any]) -> list[dict[str, Any]]:
        changes, self.added, self.deleted = state_mod.changes(cfg, record)
        now = self.loop.time()
        for change in changes:
            runtime.apply(change, now)
        return changes

    def _current_changes(self) -> list[dict[str, Any]]:
        return state_mod.changes(self.cfg, self._record())[0]

    def _record(self) -> dict[str, Any]:
        return state_mod.capture(self.runtime, self.added, self.deleted)

    def _schedule_save(self) -> None:
        if self.cfg.global_.state_file and self._save_handle is None:
            self._save_handle = self.loop.call_later(0.1, self._save_now)

    def _save_now(self) -> None:
        self._save_handle = None
        state_mod.save(self.cfg.global_.state_file, self._record())

    # -- reload ----------------------------------------------------------------------------------
    def read_config(self) -> tuple[Config, dict[str, Any]]:
        if self.config_path is None:
            raise ConfigError([("", "no configuration file to reload")])
        return load_raw(self.config_path)

    async def reload(self) -> list[str]:
        """Reload the configuration file; returns [] or the errors (nothing changed then)."""
        async with self._reload_lock:
            try:
                cfg, raw = self.read_config()
            except ConfigError as exc:
                self.last_reload_error = exc.lines()
                for line in exc.lines():
                    log.error("reload refused, keeping the running configuration: %s", line)
                return exc.lines()
            old_handles = self._current()
            old_cfg, old_raw, old_runtime = self.cfg, self.raw, self.runtime
            record = self._record()
            runtime = Runtime(cfg, self.loop.time())
            self.refresh_counters()
            try:
                changes = state_mod.changes(cfg, record)
                self._bind(cfg)
            except OSError as exc:
                msg = f"cannot bind: {exc}"
                log.error("reload refused, keeping the running configuration: %s", msg)
                self.last_reload_error = [msg]
                return [msg]
            self.cfg, self.raw, self.runtime = cfg, raw, runtime
            self.added, self.deleted = changes[1], changes[2]
            now = self.loop.time()
            for change in changes[0]:
                runtime.apply(change, now)
            self._carry_health(old_runtime, runtime)
            self._carry_sticks(old_runtime, runtime)
            self.nworkers = resolve_workers(cfg.global_.workers)
            if self._reuseport_mode(cfg) != self.reuseport:
                log.warning("listening sockets stay %s until a restart (tune.reuseport, workers)",
                            "per worker" if self.reuseport else "shared")
            try:
                await self._spawn_generation(changes[0] + self._health_changes(runtime))
            except Exception as exc:
                self.cfg, self.raw, self.runtime = old_cfg, old_raw, old_runtime
                self.generation -= 1
                msg = f"new workers failed to start: {exc}"
                log.error("reload failed, keeping the running configuration: %s", msg)
                self.last_reload_error = [msg]
                return [msg]
            for w in old_handles:
                w.stopping = True
                w.send({"op": "stop", "hard_stop_after": old_cfg.global_.hard_stop_after})
            # Addresses no longer bound by any frontend: close the master's copy;
            # the old workers hold theirs until they exit.
            keep = {a for fe in cfg.frontends for a in fe.addresses}
            for address in list(self.listeners):
                if address not in keep:
                    self.listeners.pop(address).close()
            if not self.health.stopped:  # else the proxy began stopping during this reload
                self.health.stop()
                self.health = HealthChecker(self.loop, self._health_changed)
                self.health.sync(list(runtime.servers()))
            self.reloads += 1
            self.last_reload_error = []
            self._schedule_save()
            if self.admin is not None:
                try:
                    await self.admin.reconfigure()
                except OSError as exc:
                    log.error("admin endpoints after reload: %s", exc)
            log.info("reloaded %s: %d new worker(s), %d old worker(s) finishing",
                     self.config_path, len(self._current()), len(old_handles))
            return []

    @staticmethod
    def _carry_health(old: Runtime, new: Runtime) -> None:
        """Check results survive a reload for servers whose definition is unchanged."""
        for be in new.backends.values():
            obe = old.backends.get(be.name)
            if obe is None:
                continue
            for s in be.servers:
                o = obe.by_name.get(s.name)
                # Health is about the address and the check: a new weight keeps it.
                if o is None or o.cfg.address != s.cfg.address or o.check != s.check \
                        or o.cfg.check_address != s.cfg.check_address:
                    continue
                s.health = o.health
                s.check_status, s.check_desc, s.check_duration = o.check_status, o.check_desc, o.check_duration
                s.check_count, s.check_at = o.check_count, o.check_at
                s.last_change, s.downtime = o.last_change, o.downtime
            be.refresh()

    @staticmethod
    def _carry_sticks(old: Runtime, new: Runtime) -> None:
        """Persistence entries survive a reload for servers that still exist."""
        for be in new.backends.values():
            obe = old.backends.get(be.name)
            if be.stick is None or obe is None or obe.stick is None:
                continue
            for key, (name, expires) in obe.stick.entries.items():
                if name in be.by_name:
                    be.stick.entries[key] = (name, expires)

    @staticmethod
    def _health_changes(runtime: Runtime) -> list[dict[str, Any]]:
        return [
            {"op": "server", "backend": s.backend.name, "server": s.name, "health": s.health}
            for s in runtime.servers() if s.check
        ]


def be_cfg_servers(cfg: Config, backend: str) -> list[ServerConfig]:
    for be in cfg.backends:
        if be.name == backend:
            return be.servers
    return []


def load_raw(path: str) -> tuple[Config, dict[str, Any]]:
    """Load and validate; also return the parsed document (sent to workers)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror or exc}")], path) from None
    cfg = config_mod.loads(text, path)
    raw = yaml.safe_load(text) or {}
    return cfg, raw


async def serve(config_path: str, event_loop: str = "auto") -> int:
    cfg, raw = load_raw(config_path)
    master = Master(config_path, cfg, raw, event_loop)
    loop = master.loop
    try:
        await master.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await master.stop()
        return 1
    reloading: list[asyncio.Task[Any]] = []

    async def _reload() -> None:
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        errors = await master.reload()
        sd_notify("READY=1\nSTATUS=" + ("serving" if not errors else "reload failed: " + errors[0]))

    loop.add_signal_handler(signal.SIGHUP, lambda: reloading.append(loop.create_task(_reload())))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.stop_event.set)
    sd_notify(f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}")
    await master.stop_event.wait()
    sd_notify("STOPPING=1")
    grace = master.cfg.global_.grace
    if grace > 0:
        # Health reports 503 at once; the listeners keep serving for `grace` so the
        # virtual IP (or an upstream balancer) moves first. A second signal ends it early.
        master.soft_stopping = True
        master.stop_event.clear()
        log.info("soft stop: /v1/health reports unavailable, still serving for %gs (grace)", grace)
        try:
            await asyncio.wait_for(master.stop_event.wait(), grace)
        except asyncio.TimeoutError:
            pass
    log.info("stopping: workers finish in-flight requests (hard_stop_after %.0fs)",
             cfg.global_.hard_stop_after)
    await master.stop()
    log.info("stopped")
    return 0


def run(config_path: str, event_loop: str = "auto") -> int:
    from .process import new_event_loop

    loop = new_event_loop(event_loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(serve(config_path, event_loop))
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{config_path}: {line}", file=sys.stderr)
        return 1
    finally:
        loop.close()


__all__ = ["READY", "ControlError", "Master", "run", "sd_notify"]
