"""Live state of frontends, backends and servers.

The one place where configuration, the admin API, health checks and the data
path meet.  Every process holds a :class:`Runtime`: the master's is the
source of truth for administrative state (``state``, weight, health) and the
sum of the workers' counters; each worker's drives its data path.  Changes go
through :meth:`Runtime.apply`, which takes the same small dictionaries that the
master sends to its workers, so both sides change in exactly the same way.
Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from . import balance
from .config import (
    BackendConfig,
    Config,
    CookieConfig,
    FrontendConfig,
    ResolvedTimeouts,
    ServerConfig,
    StickConfig,
)
from .persist import CookieRules

READY, DRAIN, MAINT = "ready", "drain", "maint"
UP, DOWN = "up", "down"
STATES = (READY, DRAIN, MAINT)


def resolve_host(host: str) -> str:
    """An IP literal as is; a name resolved once (at configuration time, like HAProxy)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return infos[0][4][0]


def fingerprint(cfg: ServerConfig) -> str:
    """What identifies a server's definition: a change means config values win."""
    return f"{cfg.address}|{cfg.weight}|{int(cfg.backup)}|{cfg.cookie or ''}"


class Server:
    __slots__ = (
        "active",
        "backend",
        "backup",
        "bytes_in",
        "bytes_out",
        "cfg",
        "check",
        "check_at",
        "check_count",
        "check_desc",
        "check_duration",
        "check_enabled",
        "check_fails",
        "check_status",
        "config_weight",
        "conn_errors",
        "cookie",
        "downtime",
        "health",
        "host",
        "idle",
        "last_change",
        "log_prefix",
        "max_active",
        "maxconn",
        "name",
        "obs_errors",
        "observe",
        "port",
        "queue",
        "redispatches",
        "resp_errors",
        "responses",
        "retries",
        "sessions",
        "state",
        "tls",
        "tls_sni",
        "total",
        "uweight",
        "weight",
    )

    def __init__(self, cfg: ServerConfig, backend: Backend, now: float = 0.0) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.backend = backend
        self.host = resolve_host(cfg.host)
        self.port = cfg.port
        self.config_weight = cfg.weight if cfg.weight is not None else 1
        self.uweight = self.config_weight  # the administrative weight (API, runtime socket)
        self.weight = self.config_weight  # the effective weight (slowstart applied)
        self.backup = cfg.backup
        self.maxconn = cfg.maxconn or 0
        self.check = bool(cfg.check)
        self.check_enabled = self.check
        self.cookie = cfg.cookie or cfg.name
        self.state = MAINT if cfg.disabled else READY
        self.health = DOWN if (self.check and cfg.init_state == "down") else UP
        self.last_change = now
        self.downtime = 0.0
        self.check_status = "INI" if self.check else ""
        self.check_desc = ""
        self.check_duration = -1
        self.check_fails = 0
        self.check_count = 0  # checks run (in the master)
        self.check_at = -1.0  # loop time of the last check result
        self.observe = {"layer4": 4, "layer7": 7}.get(cfg.observe or "none", 0)
        self.obs_errors = 0  # consecutive errors seen by passive checks (this process)
        self.log_prefix = f"{backend.name}/{cfg.name}"
        # counters
        self.active = 0
        self.max_active = 0
        self.total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.responses = [0, 0, 0, 0, 0, 0]  # other, 1xx, 2xx, 3xx, 4xx, 5xx
        self.conn_errors = 0
        self.resp_errors = 0
        self.retries = 0
        self.redispatches = 0
        self.queue = 0
        # idle upstream connections, most recently used last (LIFO)
        self.idle: list[Any] = []
        # client transactions using this server (for "shutdown sessions")
        self.sessions: set[Any] = set()
        # TLS towards the server (an ssl.SSLContext, set by the data path) and its SNI
        self.tls: Any = None
        self.tls_sni = ""

    @property
    def usable(self) -> bool:
        """Takes new traffic: ready, healthy and weighted."""
        return self.state == READY and self.health == UP and self.weight > 0

    @property
    def persistent_ok(self) -> bool:
        """Takes clients pinned to it (cookie, stick table): not down, not in maintenance."""
        return self.state != MAINT and self.health == UP

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def __repr__(self) -> str:
        return f"<Server {self.log_prefix} {self.state}/{self.health} w={self.weight} active={self.active}>"


class Waiter:
    """A request waiting in a backend queue for a server slot."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[Server], None]) -> None:
        self.callback = callback
        self.cancelled = False


class StickTable:
    """``stick on source``: client key -> server name, bounded, with expiry (LRU)."""

    def __init__(self, cfg: StickConfig) -> None:
        self.expire = cfg.expire
        self.size = cfg.size
        self.entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def get(self, key: bytes, now: float) -> str | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        name, expires = entry
        if expires <= now:
            del self.entries[key]
            return None
        return name

    def put(self, key: bytes, name: str, now: float) -> None:
        entries = self.entries
        if key in entries:
            entries.move_to_end(key)
        entries[key] = (name, now + self.expire)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def purge(self, now: float) -> None:
        entries = self.entries
        while entries:
            key, (_, expires) = next(iter(entries.items()))
            if expires > now:
                # LRU order is refresh order; expiry is refresh time + constant.
                break
            del entries[key]


class Backend:
    def __init__(self, cfg: BackendConfig, now: float = 0.0) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.mode = cfg.mode
        self.algorithm = cfg.balance or "roundrobin"
        self.hash_type = cfg.hash_type or "map-based"
        self.all_backups = cfg.all_backups
        self.retries = cfg.retries if cfg.retries is not None else 3
        self.redispatch = bool(cfg.redispatch)
        self.timeouts: ResolvedTimeouts = cfg.resolved_timeouts  # type: ignore[assignment]
        self.cookie: CookieConfig | None = cfg.cookie
        self.stick = StickTable(cfg.stick) if cfg.stick is not None else None
        self.cookie_rules = CookieRules(cfg.cookie) if cfg.cookie is not None else None
        self.plain = cfg.cookie is None and cfg.stick is None  # no persistence to look up
        self.httpchk = cfg.httpchk
        self.servers = [Server(s, self, now) for s in cfg.servers]
        self.by_name = {s.name: s for s in self.servers}
        self.by_cookie = {s.cookie: s for s in self.servers}
        self.balancer = balance.make_balancer(self.algorithm, self.hash_type)
        self.key_kind = self._key_kind(self.algorithm)
        self.queue: deque[Waiter] = deque()
        self.usable: list[Server] = []
        self.maxconn_divisor = 1
        # counters
        self.active = 0
        self.total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.responses = [0, 0, 0, 0, 0, 0]
        self.no_server = 0
        self.queue_timeouts = 0
        self.queued = 0
        self.refresh()

    @staticmethod
    def _key_kind(algorithm: str) -> str | None:
        if algorithm == "source":
            return "source"
        if algorithm == "uri":
            return "uri"
        if algorithm.startswith("hdr("):
            return "hdr:" + algorithm[4:-1].lower()
        return None

    def refresh(self) -> None:
        """Recompute the usable set after any change of state, health or weight."""
        primary = [s for s in self.servers if not s.backup and s.usable]
        if primary:
            usable = primary
        else:
            backups = [s for s in self.servers if s.backup and s.usable]
            usable = backups if self.all_backups else backups[:1]
        self.usable = usable
        self.balancer.update(usable)
        if usable:
            self.dequeue()

    def pick(self, key: bytes | None = None) -> Server | None:
        return self.balancer.pick(key) if self.usable else None

    def pick_other(self, avoid: Server, key: bytes | None = None) -> Server | None:
        """Redispatch: any usable server but ``avoid``, in balancer order if possible."""
        for _ in range(len(self.usable)):
            s = self.balancer.pick(key)
            if s is None:
                return None
            if s is not avoid:
                return s
        for s in self.usable:
            if s is not avoid and not (s.maxconn and s.active >= s.maxconn):
                return s
        return None

    def persistent(self, server: Server | None) -> Server | None:
        """A pinned server if it may still take its clients and has a free slot."""
        if server is None or not server.persistent_ok:
            return None
        if server.maxconn and server.active >= server.maxconn:
            return None
        return server

    def acquire(self, server: Server) -> None:
        """A request or connection starts on ``server``."""
        server.active += 1
        if server.active > server.max_active:
            server.max_active = server.active
        server.total += 1
        self.active += 1
        self.total += 1

    def release(self, server: Server) -> None:
        """A request on ``server`` ended: account it and hand the slot to a waiter."""
        server.active -= 1
        self.active -= 1
        if self.queue:
            self.dequeue()

    def dequeue(self) -> None:
        queue = self.queue
        while queue:
            waiter = queue[0]
            if waiter.cancelled:
                queue.popleft()
                continue
            server = self.pick()
            if server is None:
                return
            queue.popleft()
            waiter.callback(server)

    def enqueue(self, callback: Callable[[Server], None]) -> Waiter:
        waiter = Waiter(callback)
        self.queue.append(waiter)
        return waiter

    def queue_length(self) -> int:
        return sum(1 for w in self.queue if not w.cancelled)

    # -- runtime changes ----------------------------------------------------------
    def add_server(self, cfg: ServerConfig, now: float = 0.0) -> Server:
        server = Server(cfg, self, now)
        if self.maxconn_divisor > 1 and server.maxconn:
            server.maxconn = math.ceil(server.maxconn / self.maxconn_divisor)
        self.servers.append(server)
        self.by_name[server.name] = server
        self.by_cookie[server.cookie] = server
        self.refresh()
        return server

    def remove_server(self, name: str) -> Server:
        server = self.by_name.pop(name)
        self.servers.remove(server)
        if self.by_cookie.get(server.cookie) is server:
            del self.by_cookie[server.cookie]
        self.refresh()
        server.close_idle()
        return server


class Frontend:
    def __init__(self, cfg: FrontendConfig, backends: dict[str, Backend]) -> None:
        from . import routing

        self.name = cfg.name
        self.mode = cfg.mode
        self.cfg = cfg
        self.binds = cfg.addresses
        self.needs_sni = cfg.mode == "tcp" and routing.uses(cfg.rules, "sni")
        self.inspect_delay = cfg.inspect_delay
        https = [b for b in cfg.bind if b.tls is not None]
        self.https_port = int(https[0].address.rpartition(":")[2]) if https else 0
        self.redirect_code = (301 if cfg.redirect_to_https is True else int(cfg.redirect_to_https)) \
            if cfg.redirect_to_https else 0
        self.hsts = b""
        if cfg.hsts is not None:
            value = f"max-age={cfg.hsts.max_age}"
            if cfg.hsts.include_subdomains:
                value += "; includeSubDomains"
            if cfg.hsts.preload:
                value += "; preload"
            self.hsts = f"Strict-Transport-Security: {value}\r\n".encode()
        self.maxconn = cfg.maxconn or 0
        self.forwardfor = bool(cfg.forwardfor)
        self.log = bool(cfg.log)
        self.timeouts: ResolvedTimeouts = cfg.resolved_timeouts  # type: ignore[assignment]
        self.default_backend = backends.get(cfg.default_backend) if cfg.default_backend else None
        route = routing.compile_rules(cfg.rules, cfg.default_backend)
        self.has_rules = bool(cfg.rules)
        if cfg.rules:
            self.route: Callable[[Any], Backend | None] = lambda req: backends.get(route(req) or "")
        else:
            default = self.default_backend
            self.route = lambda req: default
        # counters
        self.conns = 0
        self.max_conns = 0
        self.total_conns = 0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.responses = [0, 0, 0, 0, 0, 0]
        self.bad_requests = 0
        self.tls_failures = 0


class Runtime:
    """Everything live, built from one :class:`Config`."""

    def __init__(self, cfg: Config, now: float = 0.0) -> None:
        self.config = cfg
        self.backends = {b.name: Backend(b, now) for b in cfg.backends}
        self.frontends = {f.name: Frontend(f, self.backends) for f in cfg.frontends}

    def servers(self) -> Iterable[Server]:
        for b in self.backends.values():
            yield from b.servers

    def server(self, backend: str, server: str) -> Server:
        """Raises KeyError naming what is missing."""
        be = self.backends.get(backend)
        if be is None:
            raise KeyError(f"no backend named {backend!r}")
        s = be.by_name.get(server)
        if s is None:
            raise KeyError(f"no server named {server!r} in backend {backend!r}")
        return s

    def divide_maxconn(self, workers: int) -> None:
        """Per-server maxconn is a per-process limit; share it among workers."""
        if workers <= 1:
            return
        for be in self.backends.values():
            be.maxconn_divisor = workers
            for s in be.servers:
                if s.maxconn:
                    s.maxconn = math.ceil(s.maxconn / workers)

    # -- changes, identical in the master and in every worker ------------------------
    def apply(self, change: dict[str, Any], now: float = 0.0) -> Server | None:
        """Apply one change message; returns the server it touched (if any).

        ``{"op": "server", "backend", "server", "state"?, "weight"?, "health"?}``
        ``{"op": "add_server", "backend", "config": {...}}``
        ``{"op": "del_server", "backend", "server"}``
        """
        op = change["op"]
        be = self.backends[change["backend"]]
        if op == "server":
            s = be.by_name[change["server"]]
            if "state" in change:
                s.state = change["state"]
            if "uweight" in change:
                s.uweight = change["uweight"]
            if "weight" in change:
                s.weight = change["weight"]
            if "health" in change:
                if s.health != change["health"]:
                    if s.health == DOWN:
                        s.downtime += max(0.0, now - s.last_change)
                    s.last_change = now
                s.health = change["health"]
            if "check_enabled" in change:
                s.check_enabled = change["check_enabled"]
            be.refresh()
            return s
        if op == "add_server":
            return be.add_server(ServerConfig.model_validate(change["config"]), now)
        if op == "del_server":
            return be.remove_server(change["server"])
        raise ValueError(f"unknown change {op!r}")
