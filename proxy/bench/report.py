"""Turning measurements into verdicts, a console table and ``RESULTS.md``.

Per scenario and proxy: the median over rounds of successful responses per
second (4xx/5xx answers do not count), of p50 and p99 latency and of the
proxy's CPU use; errors are summed over all rounds.  The ratio to HAProxy is
the median of the per-round ratios (each round runs every proxy back to back,
so a ratio compares runs minutes apart at most, which keeps background load on
a shared machine from leaning on one proxy only).  Any socket error, timeout or
4xx/5xx answer fails the subject's targets for that scenario.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from certs import KEY_TYPES
from loadgen import IdleResult, WrkResult
from ops import HealthResult, ReloadResult
from proxies import REFERENCE, SUBJECT
from scenarios import Scenario


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    scenario: Scenario
    proxy: str
    runs: dict[int, WrkResult]  # round -> result
    ref: dict[int, WrkResult] | None  # the reference proxy's runs, None for the reference itself
    verify_problems: list[str] = field(default_factory=list)
    died: bool = False  # the proxy exited during the run

    @property
    def rps(self) -> float:
        return _median([r.ok_rps for r in self.runs.values()])

    @property
    def rps_range(self) -> tuple[float, float]:
        vals = [r.ok_rps for r in self.runs.values()]
        return (min(vals), max(vals)) if vals else (float("nan"), float("nan"))

    @property
    def p50(self) -> float:
        return _median([r.p50_ms for r in self.runs.values()])

    @property
    def p99(self) -> float:
        return _median([r.p99_ms for r in self.runs.values()])

    @property
    def cpu(self) -> float:
        return _median([r.cpu_pct for r in self.runs.values()])

    @property
    def conns_per_1k(self) -> float:
        return _median([r.conns_per_1k for r in self.runs.values()])

    @property
    def other_cpu(self) -> float:
        return _median([r.other_cpu_pct for r in self.runs.values()])

    @property
    def mib_s(self) -> float:
        return _median([r.bytes / r.duration / (1 << 20) for r in self.runs.values()])

    @property
    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs.values():
            for k, v in r.errors.items():
                out[k] = out.get(k, 0) + v
        return out

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def _paired(self, attr: str) -> float:
        if self.ref is None:
            return 1.0
        ratios = []
        for rnd, run in self.runs.items():
            ref = self.ref.get(rnd)
            if ref is not None and getattr(ref, attr) > 0 and not math.isnan(getattr(ref, attr)):
                ratios.append(getattr(run, attr) / getattr(ref, attr))
        return _median(ratios)

    @property
    def ratio(self) -> float:
        return self._paired("ok_rps")

    @property
    def per_core(self) -> float:
        return _median([r.per_core for r in self.runs.values()])

    @property
    def per_core_ratio(self) -> float:
        return self._paired("per_core")

    @property
    def load_bound(self) -> bool:
        """Most rounds ran out of load-generator CPU: req/s understates this proxy."""
        return sum(r.load_bound for r in self.runs.values()) * 2 > len(self.runs)

    @property
    def p99_ratio(self) -> float:
        return self._paired("p99_ms")

    @property
    def ref_load_bound(self) -> bool:
        """The reference ran out of load-generator CPU in most rounds."""
        if not self.ref:
            return False
        return sum(r.load_bound for r in self.ref.values()) * 2 > len(self.ref)

    @property
    def resumed(self) -> int:
        return sum(int(r.extra.get("resumed", 0)) for r in self.runs.values())

    @property
    def handshakes(self) -> int:
        return sum(int(r.extra.get("handshakes", 0)) for r in self.runs.values())

    def checks(self) -> list[Check]:
        """Every target that applies; only the subject has targets."""
        if self.proxy != SUBJECT:
            return []
        s = self.scenario
        out = []
        if s.min_ratio is not None:
            if s.capacity_when_load_bound and self.ref_load_bound:
                out.append(Check(f"{s.unit} per CPU-second >= {s.min_ratio:g} x HAProxy (HAProxy was "
                                 f"load-bound; {s.unit} ratio {fmt_ratio(self.ratio)})",
                                 f"{fmt_ratio(self.per_core_ratio)} x", self.per_core_ratio >= s.min_ratio))
            else:
                out.append(Check(f"{s.unit} >= {s.min_ratio:g} x HAProxy", f"{fmt_ratio(self.ratio)} x",
                                 self.ratio >= s.min_ratio))
        if s.max_p99_ratio is not None:
            out.append(Check(f"p99 <= {s.max_p99_ratio:g} x HAProxy", f"{fmt_ratio(self.p99_ratio)} x",
                             self.p99_ratio <= s.max_p99_ratio))
        if s.kind == "conn" and s.tls:
            out.append(Check("no resumed TLS session", f"{self.resumed} of {self.handshakes:,} handshakes",
                             self.resumed == 0 and self.handshakes > 0))
        out.append(Check("no errors", fmt_errors(self.errors), self.error_total == 0))
        if self.verify_problems:
            out.append(Check("forwards correctly", "; ".join(self.verify_problems), False))
        if self.died:
            out.append(Check("keeps running", "exited during the run", False))
        return out

    def verdict(self) -> str:
        notes = []
        if self.died:
            notes.append("EXITED during the run")
        if self.load_bound:
            notes.append("LOAD-BOUND: req/s understated")
        if self.proxy == REFERENCE:
            if self.error_total:
                notes.append("HAS ERRORS: ratios unreliable")
            return "reference" + (f" ({'; '.join(notes)})" if notes else "")
        return verdict(self.checks()) + (f" ({'; '.join(notes)})" if notes else "")


@dataclass
class IdleRow:
    scenario: Scenario
    proxy: str
    result: IdleResult
    ref: IdleResult | None
    verify_problems: list[str] = field(default_factory=list)
    died: bool = False

    @property
    def ratio(self) -> float:
        if self.ref is None:
            return 1.0
        return self.result.bytes_per_conn / self.ref.bytes_per_conn if self.ref.bytes_per_conn > 0 else float("nan")

    def checks(self) -> list[Check]:
        if self.proxy != SUBJECT or self.scenario.max_bytes_per_conn is None:
            return []
        r = self.result
        limit = self.scenario.max_bytes_per_conn
        return [
            Check(f"<= {limit / 1024:g} KiB RSS per idle connection", f"{r.bytes_per_conn / 1024:.2f} KiB",
                  r.bytes_per_conn <= limit),
            Check("every connection set up and kept", f"{r.failed} failed, {r.closed_early} closed early",
                  r.failed == 0 and r.closed_early == 0),
        ] + ([Check("forwards correctly", "; ".join(self.verify_problems), False)] if self.verify_problems
             else []) + ([Check("keeps running", "exited during the run", False)] if self.died else [])

    def verdict(self) -> str:
        if self.proxy == REFERENCE:
            bad = self.result.failed or self.result.closed_early or self.verify_problems or self.died
            return "reference" + (" (HAS FAILURES)" if bad else "")
        return verdict(self.checks())


@dataclass
class ReloadRow:
    scenario: Scenario
    proxy: str
    result: ReloadResult | None  # None: the run itself failed (see problems)
    ref: ReloadResult | None
    problems: list[str] = field(default_factory=list)

    def checks(self) -> list[Check]:
        s = self.scenario
        if self.proxy != SUBJECT or s.max_failed is None:
            return []
        r = self.result
        if r is None:
            return [Check("the reload run completes", "; ".join(self.problems) or "no result", False)]
        out = [
            Check(f"every one of {r.reloads} reloads succeeds", f"{r.reloads_ok}/{r.reloads}",
                  r.reloads_ok == r.reloads and not r.errors),
            Check(f"<= {s.max_failed} failed requests (resets included)",
                  fmt_errors(r.errors_by_kind), r.failed <= s.max_failed),
        ]
        if r.reloads != s.reloads:
            out.append(Check(f"{s.reloads} reloads (the issue's number)", f"{r.reloads} (--reloads)", False))
        return out

    def verdict(self) -> str:
        if self.proxy == REFERENCE:
            if self.result is None:
                return "reference (FAILED: " + "; ".join(self.problems) + ")"
            return "reference"
        return verdict(self.checks())


@dataclass
class HealthRow:
    scenario: Scenario
    proxy: str
    result: HealthResult | None
    ref: HealthResult | None
    problems: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        if self.ref is None or self.result is None:
            return 1.0 if self.result is not None else float("nan")
        return self.result.cpu_master_total / self.ref.cpu_master_total if self.ref.cpu_master_total > 0 \
            else float("nan")

    def checks(self) -> list[Check]:
        s = self.scenario
        if self.proxy != SUBJECT or s.max_cpu_pct is None:
            return []
        r = self.result
        if r is None:
            return [Check("the health run completes", "; ".join(self.problems) or "no result", False)]
        return [
            Check(f"master CPU < {s.max_cpu_pct:g}% of a core", f"{r.cpu_master_total:.1f}%",
                  r.cpu_master_total < s.max_cpu_pct),
            Check(f"every server UP ({r.servers})", f"{r.servers - r.not_up} UP", r.not_up == 0),
            Check(f"checks at the set rate ({r.expected_checks_per_s:.0f}/s +-20%)",
                  f"{r.checks_per_s:.0f}/s" if r.checks_observable else "not countable", r.rate_ok),
        ]

    def verdict(self) -> str:
        if self.proxy == REFERENCE:
            if self.result is None:
                return "reference (FAILED: " + "; ".join(self.problems) + ")"
            bad = self.result.not_up or not self.result.rate_ok
            return "reference" + (" (not every server UP, or checks off the set rate)" if bad else "")
        return verdict(self.checks())


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    ok: bool


def verdict(checks: list[Check]) -> str:
    if not checks:
        return "-"
    failed = [f"{c.measured} (target {c.target})" for c in checks if not c.ok]
    return "PASS" if not failed else "FAIL: " + "; ".join(failed)


def fmt_ratio(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def fmt_c1k(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x:.1f}" if x < 10 else f"{x:.0f}")


def fmt_ms(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def fmt_num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.0f}"


def fmt_errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in errors.items() if v) + ")"


# --------------------------------------------------------------------------
# Console output
# --------------------------------------------------------------------------


def console_table(rows: list[Row], idle: list[IdleRow], reloads: list[ReloadRow] | None = None,
                  health: list[HealthRow] | None = None) -> str:
    lines = []
    head = (f"{'proxy':<11} {'req/s':>9} {'min-max':>17} {'p50 ms':>7} {'p99 ms':>7} {'CPU%':>5} {'other':>5} {'c/1k':>5} "
            f"{'ratio':>6} {'p99 x':>6} {'eff x':>6}  {'errors':<8} result")
    by_scenario: dict[str, list[Row]] = {}
    for row in rows:
        by_scenario.setdefault(row.scenario.key, []).append(row)
    for group in by_scenario.values():
        s = group[0].scenario
        lines.append(f"\n== {s.title} [{s.key}]   targets: {s.targets()}")
        lines.append(head)
        for r in group:
            lo, hi = r.rps_range
            extra = f"  {r.mib_s:,.0f} MiB/s" if s.path != "/" else ""
            if s.kind == "conn" and s.tls:
                extra += f"  (resumed {r.resumed} of {r.handshakes:,})"
            lines.append(
                f"{r.proxy:<11} {fmt_num(r.rps):>9} {fmt_num(lo) + '-' + fmt_num(hi):>17} "
                f"{fmt_ms(r.p50):>7} {fmt_ms(r.p99):>7} {r.cpu:>5.0f} {r.other_cpu:>5.0f} {fmt_c1k(r.conns_per_1k):>5} {fmt_ratio(r.ratio):>6} "
                f"{fmt_ratio(r.p99_ratio):>6} {fmt_ratio(r.per_core_ratio):>6}  {fmt_errors(r.errors):<8} "
                f"{r.verdict()}{extra}")
    for row in idle:
        if row is idle[0]:
            s = row.scenario
            lines.append(f"\n== {s.title} [{s.key}]   targets: {s.targets()}")
            lines.append(f"{'proxy':<11} {'conns':>6} {'failed':>6} {'closed':>6} {'RSS before':>11} "
                         f"{'RSS idle':>10} {'KiB/conn':>9} {'ratio':>6}  result")
        r = row.result
        lines.append(
            f"{row.proxy:<11} {r.connections:>6} {r.failed:>6} {r.closed_early:>6} "
            f"{r.rss_before / 2**20:>9.1f}Mi {r.rss_idle / 2**20:>8.1f}Mi {r.bytes_per_conn / 1024:>9.2f} "
            f"{fmt_ratio(row.ratio):>6}  {row.verdict()}")
    last = None
    for rr in reloads or []:
        s = rr.scenario
        if s.key != last:
            last = s.key
            lines.append(f"\n== {s.title} [{s.key}]   targets: {s.targets()}")
            lines.append(f"{'proxy':<11} {'reloads':>7} {'median s':>8} {'req/s':>8} {'ok':>9} {'failed':>6} "
                         f"{'reloads w/ fail':>15} {'gap ms':>7}  {'errors':<24} result")
        r = rr.result
        if r is None:
            lines.append(f"{rr.proxy:<11} run failed: {'; '.join(rr.problems)}")
            continue
        lines.append(
            f"{rr.proxy:<11} {f'{r.reloads_ok}/{r.reloads}':>7} {fmt_s(r.done):>8} {r.ok_rate:>8,.0f} {r.ok:>9,} "
            f"{r.failed:>6} {r.reloads_with_failures:>15} {r.max_gap_ms:>7.0f}  "
            f"{fmt_errors(r.errors_by_kind):<24} {rr.verdict()}")
    last = None
    for hr in health or []:
        s = hr.scenario
        if s.key != last:
            last = s.key
            lines.append(f"\n== {s.title} [{s.key}]   targets: {s.targets()}")
            lines.append(f"{'proxy':<11} {'servers UP':>10} {'checks/s':>8} {'master CPU%':>11} {'tree CPU%':>9} "
                         f"{'ratio':>6}  result")
        r = hr.result
        if r is None:
            lines.append(f"{hr.proxy:<11} run failed: {'; '.join(hr.problems)}")
            continue
        rate = f"{r.checks_per_s:.0f}" if r.checks_observable else "n/a"
        lines.append(
            f"{hr.proxy:<11} {f'{r.servers - r.not_up}/{r.servers}':>10} {rate:>8} "
            f"{r.cpu_master_total:>11.2f} {r.cpu_tree:>9.2f} {fmt_ratio(hr.ratio):>6}  {hr.verdict()}")
    return "\n".join(lines)


def fmt_s(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "n/a"


# --------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------


def cmd_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0] if text else "?"


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(versions: dict[str, str]) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    osname = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    info = {
        "CPU": cpu,
        "CPUs": f"{os.cpu_count()} (usable by this run: {len(os.sched_getaffinity(0))})",
        "Memory": mem,
        "OS": osname,
        "Kernel": platform.release(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "uvloop": _pkg("uvloop"),
        "httptools": _pkg("httptools"),
        "aiohttp": _pkg("aiohttp"),
    }
    info.update(versions)
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------


def markdown(*, rows: list[Row], idle: list[IdleRow], info: dict[str, str], meta: dict[str, str],
             placement: str, command: str, note: str | None, profile_md: str | None,
             rounds_table: str, configs: dict[str, str], reloads: list[ReloadRow] | None = None,
             health: list[HealthRow] | None = None) -> str:
    reloads, health = reloads or [], health or []
    now = meta["date"]
    out = [f"# fleetproxy benchmark results ({now})", ""]
    if note:
        out += [f"> {line}" if line else ">" for line in note.splitlines()] + [""]
    out += ["Produced by `make bench` (`proxy/bench/run.py`); regenerate it rather than editing it.",
            "All numbers come from one run in which every proxy was driven alternately, round by",
            "round, with the same load on the same machine. Compare ratios, not absolute figures.", ""]

    out += ["## Targets (fleetproxy vs HAProxy in the same run)", "",
            "| Scenario | Target | Measured | Result |", "|---|---|---|---|"]
    for r in [*rows, *idle, *reloads, *health]:
        for c in r.checks():
            out.append(f"| {r.scenario.key} | {c.target} | {c.measured} | {'pass' if c.ok else '**FAIL**'} |")
    out.append("")

    out += ["## Throughput and latency", "",
            "req/s counts successful (non-4xx/5xx) responses; medians over rounds; *ratio* and *p99 x* are "
            "medians of the per-round ratios to HAProxy. *CPU* is the proxy's, in % of one core (near 100: "
            "the proxy was the bottleneck); *other* is CPU used meanwhile by everything outside the benchmark "
            "(other work on a shared machine, unattributed kernel time), in % of one core of the machine's "
            f"{os.cpu_count()}. *eff x* compares successful responses per second of proxy CPU time "
            "(informative: it holds even when a proxy was not saturated). LOAD-BOUND marks a proxy for which "
            "the load side had no CPU to spare in most rounds (pinned: wrk + backends used >= 90% of their CPUs; "
            "unpinned: the whole machine was >= 90% busy): its req/s is understated, and a ratio against a "
            "load-bound HAProxy flatters fleetproxy.", "",
            "*srv conns/1k* is how many connections the backends accepted per 1000 responses (about 0 when "
            "a proxy reuses its server connections; 1000 when it opens one per request).", "",
            "| Scenario | Proxy | req/s | min-max | p50 ms | p99 ms | CPU % | other % | srv conns/1k | ratio | p99 x | eff x | errors | result |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in rows:
        lo, hi = r.rps_range
        rps = fmt_num(r.rps) + (f" ({r.mib_s:,.0f} MiB/s)" if r.scenario.path != "/" else "")
        if r.scenario.unit != "req/s":
            rps += f" {r.scenario.unit}"
        out.append(
            f"| {r.scenario.key} | {r.proxy} | {rps} | {fmt_num(lo)}-{fmt_num(hi)} | {fmt_ms(r.p50)} | "
            f"{fmt_ms(r.p99)} | {r.cpu:.0f} | {r.other_cpu:.0f} | {fmt_c1k(r.conns_per_1k)} | {fmt_ratio(r.ratio)} | {fmt_ratio(r.p99_ratio)} | "
            f"{fmt_ratio(r.per_core_ratio)} | {fmt_errors(r.errors)} | {r.verdict()} |")
    out.append("")

    two = [r for r in rows if r.scenario.variant == "2w"]
    if two:
        out += ["### 2 workers vs 2 threads", "",
                f"CPU placement for these rows: {meta.get('placement_2w', '?')}. On a 2-core machine a proxy "
                "with two workers or threads cannot have two cores to itself, so the proxy, wrk (2 threads, "
                "100 connections) and both nginx backends share both cores, the same for both proxies: req/s "
                "is what the whole machine delivers through each proxy, which depends on how much CPU the proxy "
                "spends per request (*eff x*). *CPU %* is the proxy's process tree, up to 200. Scaling from "
                "1 to 2 (same run, different placement, so indicative only):", ""]
        for r in two:
            base = next((b for b in rows if b.proxy == r.proxy and b.scenario.key == "http-keepalive"), None)
            scale = f"{r.rps / base.rps:.2f} x its 1-worker/1-thread req/s" if base and base.rps > 0 else "n/a"
            spread = [x.extra.get("busiest_threads_pct") for x in r.runs.values() if x.extra.get("busiest_threads_pct")]
            how = ""
            if spread:
                how = ("; CPU % of its busiest threads, per round (how the load spread over the "
                       f"{'threads' if r.proxy == REFERENCE else 'worker processes'}): "
                       + ", ".join("/".join(f"{v:.0f}" for v in sp) for sp in spread))
            out.append(f"- {r.proxy}: {fmt_num(r.rps)} req/s at {r.cpu:.0f}% CPU; {scale}{how}")
        out.append("")

    tls_conn = [r for r in rows if r.scenario.kind == "conn" and r.scenario.tls]
    if tls_conn:
        out += ["### TLS handshakes", "",
                "Full handshakes only: the client (`fpbload`, OpenSSL) has no session cache, sends no "
                "ticket and never sets a session, and checks `SSL_session_reused()` after every handshake "
                "(*resumed* must be 0). Each connection sends one `GET /` with `Connection: close` and reads "
                "the complete answer. Both proxies serve the same certificate (checked before the rounds "
                "against the run's certificate). Negotiated with each proxy (first handshake of the last round):",
                "",
                "| Scenario | Proxy | certificate | version | cipher | group | server key | ALPN | handshakes | resumed |",
                "|---|---|---|---|---|---|---|---|--:|--:|"]
        for r in tls_conn:
            x = r.runs[max(r.runs)].extra
            cert = KEY_TYPES.get(r.scenario.frontend.removeprefix("https-"), "?")
            out.append(f"| {r.scenario.key} | {r.proxy} | {cert} | {x.get('tls_version', '?')} | "
                       f"{x.get('tls_cipher', '?')} | {x.get('tls_group', '?')} | {x.get('tls_server_key', '?')} | "
                       f"{x.get('tls_alpn') or '-'} | {r.handshakes:,} | {r.resumed} |")
        out += ["", "Client and server each do an ECDHE exchange; the client also verifies the server's "
                "signature, which for ECDSA P-256 costs more than the server's signing. With one CPU for the "
                "load generator, HAProxy's handshake rate is then bounded by the client (LOAD-BOUND): the "
                "target is checked on handshakes per proxy CPU-second (*eff x*) in that case.", ""]

    if reloads:
        out += ["## Reloads under load", "",
                f"Each proxy is started fresh in its reloadable form and driven by `fpbload` ({meta.get('reloads', '?')}); "
                "HAProxy runs in master-worker mode (`-W -S`) with `expose-fd listeners` on its stats socket "
                "(the new worker takes over the listening sockets) and `hard-stop-after 30s`, and is reloaded "
                "with the master CLI's `reload` (what `systemctl reload` does); fleetproxy is reloaded with "
                "`POST /v1/reload` on its admin socket (what `fleetproxy reload` does), which answers once the "
                "new workers accept. A reload counts as done when the new worker serves (HAProxy: `show proc` "
                "lists a new worker and one more reload). Every request is accounted for: *failed* counts requests "
                "without a complete 200 answer, by class (reset = ECONNRESET, eof_before_response = closed "
                "before any byte of the answer, eof_reused = the same on a keep-alive connection that had "
                "served requests, connect_refused, timeout, ...). *reloads w/ failures* counts reloads followed "
                "by at least one failure before the next reload; *gap* is the longest time without any "
                "completed request.", "",
                "| Scenario | Proxy | reloads ok | reload s (median, max) | req/s | ok | failed | failures by class | "
                "reloads w/ failures | longest gap ms | result |",
                "|---|---|--:|--:|--:|--:|--:|---|--:|--:|---|"]
        for rr in reloads:
            r = rr.result
            if r is None:
                out.append(f"| {rr.scenario.key} | {rr.proxy} | run failed: {'; '.join(rr.problems)} "
                           "| | | | | | | | |")
                continue
            mx = f"{max(r.done):.2f}" if r.done else "n/a"
            out.append(
                f"| {rr.scenario.key} | {rr.proxy} | {r.reloads_ok}/{r.reloads} | {fmt_s(r.done)}, {mx} | "
                f"{r.ok_rate:,.0f} | {r.ok:,} | {r.failed} | {fmt_errors(r.errors_by_kind)} | "
                f"{r.reloads_with_failures} | {r.max_gap_ms:.0f} | {rr.verdict()} |")
        out.append("")
        detail = [rr for rr in reloads if rr.result and (rr.result.failed or rr.result.errors)]
        for rr in detail:
            r = rr.result
            assert r is not None
            out.append(f"- {rr.scenario.key}, {rr.proxy}: failures per reload {r.failed_per_reload}"
                       f" (before the first: {r.failed_before_first}); the first {len(r.first_failures)} "
                       "failures: " + "; ".join(r.failure_offsets())
                       + (". Reload errors: " + "; ".join(r.errors) if r.errors else ""))
        if detail:
            out.append("")

    if health:
        out += ["## Health checks", "",
                f"HAProxy and fleetproxy run at the same time, each with one backend of "
                f"{meta.get('health', '?')}, `rise 2 fall 3`, no traffic. Every server of HAProxy points at "
                "nginx backend 1, every server of fleetproxy at nginx backend 2 (the same address under 1000 "
                "names), so nginx's accept counter gives each proxy's real check rate. Measured after every "
                "server is UP plus one interval; CPU from /proc over the same windows for both. TCP checks: "
                "both stop at SYN, SYN-ACK, RST (half-open: the server never accepts, so the rate is not "
                "countable here). HTTP checks send `GET / HTTP/1.1` with `Host: fpb-check` (HAProxy: "
                "`option httpchk` + `http-check send`) and need a 2xx/3xx status. fleetproxy runs its checks "
                "in the master; *tree* adds its worker(s). The target applies to fleetproxy's master over all "
                "windows together; *ratio* is fleetproxy's master CPU over HAProxy's.", "",
                "| Scenario | Proxy | servers UP | UP after s | checks/s (expected) | CPU % (master) | CPU % (tree) | "
                "ratio | result |",
                "|---|---|--:|--:|--:|--:|--:|--:|---|"]
        for hr in health:
            r = hr.result
            if r is None:
                out.append(f"| {hr.scenario.key} | {hr.proxy} | run failed: {'; '.join(hr.problems)} | | | | | | |")
                continue
            rate = f"{r.checks_per_s:.0f}" if r.checks_observable else "n/a (half-open)"
            out.append(
                f"| {hr.scenario.key} | {hr.proxy} | {r.servers - r.not_up}/{r.servers} | {r.up_after:.1f} | "
                f"{rate} ({r.expected_checks_per_s:.0f}) | {r.cpu_master_total:.2f} | "
                f"{r.cpu_tree:.2f} | {fmt_ratio(hr.ratio)} | {hr.verdict()} |")
        out.append("")

    if idle:
        s = idle[0].scenario
        out += ["## Idle keep-alive connections", "",
                f"{idle[0].result.connections} clients each open a connection, send one request, read the "
                "response and stay idle; RSS of a freshly started proxy (its process tree) is read before "
                f"and {meta.get('idle_settle', '?')} s after the last connection was set up.", "",
                "| Proxy | connections | failed | closed early | RSS before | RSS idle | KiB per conn | ratio | result |",
                "|---|--:|--:|--:|--:|--:|--:|--:|---|"]
        for row in idle:
            r = row.result
            out.append(
                f"| {row.proxy} | {r.connections} | {r.failed} | {r.closed_early} | "
                f"{r.rss_before / 2**20:.1f} MiB | {r.rss_idle / 2**20:.1f} MiB | "
                f"{r.bytes_per_conn / 1024:.2f} | {fmt_ratio(row.ratio)} | {row.verdict()} |")
        out += ["", f"Target: {s.targets()}.", ""]

    out += ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    out += [f"| Load average | {meta['load_start']} at start, {meta['load_end']} at end |", ""]

    out += ["## Method", "",
            f"- Backends: {meta['backends']}, on 127.0.0.1, returning a 21-byte body on `/` and 1 MiB on `/1m`.",
            "- Proxies: HAProxy (nbthread 1), fleetproxy (`global.workers: 1`, access log `none`) and a naive "
            "aiohttp reverse proxy (`proxy/bench/naive_aiohttp.py`), with equivalent configurations: "
            "round robin over both backends, `X-Forwarded-For` appended and `X-Forwarded-Proto` set, the same "
            "timeouts, no logging, HAProxy's default `http-reuse safe`. The generated configurations are at the "
            "end of this file. nginx allows 10^6 requests per connection, so how often a proxy opens "
            "server connections is up to the proxy.",
            f"- Load: wrk, {meta['wrk']}; {meta['rounds']} round(s) x {meta['duration']} s per scenario and "
            f"proxy after a {meta['warmup']} s warm-up; the proxy order rotates every round. TLS handshake "
            "rows use `proxy/bench/fpbload.c` (50 connections, a new connection and full handshake per "
            "request) in the same rounds, since wrk resumes TLS sessions when it reconnects.",
            "- TLS: one throw-away self-signed certificate per key type (ECDSA P-256, RSA 2048), generated for "
            "the run with `cryptography` and given to both proxies as one PEM file (HAProxy: `bind ... ssl crt "
            "FILE alpn http/1.1 ssl-min-ver TLSv1.2`; fleetproxy: `tls: {certificates: [FILE]}`, whose "
            "defaults are ALPN http/1.1 and TLS 1.2 minimum). HAProxy's HTTPS frontends use a backend with "
            "`http-reuse always`, so that, like fleetproxy, it reuses server connections for the first "
            "request of a client connection (every request of the handshake rows); the plain HTTP rows keep "
            "its default `safe`.",
            f"- CPU placement: {placement}. The proxy under test gets a core of its own, so what is "
            "measured is the proxy, not its competition with the load generator; all proxies get the same "
            "placement.",
            "- Every proxy is checked before it is measured: requests reach both backends with the exact bodies "
            "and the 1 MiB body arrives whole.",
            ""]

    out += ["## Command", "", "```", command, "```", "", f"The run took {meta.get('elapsed', '?')} min.", ""]
    if configs:
        out += ["## Generated configurations", ""]
        for name, text in configs.items():
            out += [f"<details><summary>{name}</summary>", "", "```", text.rstrip(), "```", "", "</details>", ""]
    out += ["## Per-round req/s", "", rounds_table, ""]
    if profile_md:
        out += [profile_md, ""]
    return "\n".join(out)


def rounds_markdown(rows: list[Row]) -> str:
    rounds = sorted({rnd for r in rows for rnd in r.runs})
    head = "| Scenario | Proxy | " + " | ".join(f"round {i + 1}" for i in rounds) + " |"
    sep = "|---|---|" + "--:|" * len(rounds)
    lines = [head, sep]
    for r in rows:
        cells = [fmt_num(r.runs[i].ok_rps) if i in r.runs else "" for i in rounds]
        lines.append(f"| {r.scenario.key} | {r.proxy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def today() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
