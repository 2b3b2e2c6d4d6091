"""What is measured: the scenarios, their targets, and how each kind is run.

A scenario is data (:class:`Scenario`); its ``kind`` picks the runner:

- ``wrk`` (wrk) and ``conn`` (fpbload: new connections, TLS without resumption)
  run inside the alternating rounds against long-lived proxy instances of their
  ``variant`` (``base``: HAProxy nbthread 1 / fleetproxy 1 worker, proxy alone on
  a CPU; ``2w``: nbthread 2 / 2 workers, see ``Placement.choose_multi``);
- ``idle`` starts a fresh instance per proxy (so earlier traffic cannot have
  pre-grown its heap) and measures RSS;
- ``reload`` starts a fresh, reloadable instance per proxy and reloads it
  ``reloads`` times while fpbload counts every failed request;
- ``health`` starts HAProxy and fleetproxy together, each checking
  ``HealthSpec.servers`` servers, and measures their CPU.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path

from backends import LARGE_PATH, LARGE_SIZE, small_body
from certs import NAME as TLS_NAME
from proxies import TLS_FRONTENDS

ROUND_KINDS = ("wrk", "conn")  # the kinds measured in the alternating rounds


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str = "wrk"  # "wrk" | "conn" | "idle" | "reload" | "health"
    frontend: str = "http"  # which frontend of each proxy is driven
    path: str = "/"
    headers: tuple[str, ...] = ()
    min_ratio: float | None = None  # subject's req/s >= this x reference's
    max_p99_ratio: float | None = None  # subject's p99 <= this x reference's
    max_bytes_per_conn: float | None = None  # idle: RSS per connection
    proxies: tuple[str, ...] | None = None  # None: every proxy with this frontend
    variant: str = "base"  # round kinds: which instances ("base" or "2w")
    wrk_threads: int | None = None  # None: --wrk-threads
    connections: int | None = None  # None: --connections
    # When the reference ran out of load-generator CPU in most rounds, its req/s is not
    # its capacity: compare requests per CPU-second instead (the ratio *eff x*).
    capacity_when_load_bound: bool = False
    unit: str = "req/s"
    keepalive: bool = False  # conn, reload: keep-alive (default: a new connection per request)
    reloads: int = 0  # reload: how many
    max_failed: int | None = None  # reload: failed requests allowed for the subject
    http_checks: bool = False  # health: HTTP GET checks instead of TCP connects
    max_cpu_pct: float | None = None  # health: subject master's CPU, % of one core

    @property
    def tls(self) -> bool:
        return self.frontend in TLS_FRONTENDS

    def targets(self) -> str:
        parts = []
        if self.min_ratio is not None:
            basis = f" ({self.unit} per CPU-second when HAProxy is load-bound)" if self.capacity_when_load_bound else ""
            parts.append(f"{self.unit} >= {self.min_ratio:g} x HAProxy{basis}")
        if self.max_p99_ratio is not None:
            parts.append(f"p99 <= {self.max_p99_ratio:g} x HAProxy")
        if self.max_bytes_per_conn is not None:
            parts.append(f"<= {self.max_bytes_per_conn / 1024:g} KiB per connection")
        if self.max_failed is not None:
            parts.append(f"<= {self.max_failed} failed requests over {self.reloads} reloads, every reload succeeds")
        if self.max_cpu_pct is not None:
            parts.append(f"master CPU < {self.max_cpu_pct:g}% of a core, every server UP, checks at the set rate")
        if self.kind == "conn" and self.tls:
            parts.append("no resumed session")
        if self.kind in ROUND_KINDS:
            parts.append("no errors")
        return ", ".join(parts) or "none (reported)"


P99 = 1.5
SCENARIOS: list[Scenario] = [
    Scenario("http-keepalive", "HTTP keep-alive, 21-byte responses",
             min_ratio=0.75, max_p99_ratio=P99),
    Scenario("http-close", "HTTP, new connection per request (Connection: close)",
             headers=("Connection: close",), min_ratio=0.6, max_p99_ratio=P99),
    Scenario("tcp", "TCP mode (L4 relay), keep-alive, 21-byte responses", frontend="tcp",
             min_ratio=0.85, max_p99_ratio=P99),
    Scenario("http-1m", "HTTP keep-alive, 1 MiB responses", path=LARGE_PATH,
             min_ratio=0.8, max_p99_ratio=P99),
    Scenario("idle-rss", "RSS per idle keep-alive connection", kind="idle",
             max_bytes_per_conn=8 * 1024, proxies=("haproxy", "fleetproxy")),
    # issue 4
    Scenario("http-keepalive-2w", "HTTP keep-alive, fleetproxy 2 workers vs HAProxy nbthread 2",
             variant="2w", wrk_threads=2, connections=100, proxies=("haproxy", "fleetproxy")),
    Scenario("reload-close", "20 reloads under load, a new connection per request", kind="reload",
             reloads=20, max_failed=0, proxies=("haproxy", "fleetproxy")),
    Scenario("reload-keepalive", "20 reloads under load, keep-alive connections", kind="reload",
             reloads=20, max_failed=0, keepalive=True, proxies=("haproxy", "fleetproxy")),
    Scenario("health-tcp", "Health checks: 1000 servers, TCP connect every 2 s", kind="health",
             frontend="health", max_cpu_pct=5.0, proxies=("haproxy", "fleetproxy")),
    Scenario("health-http", "Health checks: 1000 servers, HTTP GET every 2 s", kind="health",
             frontend="health", http_checks=True, max_cpu_pct=5.0, proxies=("haproxy", "fleetproxy")),
    # issue 6
    Scenario("tls-keepalive-ecdsa", "HTTPS keep-alive, ECDSA P-256 certificate, 21-byte responses",
             frontend="https-ecdsa", min_ratio=0.6, proxies=("haproxy", "fleetproxy")),
    Scenario("tls-keepalive-rsa", "HTTPS keep-alive, RSA 2048 certificate, 21-byte responses",
             frontend="https-rsa", min_ratio=0.6, proxies=("haproxy", "fleetproxy")),
    Scenario("tls-handshake-ecdsa", "New full TLS handshakes (no resumption), ECDSA P-256, one request each",
             kind="conn", frontend="https-ecdsa", min_ratio=0.8, capacity_when_load_bound=True,
             unit="handshakes/s", proxies=("haproxy", "fleetproxy")),
    Scenario("tls-handshake-rsa", "New full TLS handshakes (no resumption), RSA 2048, one request each",
             kind="conn", frontend="https-rsa", min_ratio=0.8, capacity_when_load_bound=True,
             unit="handshakes/s", proxies=("haproxy", "fleetproxy")),
]
BY_KEY = {s.key: s for s in SCENARIOS}


# --------------------------------------------------------------------------
# Checking that a proxy really forwards, to both backends, before measuring it
# --------------------------------------------------------------------------


def verify(port: int, frontend: str, n_backends: int = 2, cert: Path | None = None) -> list[str]:
    """Problems found with the proxy on ``port`` (empty when it works).

    HTTP: four requests on one keep-alive connection must reach every backend
    (round robin) with the exact 21-byte bodies, and ``/1m`` must arrive whole.
    HTTPS: the same, over TLS verified against the run's certificate ``cert`` (so
    every proxy is known to serve that very certificate).
    TCP: round robin is per connection, so one request on each of two connections.
    """
    expected = {small_body(i) for i in range(1, n_backends + 1)}
    problems: list[str] = []
    seen: set[bytes] = set()
    try:
        if frontend == "tcp":
            for _ in range(n_backends):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                seen.add(_get(conn, "/", problems))
                conn.close()
        else:
            if frontend in TLS_FRONTENDS:
                if cert is None:
                    return [f"no certificate to verify {frontend} with"]
                ctx = ssl.create_default_context(cafile=str(cert))
                conn = _TlsConnection("127.0.0.1", port, timeout=5, context=ctx)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for _ in range(2 * n_backends):
                seen.add(_get(conn, "/", problems))
            large = _get(conn, LARGE_PATH, problems)
            if len(large) != LARGE_SIZE:
                problems.append(f"GET {LARGE_PATH}: {len(large)} bytes, expected {LARGE_SIZE}")
            conn.close()
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        problems.append(f"request failed: {exc!r}")
    if not problems and seen != expected:
        problems.append(f"bodies seen {sorted(seen)}, expected every backend {sorted(expected)}")
    return problems


def _get(conn: http.client.HTTPConnection, path: str, problems: list[str]) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        problems.append(f"GET {path}: status {resp.status}")
    return body



class _TlsConnection(http.client.HTTPConnection):
    """HTTPS to 127.0.0.1 with SNI and the certificate checked for the run's certificate name."""

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout)
        self.tls_context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=TLS_NAME)
