"""The proxies under test and their equivalent configurations.

Every proxy gets the same model: frontends (an HTTP one and, where supported,
a TCP one, each on its own free port of 127.0.0.1) in front of the same two
backends, round robin, ``X-Forwarded-For`` appended, the same timeouts and
limits, no logging.  A :class:`ProxyKind` renders its configuration from a
:class:`Topology` and starts one instance; new proxies or frontends are added
here without touching the scenarios.

Frontends by name: ``http``, ``tcp``, ``https-ecdsa`` and ``https-rsa`` (TLS
termination with the run's certificate of that key type, in front of the same
HTTP backend) and ``health`` (a backend of many servers with active checks,
:class:`HealthSpec`).  :class:`Settings` decide the process model
(``threads``: HAProxy ``nbthread`` / fleetproxy ``global.workers``), control
sockets (``admin_sockets``) and seamless reloads (``reloadable``: HAProxy in
master-worker mode with its listeners passed to the new worker; fleetproxy
with its admin socket), and :meth:`ProxyKind.reload` reloads either the way
its documentation says.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    BenchError,
    Placement,
    Proc,
    Processes,
    free_ports,
    unix_command,
    unix_http,
    wait_port,
)

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Settings:
    """Knobs every proxy gets the same value of."""

    maxconn: int = 20000
    threads: int = 1  # HAProxy nbthread / fleetproxy global.workers
    keepalive_timeout: str = "60s"  # long enough for the idle-connection test
    client_timeout: str = "60s"
    server_timeout: str = "50s"
    connect_timeout: str = "5s"
    request_timeout: str = "10s"
    queue_timeout: str = "5s"
    retries: int = 3
    nofile: int = 20000  # the file-descriptor limit the proxies run with
    admin_sockets: bool = False  # HAProxy stats socket / fleetproxy admin + runtime sockets
    reloadable: bool = False  # HAProxy master-worker (-W -S, expose-fd listeners); fleetproxy admin socket
    hard_stop_after: str = "30s"  # fleetproxy's default; HAProxy gets the same


@dataclass(frozen=True)
class HealthSpec:
    """A backend of ``servers`` servers, each checked every ``inter``."""

    servers: int = 1000
    inter: str = "2s"
    http: bool = False  # HTTP checks (GET / with a Host header) instead of TCP connects
    target: int = 0  # index into Topology.backends: the address every server points at


TLS_FRONTENDS = ("https-ecdsa", "https-rsa")
CHECK_HOST = "fpb-check"


@dataclass
class Topology:
    """Where the backends are; which frontends a proxy should expose."""

    backends: list[str]
    frontends: tuple[str, ...] = ("http", "tcp")  # also "https-ecdsa", "https-rsa", "health"
    certs: dict[str, Path] = field(default_factory=dict)  # TLS frontend -> PEM (certificate + key)
    health: HealthSpec | None = None

    def cert(self, frontend: str) -> Path:
        try:
            return self.certs[frontend]
        except KeyError:
            raise BenchError(f"no certificate for frontend {frontend}") from None


@dataclass
class Instance:
    """One running proxy: its process and the port of each frontend."""

    kind: ProxyKind
    proc: Proc
    ports: dict[str, int]
    config: Path
    workdir: Path

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, frontend: str, path: str = "/") -> str:
        scheme = "https" if frontend in TLS_FRONTENDS else "http"
        return f"{scheme}://127.0.0.1:{self.ports[frontend]}{path}"

    @property
    def stats_socket(self) -> Path:
        """The socket that answers HAProxy's ``show stat`` (fleetproxy: its runtime socket)."""
        return self.workdir / "stats.sock"

    @property
    def control_socket(self) -> Path:
        """HAProxy: the master CLI (``-S``); fleetproxy: the JSON admin socket."""
        return self.workdir / "control.sock"

    def reload(self, timeout: float = 30.0) -> float:
        """Reload with the same file, the documented way; returns the seconds it took."""
        return self.kind.reload(self, timeout)

    def server_states(self, backend: str) -> dict[str, str]:
        """``show stat``: server name -> status (UP, DOWN, ...) in ``backend``."""
        text = unix_command(self.stats_socket, "show stat")
        lines = text.strip().splitlines()
        if not lines or not lines[0].startswith("# "):
            raise BenchError(f"{self.name}: unexpected 'show stat' answer {text[:200]!r}")
        cols = lines[0][2:].split(",")
        px, sv, st = cols.index("pxname"), cols.index("svname"), cols.index("status")
        out = {}
        for line in lines[1:]:
            f = line.split(",")
            if len(f) > st and f[px] == backend and f[sv] not in ("FRONTEND", "BACKEND"):
                out[f[sv]] = f[st]
        return out


@dataclass
class ProxyKind:
    name: str
    frontends: tuple[str, ...] = ("http", "tcp", *TLS_FRONTENDS, "health")
    settings: Settings = field(default_factory=Settings)

    # TCP health checks that stop at SYN, SYN-ACK, RST: the server never accepts them,
    # so they cannot be counted at the server.
    half_open_tcp_checks = False

    def supports(self, frontend: str) -> bool:
        return frontend in self.frontends

    def available(self) -> str | None:
        """None when it can run here, else the reason it cannot."""
        return None

    def version(self) -> str:
        return "?"

    def render(self, topo: Topology, ports: dict[str, int], workdir: Path) -> Path:
        raise NotImplementedError

    def argv(self, config: Path) -> list[str]:
        raise NotImplementedError

    def reload(self, inst: Instance, timeout: float) -> float:
        raise BenchError(f"{self.name} cannot reload")

    def start(self, procs: Processes, placement: Placement, topo: Topology, tag: str = "") -> Instance:
        wanted = [f for f in topo.frontends if self.supports(f)]
        ports = dict(zip(wanted, free_ports(len(wanted)), strict=True))
        name = f"fpb-{self.name}{tag}"
        d = procs.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        config = self.render(topo, ports, d)
        proc = procs.spawn(name, self.argv(config), cpus=placement.cpus("proxy"))
        try:
            for port in ports.values():
                wait_port(port, proc=proc.popen, timeout=20)
        except BenchError as exc:
            raise BenchError(f"{self.name} did not start: {exc}\n{proc.tail()}") from None
        return Instance(self, proc, ports, config, d)


# --------------------------------------------------------------------------
# HAProxy
# --------------------------------------------------------------------------


@dataclass
class HAProxy(ProxyKind):
    binary: str = "/usr/sbin/haproxy"
    half_open_tcp_checks = True

    def available(self) -> str | None:
        return None if Path(self.binary).exists() else f"{self.binary} not found (apt-get install haproxy)"

    def version(self) -> str:
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"version (\S+)", out)
        return m.group(1) if m else out.strip()

    def render(self, topo: Topology, ports: dict[str, int], workdir: Path) -> Path:
        s = self.settings
        # HAProxy wants 2 fds per connection (client + server) before it starts; an
        # idle keep-alive client needs only one, so let it start below that.
        limits = "" if s.nofile >= 2 * s.maxconn + 300 else (
            "    # RLIMIT_NOFILE is below 2 x maxconn here; idle clients need one fd each.\n"
            "    no strict-limits\n")
        sockets = ""
        if s.admin_sockets or s.reloadable:
            expose = " expose-fd listeners" if s.reloadable else ""
            sockets = f"    stats socket {workdir / 'stats.sock'} mode 600 level admin{expose}\n"
        if s.reloadable:
            sockets += ("    # master-worker mode (-W -S on the command line): a reload passes the\n"
                        "    # listening sockets to the new worker through the stats socket above\n"
                        f"    hard-stop-after {s.hard_stop_after}\n")
        servers = "".join(f"    server b{i} {addr}\n" for i, addr in enumerate(topo.backends, 1))
        text = (
            "# Generated by proxy/bench: HAProxy equivalent of the fleetproxy config.\n"
            "global\n"
            f"    nbthread {s.threads}\n"
            f"    maxconn {s.maxconn}\n"
            f"{limits}"
            f"{sockets}"
            "    # no 'log' line: nothing is logged\n"
            "defaults\n"
            "    mode http\n"
            f"    maxconn {s.maxconn}\n"
            f"    timeout connect {s.connect_timeout}\n"
            f"    timeout client {s.client_timeout}\n"
            f"    timeout server {s.server_timeout}\n"
            f"    timeout http-request {s.request_timeout}\n"
            f"    timeout http-keep-alive {s.keepalive_timeout}\n"
            f"    timeout queue {s.queue_timeout}\n"
            f"    retries {s.retries}\n"
            "    option redispatch\n"
            "    # http-reuse safe is the default\n"
        )
        http_fronts = [f for f in ("http", *TLS_FRONTENDS) if f in ports]
        for fe in http_fronts:
            bind = f"127.0.0.1:{ports[fe]}"
            proto = "http"
            if fe in TLS_FRONTENDS:
                # fleetproxy's defaults: ALPN http/1.1, TLS 1.2 minimum
                bind += f" ssl crt {topo.cert(fe)} alpn http/1.1 ssl-min-ver TLSv1.2"
                proto = "https"
            text += (
                f"frontend fpb_{fe.replace('-', '_')}\n"
                f"    bind {bind}\n"
                "    option forwardfor\n"
                "    # fleetproxy always sets X-Forwarded-Proto; do the same work here\n"
                f"    http-request set-header X-Forwarded-Proto {proto}\n"
                f"    default_backend fpb_{proto}_back\n"
            )
        if "http" in ports:
            text += (
                "backend fpb_http_back\n"
                "    balance roundrobin\n"
                f"{servers}"
            )
        if any(fe in ports for fe in TLS_FRONTENDS):
            text += (
                "backend fpb_https_back\n"
                "    balance roundrobin\n"
                "    # The TLS scenarios compare TLS costs: with the default 'http-reuse safe' the\n"
                "    # first request of every client connection (each one in the handshake\n"
                "    # scenarios) would get a new server connection; fleetproxy reuses its pool.\n"
                "    http-reuse always\n"
                f"{servers}"
            )
        if "tcp" in ports:
            text += (
                "frontend fpb_tcp\n"
                "    mode tcp\n"
                f"    bind 127.0.0.1:{ports['tcp']}\n"
                "    default_backend fpb_tcp_back\n"
                "backend fpb_tcp_back\n"
                "    mode tcp\n"
                "    balance roundrobin\n"
                f"{servers}"
            )
        if "health" in ports:
            h = topo.health or HealthSpec()
            addr = topo.backends[h.target]
            check = ""
            if h.http:
                check = ("    option httpchk\n"
                         "    # the request fleetproxy's httpchk sends; 2xx and 3xx pass (both defaults)\n"
                         f"    http-check send meth GET uri / ver HTTP/1.1 hdr Host {CHECK_HOST}\n")
            text += (
                "frontend fpb_health\n"
                f"    bind 127.0.0.1:{ports['health']}\n"
                "    default_backend fpb_health_back\n"
                "backend fpb_health_back\n"
                "    balance roundrobin\n"
                f"{check}"
                "    # no 'timeout check': the check timeout is 'inter', as in fleetproxy\n"
                f"    default-server check inter {h.inter} rise 2 fall 3\n"
                + "".join(f"    server s{i:04d} {addr}\n" for i in range(1, h.servers + 1))
            )
        path = workdir / "haproxy.cfg"
        path.write_text(text)
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(path)],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise BenchError(f"haproxy rejects {path}:\n{check.stdout}{check.stderr}")
        return path

    def argv(self, config: Path) -> list[str]:
        if self.settings.reloadable:
            return [self.binary, "-W", "-db", "-S", str(config.parent / "control.sock"), "-f", str(config)]
        return [self.binary, "-db", "-f", str(config)]

    def reload(self, inst: Instance, timeout: float) -> float:
        """The master CLI's ``reload`` (what ``systemctl reload`` and SIGUSR2 do); done when
        the master counts one more reload and a new worker is the current one."""
        t0 = time.monotonic()
        before = self._procs(inst)
        unix_command(inst.control_socket, "reload", timeout=timeout)
        while True:
            try:
                now = self._procs(inst)
            except (OSError, BenchError):
                now = None  # the master re-executes itself: its CLI is briefly away
            if now is not None:
                if now["failed"] > before["failed"]:
                    raise BenchError(f"haproxy reload failed:\n{inst.proc.tail()}")
                if now["reloads"] > before["reloads"] and now["workers"] and \
                        not set(now["workers"]) & set(before["workers"]):
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"haproxy reload did not complete in {timeout:.0f} s:\n{inst.proc.tail()}")
            time.sleep(0.02)

    @staticmethod
    def _procs(inst: Instance) -> dict:
        """``show proc`` on the master CLI: its reload and failure counts, current workers."""
        text = unix_command(inst.control_socket, "show proc", timeout=5)
        m = re.search(r"^\d+\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", text, re.M)
        if m is None:
            raise BenchError(f"unexpected 'show proc' answer {text[:300]!r}")
        section, workers = "", []
        for line in text.splitlines():
            if line.startswith("#"):
                section = line
            elif section == "# workers" and line.split()[1:2] == ["worker"]:
                workers.append(int(line.split()[0]))
        return {"reloads": int(m.group(1)), "failed": int(m.group(2)), "workers": workers}


# --------------------------------------------------------------------------
# fleetproxy
# --------------------------------------------------------------------------


@dataclass
class Fleetproxy(ProxyKind):
    python: str = sys.executable
    half_open_tcp_checks = True  # like HAProxy's (health.py): reset before the final ACK

    def command(self) -> list[str]:
        script = Path(self.python).with_name("fleetproxy")
        return [str(script)] if script.exists() else [self.python, "-m", "fleetproxy"]

    def available(self) -> str | None:
        r = subprocess.run([*self.command(), "--version"], capture_output=True, text=True, check=False)
        return None if r.returncode == 0 else f"fleetproxy not runnable: {r.stderr.strip()}"

    def version(self) -> str:
        """The package version and the commit of the source tree that runs (from its git)."""
        r = subprocess.run([self.python, "-c", "import fleetproxy; print(fleetproxy.__version__); "
                            "print(fleetproxy.__file__)"], capture_output=True, text=True, check=False)
        lines = r.stdout.split()
        if len(lines) < 2:
            return "?"
        version, src = lines[0], str(Path(lines[1]).parent)
        git = ["git", "-C", src]
        commit = subprocess.run([*git, "log", "-1", "--format=%h", "--", "."],
                                capture_output=True, text=True, check=False).stdout.strip()
        if not commit:
            return version
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=False).stdout.strip()
        return f"{version} (source at commit {commit}{', with uncommitted changes' if dirty else ''})"

    def render(self, topo: Topology, ports: dict[str, int], workdir: Path) -> Path:
        s = self.settings
        servers = "".join(
            f"      - {{name: b{i}, address: \"{addr}\"}}\n" for i, addr in enumerate(topo.backends, 1))
        admin = ""
        if s.admin_sockets or s.reloadable:
            admin = (f"  admin: {{socket: \"{workdir / 'control.sock'}\", "
                     f"runtime_socket: \"{workdir / 'stats.sock'}\"}}\n")
        text = (
            "# Generated by proxy/bench: fleetproxy equivalent of the HAProxy config.\n"
            "global:\n"
            f"  maxconn: {s.maxconn}\n"
            f"  workers: {s.threads}\n"
            f"  hard_stop_after: {s.hard_stop_after}\n"
            "  log: {access: none}\n"
            f"{admin}"
            "defaults:\n"
            "  mode: http\n"
            f"  maxconn: {s.maxconn}\n"
            f"  timeouts: {{connect: {s.connect_timeout}, client: {s.client_timeout}, "
            f"server: {s.server_timeout}, http_request: {s.request_timeout}, "
            f"http_keep_alive: {s.keepalive_timeout}, queue: {s.queue_timeout}}}\n"
            f"  retries: {s.retries}\n"
            "  redispatch: true\n"
            "  forwardfor: true\n"
            "frontends:\n"
        )
        backends = "backends:\n"
        for fe in ("http", *TLS_FRONTENDS, "tcp"):
            if fe not in ports:
                continue
            mode = "tcp" if fe == "tcp" else "http"
            bind = f"\"127.0.0.1:{ports[fe]}\""
            if fe in TLS_FRONTENDS:
                # defaults: ALPN http/1.1, TLS 1.2 minimum, tickets rotated hourly
                bind = f"{{address: {bind}, tls: {{certificates: [\"{topo.cert(fe)}\"]}}}}"
            text += (
                f"  - name: fpb_{fe.replace('-', '_')}\n"
                f"    mode: {mode}\n"
                f"    bind: [{bind}]\n"
                f"    default_backend: fpb_{mode}_back\n"
            )
        for mode in ("http", "tcp"):
            if not any(("tcp" if fe == "tcp" else "http") == mode for fe in ports if fe != "health"):
                continue
            backends += (
                f"  - name: fpb_{mode}_back\n"
                f"    mode: {mode}\n"
                "    balance: roundrobin\n"
                "    servers:\n"
                f"{servers}"
            )
        if "health" in ports:
            h = topo.health or HealthSpec()
            addr = topo.backends[h.target]
            text += (
                "  - name: fpb_health\n"
                "    mode: http\n"
                f"    bind: [\"127.0.0.1:{ports['health']}\"]\n"
                "    default_backend: fpb_health_back\n"
            )
            backends += (
                "  - name: fpb_health_back\n"
                "    mode: http\n"
                "    balance: roundrobin\n"
                + (f"    httpchk: {{method: GET, path: /, host: {CHECK_HOST}}}\n" if h.http else "")
                + f"    default_server: {{check: true, inter: {h.inter}, rise: 2, fall: 3}}\n"
                "    servers:\n"
                + "".join(f"      - {{name: s{i:04d}, address: \"{addr}\"}}\n" for i in range(1, h.servers + 1))
            )
        path = workdir / "fleetproxy.yml"
        path.write_text(text + backends)
        check = subprocess.run([*self.command(), "check", "-c", str(path)],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise BenchError(f"fleetproxy check rejects {path}:\n{check.stdout}{check.stderr}")
        return path

    def argv(self, config: Path) -> list[str]:
        return [*self.command(), "run", "-c", str(config)]

    def reload(self, inst: Instance, timeout: float) -> float:
        """``POST /v1/reload`` on the admin socket: what ``fleetproxy reload`` does (without
        starting an interpreter); it answers once the new workers accept."""
        t0 = time.monotonic()
        status, body = unix_http(inst.control_socket, "POST", "/v1/reload", timeout=timeout)
        if status != 200:
            raise BenchError(f"fleetproxy reload answered {status}: {body[:500]!r}")
        try:
            json.loads(body)
        except ValueError:
            raise BenchError(f"fleetproxy reload: unexpected answer {body[:300]!r}") from None
        return time.monotonic() - t0


# --------------------------------------------------------------------------
# The naive aiohttp reverse proxy (the Python peer)
# --------------------------------------------------------------------------


@dataclass
class NaiveAiohttp(ProxyKind):
    frontends: tuple[str, ...] = ("http",)
    python: str = sys.executable

    def available(self) -> str | None:
        r = subprocess.run([self.python, "-c", "import aiohttp"], capture_output=True, check=False)
        return None if r.returncode == 0 else "aiohttp is not installed (pip install -e 'proxy[bench]')"

    def version(self) -> str:
        r = subprocess.run([self.python, "-c", "import aiohttp; print(aiohttp.__version__)"],
                           capture_output=True, text=True, check=False)
        return f"aiohttp {r.stdout.strip()}"

    def render(self, topo: Topology, ports: dict[str, int], workdir: Path) -> Path:
        # Its "configuration" is its command line, one argument per line.
        args = ["--listen", f"127.0.0.1:{ports['http']}"]
        for b in topo.backends:
            args += ["--backend", b]
        path = workdir / "naive_aiohttp.args"
        path.write_text("".join(f"{a}\n" for a in args))
        return path

    def argv(self, config: Path) -> list[str]:
        return [self.python, str(BENCH_DIR / "naive_aiohttp.py"), *config.read_text().splitlines()]


REFERENCE = "haproxy"  # ratios are to this proxy
SUBJECT = "fleetproxy"  # targets apply to this proxy


def proxy_kinds(settings: Settings, haproxy: str | None = None) -> dict[str, ProxyKind]:
    """Every proxy the benchmark knows, by name, in display order."""
    return {
        "haproxy": HAProxy("haproxy", settings=settings, binary=haproxy or shutil.which("haproxy")
                           or "/usr/sbin/haproxy"),
        "fleetproxy": Fleetproxy("fleetproxy", settings=settings),
        "aiohttp": NaiveAiohttp("aiohttp", settings=settings),
    }
