"""Test support for the control plane: admin clients, the runtime socket, a
bounded load generator, and which worker process holds which connection."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetproxy.adminclient import AdminClient

from .backend import Backend, _BackendConn
from .client import ResponseReader, connect, request

# --------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """``predicate()``'s first truthy value, or its last value once ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------
# The JSON API
# --------------------------------------------------------------------------


class Api:
    """The JSON API over its UNIX socket (admin level)."""

    def __init__(self, path: str) -> None:
        self.client = AdminClient(path, timeout=30)

    def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        return self.client.request(method, url, body)

    def get(self, url: str) -> Any:
        status, body = self.call("GET", url)
        assert status == 200, (url, status, body)
        return body

    def server(self, backend: str, server: str) -> dict[str, Any]:
        return self.get(f"/v1/backends/{backend}/servers/{server}")

    def patch(self, backend: str, server: str, **changes: Any) -> dict[str, Any]:
        status, body = self.call("PATCH", f"/v1/backends/{backend}/servers/{server}", changes)
        assert status == 200, (status, body)
        return body

    def health(self, backend: str, server: str) -> str:
        return self.server(backend, server)["health"]

    def wait_health(self, backend: str, server: str, health: str, timeout: float) -> float:
        """Seconds until the server's health is ``health`` (AssertionError after ``timeout``)."""
        start = time.monotonic()
        ok = wait_until(lambda: self.health(backend, server) == health, timeout, 0.02)
        assert ok, f"{backend}/{server} not {health} after {timeout}s: {self.server(backend, server)}"
        return time.monotonic() - start

    def info(self) -> dict[str, Any]:
        return self.get("/v1/info")

    def worker_pids(self, current_only: bool = True) -> list[int]:
        """Pids of the workers (by default: of the current generation, ready and not stopping)."""
        info = self.info()
        gen = info["generation"]
        return [w["pid"] for w in info["workers"]
                if not current_only or (w["generation"] == gen and not w["stopping"] and w.get("ready", True))]


def tcp_api(port: int, method: str, url: str, token: str | None = None, body: Any = None,
            timeout: float = 10.0) -> tuple[int, Any]:
    """The JSON API over the TCP admin listener, with an optional bearer token."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {}
        payload = None
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            payload = json.dumps(body)
            headers["Content-Type"] = "application/json"
        conn.request(method, url, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        ctype = resp.getheader("Content-Type", "")
        if "json" in ctype:
            return resp.status, json.loads(data)
        return resp.status, data.decode("utf-8", "replace")
    finally:
        conn.close()


def http_get(port: int, url: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """GET on the TCP admin listener: (status, content type, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


# --------------------------------------------------------------------------
# The HAProxy runtime API
# --------------------------------------------------------------------------


def runtime(path: str, line: str, timeout: float = 10.0) -> str:
    """Send one line to the runtime socket and read the answer until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        out = bytearray()
        while True:
            data = s.recv(65536)
            if not data:
                return out.decode()
            out += data


class RuntimeSession:
    """An interactive (``prompt``) session on the runtime socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def read_prompt(self) -> str:
        """Everything up to and including the next ``\\n> `` prompt (without it)."""
        while b"\n> " not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"closed; got {self.buf!r}")
            self.buf += data
        out, _, self.buf = self.buf.partition(b"\n> ")
        return out.decode()

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the proxy closes the connection (what it still sends is kept in ``buf``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.buf += data
        return False

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------
# A backend that sets cookies (for cookie persistence in prefix/rewrite modes)
# --------------------------------------------------------------------------


class _CookieConn(_BackendConn):
    def _head(self, req: Any, status: int, extra: list[str]) -> bytes:
        cookie = req.query.get("setcookie")
        if cookie:
            extra = [*extra, f"Set-Cookie: {cookie}; Path=/"]
        return super()._head(req, status, extra)


class CookieBackend(Backend):
    """As :class:`Backend`; ``?setcookie=NAME%3DVALUE`` adds that ``Set-Cookie`` header."""

    async def _serve(self) -> None:
        self.server = await self.loop.create_server(
            lambda: _CookieConn(self), self.host, self.port, backlog=1024
        )
        self.port = self.server.sockets[0].getsockname()[1]


def served_by(resp: Any) -> str | None:
    return resp.header("X-Served-By")


def get_from(port: int, target: str = "/", src: str | None = None,
             headers: list[tuple[str, str]] | None = None, timeout: float = 10.0) -> Any:
    """One request on a new connection, optionally from source address ``src``."""
    if src is None:
        s = connect(port, timeout=timeout)
    else:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))
    with s:
        s.sendall(request("GET", target, headers=headers))
        return ResponseReader(s).read_one(timeout)


def distribution(port: int, n: int, target: str = "/") -> Counter[str]:
    """Which backend served each of ``n`` requests on one keep-alive connection."""
    out: Counter[str] = Counter()
    with connect(port) as s:
        reader = ResponseReader(s)
        for _ in range(n):
            s.sendall(request("GET", target))
            r = reader.read_one()
            assert r.status == 200, (r.status, r.body)
            out[served_by(r) or "?"] += 1
    return out


# --------------------------------------------------------------------------
# Which process holds which connection
# --------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def established_on(port: int) -> dict[int, tuple[str, int]]:
    """inode -> remote (ip, port) of ESTABLISHED IPv4 sockets whose local port is ``port``."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, st, inode = parts[1], parts[2], parts[3], int(parts[9])
            if st != "01" or int(local.split(":")[1], 16) != port:
                continue
            ip_hex, rport = remote.split(":")
            ip = socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1])
            out[inode] = (ip, int(rport, 16))
    return out


def connections_by_pid(pids: list[int], port: int) -> dict[int, set[int]]:
    """pid -> the client ports of the connections to ``port`` that the process holds."""
    conns = established_on(port)
    return {pid: {conns[i][1] for i in _socket_inodes(pid) if i in conns} for pid in pids}


def spread_connections(port: int, pids: list[int], n: int = 16, tries: int = 6) -> list[socket.socket]:
    """Open keep-alive connections (each used once) until every worker holds at least one."""
    socks: list[socket.socket] = []
    for _ in range(tries):
        for _ in range(n):
            s = connect(port)
            s.sendall(request("GET", "/"))
            r = ResponseReader(s).read_one()
            assert r.status == 200
            socks.append(s)
        by_pid = connections_by_pid(pids, port)
        if all(by_pid[p] for p in pids):
            return socks
    for s in socks:
        s.close()
    raise AssertionError(f"connections did not spread over workers {pids}: {by_pid}")


# --------------------------------------------------------------------------
# A bounded load generator
# --------------------------------------------------------------------------


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    resets: int = 0
    idle_closed: int = 0  # idle keep-alive connection found closed before a request was sent on it
    retried: int = 0  # request sent on an idle keep-alive connection the proxy closed: sent again
    statuses: Counter[int] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"ok={self.ok} failed={self.failed} resets={self.resets} "
                f"idle_closed={self.idle_closed} retried={self.retried} statuses={dict(self.statuses)} "
                f"errors={self.errors[:5]}")


class _Dropped(Exception):
    """The reused connection was closed by the proxy before any response byte."""


class LoadGenerator:
    """``threads`` clients, half on keep-alive connections and half on a new connection
    per request, each sending requests back to back (with ``pause`` in between) until
    :meth:`stop`, ``duration`` or ``max_requests`` (per thread).

    Like any HTTP client (RFC 9112, 9.3.1), a keep-alive client retries a request once on a
    new connection when the proxy closed the idle connection before answering (it checks
    the connection first, as urllib3 does); those are counted in ``idle_closed`` (closed
    before the request was sent) and ``retried`` (closed as the request went out).  A reset
    or a missing/partial response on a fresh connection, or any status but 200, is a failure.
    """

    def __init__(self, port: int, threads: int = 4, duration: float = 10.0, target: str = "/",
                 max_requests: int = 20000, pause: float = 0.0, keepalive: bool | None = None) -> None:
        self.port = port
        self.nthreads = threads
        self.duration = duration
        self.target = target
        self.max_requests = max_requests
        self.pause = pause
        self.keepalive = keepalive
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> LoadGenerator:
        self._deadline = time.monotonic() + self.duration
        for i in range(self.nthreads):
            ka = (i % 2 == 0) if self.keepalive is None else self.keepalive
            t = threading.Thread(target=self._run, args=(ka,), name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.stats

    def wait(self) -> LoadStats:
        for t in self._threads:
            t.join(self.duration + 30)
        return self.stats

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def total(self) -> int:
        with self._lock:
            return self.stats.ok + self.stats.failed

    def _record(self, status: int | None, server: str | None = None, error: str | None = None,
                reset: bool = False) -> None:
        with self._lock:
            st = self.stats
            if status == 200:
                st.ok += 1
                st.served[server or "?"] += 1
            else:
                st.failed += 1
                if reset:
                    st.resets += 1
                if status:
                    st.statuses[status] += 1
                if error and len(st.errors) < 50:
                    st.errors.append(error)

    @staticmethod
    def _dropped(sock: socket.socket) -> bool:
        """The idle connection is readable: the proxy closed it (or sent something)."""
        r, _, _ = select.select([sock], [], [], 0)
        return bool(r)

    def _one(self, sock: socket.socket, reader: ResponseReader, reused: bool) -> Any:
        try:
            sock.sendall(request("GET", self.target))
            got = reader.read(1, 10.0)
        except (ConnectionResetError, BrokenPipeError):
            if reused and not reader.raw:
                raise _Dropped() from None
            raise
        if not got:
            if reused and not reader.raw:
                raise _Dropped()
            raise ConnectionError(f"connection from port {sock.getsockname()[1]} closed without a complete "
                                  f"response at {time.time():.3f}: {bytes(reader.raw[:200])!r}")
        return got[0]

    def _run(self, keepalive: bool) -> None:
        sock: socket.socket | None = None
        reader: ResponseReader | None = None
        sent = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline and sent < self.max_requests:
            sent += 1
            for attempt in (0, 1):
                reused = sock is not None
                if sock is not None and self._dropped(sock):
                    sock.close()
                    sock, reused = None, False
                    with self._lock:
                        self.stats.idle_closed += 1
                if sock is None:
                    try:
                        sock = connect(self.port, timeout=10)
                    except OSError as exc:
                        self._record(None, error=f"connect: {exc!r}", reset=isinstance(exc, ConnectionResetError))
                        break
                    reader = ResponseReader(sock)
                assert reader is not None
                reader.raw = bytearray()
                try:
                    resp = self._one(sock, reader, reused)
                except _Dropped:
                    sock.close()
                    sock = None
                    with self._lock:
                        self.stats.retried += 1
                    if attempt == 0:
                        continue
                    self._record(None, error="closed twice in a row")
                    break
                except (OSError, AssertionError) as exc:
                    sock.close()
                    sock = None
                    self._record(None, error=repr(exc), reset=isinstance(exc, ConnectionResetError))
                    break
                self._record(resp.status, served_by(resp),
                             error=None if resp.status == 200 else f"status {resp.status}: {resp.body[:200]!r}")
                if not keepalive or not resp.keep_alive:
                    sock.close()
                    sock = None
                break
            if self.pause:
                time.sleep(self.pause)
        if sock is not None:
            sock.close()


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclass
class AdminPaths:
    socket: str
    runtime_socket: str
    state_file: str | None = None
    listen_port: int | None = None


def with_admin(cfg: dict[str, Any], directory: Any, *, listen_port: int | None = None,
               token_file: str | None = None, state_file: bool = False, **admin: Any) -> AdminPaths:
    """Add ``global.admin`` (both UNIX sockets in ``directory``) to ``cfg`` in place."""
    d = str(directory)
    if len(d) > 80:  # sun_path is 108 bytes
        import tempfile

        d = tempfile.mkdtemp(prefix="fpc-")
    paths = AdminPaths(os.path.join(d, "admin.sock"), os.path.join(d, "runtime.sock"))
    section: dict[str, Any] = {"socket": paths.socket, "runtime_socket": paths.runtime_socket, **admin}
    if listen_port is not None:
        section["listen"] = f"127.0.0.1:{listen_port}"
        paths.listen_port = listen_port
    if token_file is not None:
        section["token_file"] = token_file
    g = cfg.setdefault("global", {})
    g["admin"] = section
    if state_file:
        paths.state_file = os.path.join(d, "state.json")
        g["state_file"] = paths.state_file
    return paths
