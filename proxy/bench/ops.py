"""Operations measured under load (issue 4): reloads and active health checks.

:func:`reload_run` starts a fresh, reloadable instance of one proxy, drives it
with fpbload (closed loop, every request accounted for) and reloads it
``count`` times, the documented way (HAProxy: master CLI ``reload`` in
master-worker mode with ``expose-fd listeners``; fleetproxy: ``POST
/v1/reload`` on its admin socket, as ``fleetproxy reload`` does).  Failures are
attributed to the reload that preceded them, from fpbload's 100 ms histogram.

:func:`health_run` starts HAProxy and fleetproxy side by side, each checking
the same number of servers at the same interval, every server of one proxy
pointing at its own nginx backend, so nginx's accept counter tells how many
checks each proxy really made; CPU is read from /proc for each over the same
windows.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field

from backends import Backend
from backends import counters as backend_counters
from harness import BenchError, Placement, Processes, cpu_seconds, process_tree
from loadgen import FpbLoad
from proxies import HealthSpec, Instance, ProxyKind, Topology
from scenarios import Scenario, verify

RELOAD_LEAD = 2.0  # seconds of load before the first reload
RELOAD_TAIL = 3.0  # seconds of load after the last one
RELOAD_TIMEOUT = 30.0  # a reload that takes longer has failed


@dataclass
class ReloadResult:
    reloads: int  # requested
    done: list[float]  # seconds each successful reload took
    errors: list[str]  # reloads that failed, with the reason
    ok: int
    failed: int
    errors_by_kind: dict[str, int]
    duration: float
    max_gap_ms: float
    failed_before_first: int  # failures before the first reload (should be 0 for anyone)
    failed_per_reload: list[int]  # failures between reload i and reload i+1 (or the end)
    first_failures: list[dict]
    server_closed_keepalive: int  # keep-alive: connections the proxy closed after a response
    keepalive: bool
    connections: int
    rate_limit: float
    windows_ms: list[tuple[float, float]] = field(default_factory=list)  # each reload's start, end since t0

    def failure_offsets(self) -> list[str]:
        """The first failures (fpbload keeps 50) grouped by reload and class, with their time
        relative to the end of that reload (when the old workers were told to stop)."""
        groups: dict[tuple[int, str], list[float]] = {}
        for f in self.first_failures:
            prior = [w for w in self.windows_ms if w[0] <= f["t_ms"]]
            if not prior:
                groups.setdefault((0, f["kind"]), []).append(f["t_ms"])
                continue
            groups.setdefault((len(prior), f["kind"]), []).append(f["t_ms"] - prior[-1][1])
        out = []
        for (i, kind), offs in groups.items():
            lo, hi = f"{min(offs):+.0f}", f"{max(offs):+.0f}"
            where = "before any reload" if i == 0 else (
                f"reload {i}, {lo}" + (f"..{hi}" if hi != lo else "") + " ms from its end")
            out.append(f"{kind} x{len(offs)} ({where})")
        return out

    @property
    def ok_rate(self) -> float:
        return self.ok / self.duration if self.duration else float("nan")

    @property
    def reloads_ok(self) -> int:
        return len(self.done)

    @property
    def reloads_with_failures(self) -> int:
        return sum(1 for n in self.failed_per_reload if n)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ok_rate"] = self.ok_rate
        return d


def reload_run(s: Scenario, kind: ProxyKind, procs: Processes, placement: Placement,
               backends: list[str], fpbload: FpbLoad, *, count: int, interval: float,
               rate: float = 0, log=print) -> ReloadResult:
    topo = Topology(backends, ("http",))
    inst = kind.start(procs, placement, topo, tag=f"-{s.key}")
    try:
        problems = verify(inst.ports["http"], "http")
        if problems:
            raise BenchError(f"{kind.name} ({s.key}) does not forward: {'; '.join(problems)}")
        # fpbload runs until told to stop (SIGUSR1) RELOAD_TAIL after the last reload; its own
        # limit only bounds a run whose reloads all take their full timeout.
        limit = RELOAD_LEAD + count * (interval + RELOAD_TIMEOUT) + RELOAD_TAIL
        load = fpbload.spawn(procs, inst.ports["http"], limit, keepalive=s.keepalive, rate=rate,
                             name=f"fpb-fpbload-{s.key}-{kind.name}")
        try:
            started = time.monotonic()
            starts: list[float] = []
            ends: list[float] = []
            done: list[float] = []
            errors: list[str] = []
            for i in range(count):
                target = started + RELOAD_LEAD + i * interval
                time.sleep(max(0.0, target - time.monotonic()))
                if not load.alive():
                    raise BenchError(f"fpbload exited early: {load.tail()}")
                starts.append(time.monotonic())
                try:
                    done.append(inst.reload(timeout=RELOAD_TIMEOUT))
                    ends.append(time.monotonic())
                except BenchError as exc:
                    ends.append(time.monotonic())
                    errors.append(f"reload {i + 1}: {exc}")
                    log(f"   reload {i + 1} of {kind.name} FAILED: {exc}")
                if not inst.proc.alive():
                    errors.append(f"{kind.name} exited after reload {i + 1}: {inst.proc.tail()}")
                    break
            time.sleep(RELOAD_TAIL)
            if not load.alive():
                raise BenchError(f"fpbload exited early: {load.tail()}")
            load.popen.send_signal(signal.SIGUSR1)
            out, _ = load.popen.communicate(timeout=fpbload.timeout_ms / 1000 + 30)
        finally:
            procs.stop(load)
        try:
            d = json.loads(out)
        except ValueError:
            raise BenchError(f"fpbload gave no result: {out[-500:]!r} {load.tail()}") from None
    finally:
        procs.stop(inst.proc, timeout=40)  # old workers may linger until hard-stop-after
    # Attribute each failure to the last reload begun before it (fpbload keeps the time of
    # up to 10000 failures; beyond that, its 100 ms histogram says when).
    t0, bucket = d["t0_monotonic"], d["bucket_ms"] / 1000
    per_reload = [0] * len(starts)
    before = 0

    def attribute(t: float, n: int = 1) -> None:
        nonlocal before
        i = sum(1 for st in starts if st <= t) - 1
        if i < 0:
            before += n
        else:
            per_reload[i] += n

    events = d["first_failures"]
    if len(events) == d["failed"]:
        for f in events:
            attribute(t0 + f["t_ms"] / 1000)
    else:
        for b, n in enumerate(d["failed_per_bucket"]):
            if n:
                attribute(t0 + (b + 0.5) * bucket, n)
    return ReloadResult(
        reloads=count, done=done, errors=errors, ok=d["ok"], failed=d["failed"],
        errors_by_kind={k: v for k, v in d["errors"].items() if v}, duration=d["duration_s"],
        max_gap_ms=d["max_gap_ms"], failed_before_first=before, failed_per_reload=per_reload,
        first_failures=d["first_failures"][:50], server_closed_keepalive=d["server_closed_keepalive"],
        keepalive=s.keepalive, connections=fpbload.connections, rate_limit=rate,
        windows_ms=[((a - t0) * 1000, (b - t0) * 1000) for a, b in zip(starts, ends, strict=True)],
    )


# --------------------------------------------------------------------------
# Health checks
# --------------------------------------------------------------------------


@dataclass
class HealthResult:
    servers: int
    inter: str
    http: bool
    up_after: float  # seconds from start until every server was UP
    windows: list[dict] = field(default_factory=list)  # per window: cpu_master, cpu_tree, checks_per_s
    not_up: int = 0  # servers not UP at the end
    expected_checks_per_s: float = 0.0
    checks_observable: bool = True  # False: half-open TCP checks, which the server never accepts

    @property
    def rate_ok(self) -> bool:
        """Checks ran at the configured rate (+-20%), or cannot be counted."""
        e = self.expected_checks_per_s
        return not self.checks_observable or 0.8 * e <= self.checks_per_s <= 1.2 * e

    def _median(self, key: str) -> float:
        vals = [w[key] for w in self.windows]
        return statistics.median(vals) if vals else float("nan")

    @property
    def cpu_master(self) -> float:
        return self._median("cpu_master")

    @property
    def cpu_tree(self) -> float:
        return self._median("cpu_tree")

    @property
    def checks_per_s(self) -> float:
        return self._median("checks_per_s")

    @property
    def cpu_master_total(self) -> float:
        """Over all windows together (the most precise figure: more clock ticks)."""
        secs = sum(w["seconds"] for w in self.windows)
        return 100 * sum(w["cpu_master_s"] for w in self.windows) / secs if secs else float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(cpu_master=self.cpu_master, cpu_tree=self.cpu_tree, checks_per_s=self.checks_per_s,
                 cpu_master_total=self.cpu_master_total)
        return d


def _seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def health_run(s: Scenario, kinds: dict[str, ProxyKind], procs: Processes, placement: Placement,
               backends: list[Backend], *, servers: int, inter: str, windows: int, window: float,
               log=print) -> dict[str, HealthResult]:
    """Every proxy in ``kinds`` at once, proxy *i* checking ``servers`` servers on backend *i*."""
    if len(kinds) > len(backends):
        raise BenchError(f"{len(kinds)} proxies need as many backends for separate check counts")
    insts: dict[str, Instance] = {}
    results: dict[str, HealthResult] = {}
    try:
        t_start = time.monotonic()
        for i, (name, kind) in enumerate(kinds.items()):
            spec = HealthSpec(servers=servers, inter=inter, http=s.http_checks, target=i)
            topo = Topology([b.address for b in backends], ("health",), health=spec)
            insts[name] = kind.start(procs, placement, topo, tag=f"-{s.key}")
            results[name] = HealthResult(servers=servers, inter=inter, http=s.http_checks, up_after=-1,
                                         expected_checks_per_s=servers / _seconds(inter),
                                         checks_observable=s.http_checks or not kind.half_open_tcp_checks)
        # Wait until every server is UP on every proxy, then one more interval so that the
        # initial spread of first checks is over and both run in their steady state.
        deadline = time.monotonic() + 60
        pending = set(insts)
        while pending:
            for name in list(pending):
                try:
                    states = insts[name].server_states("fpb_health_back")
                except (OSError, BenchError):
                    continue  # fleetproxy opens its sockets after its listeners: not yet
                if len(states) == servers and all(v.startswith("UP") for v in states.values()):
                    results[name].up_after = time.monotonic() - t_start
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise BenchError(f"servers not all UP after 60 s on {', '.join(sorted(pending))}")
            time.sleep(0.5)
        time.sleep(_seconds(inter))
        for w in range(windows):
            snap = _health_snapshot(insts, backends)
            t0 = time.monotonic()
            time.sleep(window)
            secs = time.monotonic() - t0
            after = _health_snapshot(insts, backends)
            for name in insts:
                m0, t0c, acc0 = snap[name]
                m1, t1c, acc1 = after[name]
                results[name].windows.append({
                    "seconds": secs, "cpu_master_s": m1 - m0, "cpu_master": 100 * (m1 - m0) / secs,
                    "cpu_tree": 100 * (t1c - t0c) / secs, "checks_per_s": (acc1 - acc0) / secs,
                })
            log(f"   {s.key:<15} window {w + 1}/{windows}: " + "; ".join(
                f"{n} master CPU {r.windows[-1]['cpu_master']:.1f}% (tree {r.windows[-1]['cpu_tree']:.1f}%), "
                f"{r.windows[-1]['checks_per_s']:.0f} checks/s" for n, r in results.items()))
        for name, inst in insts.items():
            states = inst.server_states("fpb_health_back")
            results[name].not_up = servers - sum(1 for v in states.values() if v.startswith("UP"))
    finally:
        for inst in insts.values():
            procs.stop(inst.proc)
    return results


def _health_snapshot(insts: dict[str, Instance], backends: list[Backend]) -> dict[str, tuple[float, float, int]]:
    """Per proxy: master CPU seconds, process-tree CPU seconds, accepts on its backend."""
    out = {}
    for i, (name, inst) in enumerate(insts.items()):
        accepts, _ = backend_counters([backends[i]])
        out[name] = (cpu_seconds([inst.pid]), cpu_seconds(process_tree(inst.pid)), accepts)
    return out
