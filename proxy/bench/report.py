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

from loadgen import IdleResult, WrkResult
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

    def checks(self) -> list[Check]:
        """Every target that applies; only the subject has targets."""
        if self.proxy != SUBJECT:
            return []
        s = self.scenario
        out = []
        if s.min_ratio is not None:
            out.append(Check(f"req/s >= {s.min_ratio:g} x HAProxy", f"{fmt_ratio(self.ratio)} x",
                             self.ratio >= s.min_ratio))
        if s.max_p99_ratio is not None:
            out.append(Check(f"p99 <= {s.max_p99_ratio:g} x HAProxy", f"{fmt_ratio(self.p99_ratio)} x",
                             self.p99_ratio <= s.max_p99_ratio))
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


def console_table(rows: list[Row], idle: list[IdleRow]) -> str:
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
    return "\n".join(lines)


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
             rounds_table: str, configs: dict[str, str]) -> str:
    now = meta["date"]
    out = [f"# fleetproxy benchmark results ({now})", ""]
    if note:
        out += [f"> {line}" if line else ">" for line in note.splitlines()] + [""]
    out += ["Produced by `make bench` (`proxy/bench/run.py`); regenerate it rather than editing it.",
            "All numbers come from one run in which every proxy was driven alternately, round by",
            "round, with the same load on the same machine. Compare ratios, not absolute figures.", ""]

    out += ["## Targets (fleetproxy vs HAProxy in the same run)", "",
            "| Scenario | Target | Measured | Result |", "|---|---|---|---|"]
    for r in [*rows, *idle]:
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
        out.append(
            f"| {r.scenario.key} | {r.proxy} | {rps} | {fmt_num(lo)}-{fmt_num(hi)} | {fmt_ms(r.p50)} | "
            f"{fmt_ms(r.p99)} | {r.cpu:.0f} | {r.other_cpu:.0f} | {fmt_c1k(r.conns_per_1k)} | {fmt_ratio(r.ratio)} | {fmt_ratio(r.p99_ratio)} | "
            f"{fmt_ratio(r.per_core_ratio)} | {fmt_errors(r.errors)} | {r.verdict()} |")
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
            f"proxy after a {meta['warmup']} s warm-up; the proxy order rotates every round.",
            f"- CPU placement: {placement}. The proxy under test gets a core of its own, so what is "
            "measured is the proxy, not its competition with the load generator; all proxies get the same "
            "placement.",
            "- Every proxy is checked before it is measured: requests reach both backends with the exact bodies "
            "and the 1 MiB body arrives whole.",
            ""]

    out += ["## Command", "", "```", command, "```", ""]
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
