"""What is measured: the scenarios, their targets, and how each kind is run.

A scenario is data (:class:`Scenario`); its ``kind`` picks the runner:
``wrk`` scenarios run inside the alternating rounds against long-lived proxy
instances, ``idle`` scenarios start a fresh instance per proxy (so earlier
traffic cannot have pre-grown its heap) and measure RSS.  Issue 4's and 6's
benchmarks (2 workers vs 2 threads, reloads under load, health-check CPU, TLS)
become new entries here plus, where needed, a new kind with its runner.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from backends import LARGE_PATH, LARGE_SIZE, small_body


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str = "wrk"  # "wrk" | "idle"
    frontend: str = "http"  # which frontend of each proxy is driven
    path: str = "/"
    headers: tuple[str, ...] = ()
    min_ratio: float | None = None  # subject's req/s >= this x reference's
    max_p99_ratio: float | None = None  # subject's p99 <= this x reference's
    max_bytes_per_conn: float | None = None  # idle: RSS per connection
    proxies: tuple[str, ...] | None = None  # None: every proxy with this frontend

    def targets(self) -> str:
        parts = []
        if self.min_ratio is not None:
            parts.append(f"req/s >= {self.min_ratio:g} x HAProxy")
        if self.max_p99_ratio is not None:
            parts.append(f"p99 <= {self.max_p99_ratio:g} x HAProxy")
        if self.max_bytes_per_conn is not None:
            parts.append(f"<= {self.max_bytes_per_conn / 1024:g} KiB per connection")
        if self.kind == "wrk":
            parts.append("no errors")
        return ", ".join(parts)


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
]
BY_KEY = {s.key: s for s in SCENARIOS}


# --------------------------------------------------------------------------
# Checking that a proxy really forwards, to both backends, before measuring it
# --------------------------------------------------------------------------


def verify(port: int, frontend: str, n_backends: int = 2) -> list[str]:
    """Problems found with the proxy on ``port`` (empty when it works).

    HTTP: four requests on one keep-alive connection must reach every backend
    (round robin) with the exact 21-byte bodies, and ``/1m`` must arrive whole.
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
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for _ in range(2 * n_backends):
                seen.add(_get(conn, "/", problems))
            large = _get(conn, LARGE_PATH, problems)
            if len(large) != LARGE_SIZE:
                problems.append(f"GET {LARGE_PATH}: {len(large)} bytes, expected {LARGE_SIZE}")
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
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

