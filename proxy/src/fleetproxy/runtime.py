"""Live state of frontends, backends and servers.

The one place where configuration, the admin API, health checks and the data
path meet.  The data path reads it (``Backend.pick``, counters); the control
plane changes it (state, weight, health) and calls :meth:`Backend.refresh` so
the balancer sees the new set of usable servers.  Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from . import balance
from .config import BackendConfig, Config, FrontendConfig, ResolvedTimeouts, ServerConfig

READY, DRAIN, MAINT = "ready", "drain", "maint"
UP, DOWN = "up", "down"


def resolve_host(host: str) -> str:
    """An IP literal as is; a name resolved once (at configuration time, like HAProxy)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return infos[0][4][0]


class Server:
    __slots__ = (
        "active",
        "backend",
        "backup",
        "bytes_in",
        "bytes_out",
        "check",
        "config_weight",
        "conn_errors",
        "health",
        "host",
        "idle",
        "log_prefix",
        "maxconn",
        "name",
        "port",
        "redispatches",
        "resp_errors",
        "responses",
        "retries",
        "state",
        "total",
        "weight",
    )

    def __init__(self, cfg: ServerConfig, backend: Backend) -> None:
        self.name = cfg.name
        self.backend = backend
        self.host = resolve_host(cfg.host)
        self.port = cfg.port
        self.config_weight = cfg.weight
        self.weight = cfg.weight
        self.backup = cfg.backup
        self.maxconn = cfg.maxconn or 0
        self.check = cfg.check
        self.state = MAINT if cfg.disabled else READY
        self.health = UP
        self.log_prefix = f"{backend.name}/{cfg.name}"
        # counters
        self.active = 0
        self.total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.responses = [0, 0, 0, 0, 0, 0]  # other, 1xx, 2xx, 3xx, 4xx, 5xx
        self.conn_errors = 0
        self.resp_errors = 0
        self.retries = 0
        self.redispatches = 0
        # idle upstream connections, most recently used last (LIFO)
        self.idle: list[Any] = []

    @property
    def usable(self) -> bool:
        """Takes new traffic: ready, healthy and weighted."""
        return self.state == READY and self.health == UP and self.weight > 0

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


class Backend:
    def __init__(self, cfg: BackendConfig) -> None:
        self.name = cfg.name
        self.mode = cfg.mode
        self.algorithm = cfg.balance or "roundrobin"
        self.hash_type = cfg.hash_type or "map-based"
        self.all_backups = cfg.all_backups
        self.retries = cfg.retries if cfg.retries is not None else 3
        self.redispatch = bool(cfg.redispatch)
        self.timeouts: ResolvedTimeouts = cfg.resolved_timeouts  # type: ignore[assignment]
        self.servers = [Server(s, self) for s in cfg.servers]
        self.by_name = {s.name: s for s in self.servers}
        self.balancer = balance.make_balancer(self.algorithm, self.hash_type)
        self.key_kind = self._key_kind(self.algorithm)
        self.queue: deque[Waiter] = deque()
        self.usable: list[Server] = []
        # counters
        self.active = 0
        self.total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.responses = [0, 0, 0, 0, 0, 0]
        self.no_server = 0
        self.queue_timeouts = 0
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

    def acquire(self, server: Server) -> None:
        """A request or connection starts on ``server``."""
        server.active += 1
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


class Frontend:
    def __init__(self, cfg: FrontendConfig, backends: dict[str, Backend]) -> None:
        from . import routing

        self.name = cfg.name
        self.mode = cfg.mode
        self.cfg = cfg
        self.binds = list(cfg.bind)
        self.maxconn = cfg.maxconn or 0
        self.forwardfor = bool(cfg.forwardfor)
        self.log = bool(cfg.log)
        self.timeouts: ResolvedTimeouts = cfg.resolved_timeouts  # type: ignore[assignment]
        self.default_backend = backends.get(cfg.default_backend) if cfg.default_backend else None
        route = routing.compile_rules(cfg.rules, cfg.default_backend)
        self.has_rules = bool(cfg.rules)
        self.route_by_name = route
        self.route = (lambda req: backends.get(route(req) or "")) if cfg.rules else (
            lambda req: self.default_backend
        )
        self.rules_need_headers = routing.uses(cfg.rules, "host", "header")
        # counters
        self.conns = 0
        self.total_conns = 0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.responses = [0, 0, 0, 0, 0, 0]
        self.bad_requests = 0


class Runtime:
    """Everything live, built from one :class:`Config`."""

    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self.backends = {b.name: Backend(b) for b in cfg.backends}
        self.frontends = {f.name: Frontend(f, self.backends) for f in cfg.frontends}

    def servers(self) -> Iterable[Server]:
        for b in self.backends.values():
            yield from b.servers
