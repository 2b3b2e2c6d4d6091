#!/usr/bin/env python3
"""fleetproxy vs HAProxy (and a naive aiohttp proxy), in the same run: ``make bench``.

Starts two nginx backends, HAProxy (nbthread 1), fleetproxy (1 worker) and
the naive aiohttp proxy with equivalent configurations, all on 127.0.0.1 with
free ports, and drives them with wrk (or fpbload), proxy after proxy, round
after round; then reloads under load, health-check CPU and idle connections.
Prints the medians and the ratios to HAProxy with a verdict against the
targets of issues 2, 4 and 6, and writes them to ``proxy/bench/RESULTS.md``.

    python proxy/bench/run.py                 # the full run (about 20 minutes)
    python proxy/bench/run.py --quick         # a smoke run (about 3 minutes), writes out/
    python proxy/bench/run.py --profile       # always add a py-spy profile of fleetproxy
    python proxy/bench/run.py --scenarios http-keepalive,tcp --proxies haproxy,fleetproxy
    python proxy/bench/run.py --scenarios reload-close,health-tcp,tls-handshake-ecdsa --quick

Work files (generated configs, logs, raw wrk output) go to a temporary
``fpb-*`` directory, removed afterwards unless ``--keep-workdir``; raw results
and profiles go to ``proxy/bench/out/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import certs
from backends import counters as backend_counters
from backends import find_nginx, start_backends
from harness import (
    BenchError,
    Placement,
    Processes,
    free_ports,
    process_tree,
    raise_nofile,
    thread_cpu_seconds,
)
from loadgen import FpbLoad, IdleResult, Wrk, WrkResult, build_fpbload, idle_connections
from ops import RELOAD_LEAD, RELOAD_TAIL, HealthResult, ReloadResult, health_run, reload_run
from proxies import (
    REFERENCE,
    SUBJECT,
    TLS_FRONTENDS,
    Instance,
    ProxyKind,
    Settings,
    Topology,
    proxy_kinds,
)
from report import (
    HealthRow,
    IdleRow,
    ReloadRow,
    Row,
    cmd_version,
    console_table,
    loadavg,
    machine_info,
    markdown,
    rounds_markdown,
    today,
)
from scenarios import ROUND_KINDS, SCENARIOS, Scenario, verify

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RESULTS = BENCH_DIR / "RESULTS.md"
REPO = BENCH_DIR.parent.parent
FULL = {"rounds": 5, "duration": 8, "warmup": 2, "idle_conns": 10000, "idle_settle": 3.0,
        "reloads": 20, "reload_interval": 1.0, "health_windows": 4, "health_window": 5.0}
QUICK = {"rounds": 1, "duration": 2, "warmup": 1, "idle_conns": 1000, "idle_settle": 1.0,
         "reloads": 5, "reload_interval": 1.0, "health_windows": 2, "health_window": 2.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        )
    ap.add_argument("--rounds", type=int, help="rounds; every proxy runs every scenario once per round "
                    f"(default {FULL['rounds']}, --quick {QUICK['rounds']})")
    ap.add_argument("--duration", type=int, help="seconds per wrk run "
                    f"(default {FULL['duration']}, --quick {QUICK['duration']})")
    ap.add_argument("--warmup", type=int, help="seconds of unmeasured load per proxy and scenario before "
                    f"the rounds, 0 for none (default {FULL['warmup']}, --quick {QUICK['warmup']})")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--idle-conns", type=int, help="connections in the idle-RSS scenario "
                    f"(default {FULL['idle_conns']}, --quick {QUICK['idle_conns']})")
    ap.add_argument("--idle-settle", type=float, help="seconds idle before RSS is read "
                    f"(default {FULL['idle_settle']:g}, --quick {QUICK['idle_settle']:g})")
    ap.add_argument("--reloads", type=int, help="reloads per reload scenario and proxy; the scenarios' "
                    f"targets are for 20 (default {FULL['reloads']}, --quick {QUICK['reloads']})")
    ap.add_argument("--reload-interval", type=float, help="seconds from one reload's start to the next "
                    f"(default {FULL['reload_interval']:g}; later when a reload takes longer)")
    ap.add_argument("--reload-rate", type=float, default=0.0,
                    help="reload scenarios: new requests per second at most (default 0: as fast as the "
                         "proxy answers, closed loop)")
    ap.add_argument("--reload-connections", type=int, default=50,
                    help="reload scenarios: concurrent connections (default 50)")
    ap.add_argument("--health-servers", type=int, default=1000, help="servers per health scenario (default 1000)")
    ap.add_argument("--health-inter", default="2s", help="check interval (default 2s)")
    ap.add_argument("--health-windows", type=int, help="measurement windows per health scenario "
                    f"(default {FULL['health_windows']}, --quick {QUICK['health_windows']})")
    ap.add_argument("--health-window", type=float, help="seconds per window "
                    f"(default {FULL['health_window']:g}, --quick {QUICK['health_window']:g})")
    ap.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS),
                    help="comma-separated, from: " + ", ".join(s.key for s in SCENARIOS) + " (default: all)")
    ap.add_argument("--proxies", default="haproxy,fleetproxy,aiohttp", help="comma-separated, from: haproxy, fleetproxy, aiohttp (default: all)")
    ap.add_argument("--pin", default="auto",
                    help="CPU placement: auto (proxy alone on the last CPU), none, or PROXY:LOAD CPU lists like 1:0")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (about 3 minutes): fewer, shorter rounds, fewer idle connections, 5 reloads; "
                         "results to out/RESULTS-quick.md")
    ap.add_argument("--profile", dest="profile", action="store_const", const="yes",
                    help="after the rounds, profile fleetproxy with py-spy during an HTTP keep-alive run "
                         "(default: when fleetproxy missed a throughput or latency target; never with --quick)")
    ap.add_argument("--no-profile", dest="profile", action="store_const", const="no", help="never profile")
    ap.add_argument("--profile-only", action="store_true", help="skip the measured rounds, only profile")
    ap.add_argument("--profile-duration", type=int, default=10, help="seconds per py-spy run (default 10)")
    ap.add_argument("--profile-python", action="store_true",
                    help="Python frames only (default: py-spy --native, which also shows the C functions and "
                         "system calls of uvloop, httptools and libc)")
    ap.add_argument("--results", type=Path, default=None,
                    help=f"Markdown results file (default {RESULTS.relative_to(REPO)}, "
                         "or out/RESULTS-quick.md with --quick)")
    ap.add_argument("--no-results", action="store_true", help="write no Markdown file")
    ap.add_argument("--note", default=None, help="a note to put at the top of the results file")
    ap.add_argument("--nginx", default=None, help="nginx binary (default /usr/sbin/nginx; Python backend if absent)")
    ap.add_argument("--python-backend", action="store_true", help="use the Python backend even if nginx exists")
    ap.add_argument("--haproxy", default=None, help="haproxy binary")
    ap.add_argument("--wrk", default="/usr/bin/wrk", help="wrk binary")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if args.profile is None:
        args.profile = "no" if args.quick else "auto"
    if args.profile_only:
        args.profile = "yes"
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.duration, args.profile_duration) < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("durations are whole seconds >= 1 (wrk's unit), rounds >= 1")
    if args.results is None:
        args.results = OUT_DIR / "RESULTS-quick.md" if args.quick else RESULTS
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def describe(r: WrkResult, unit: str = "req/s") -> str:
    err = f" ERRORS {r.errors}" if r.error_total else ""
    return (f"{r.ok_rps:>9,.0f} {unit}  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
            f"CPU proxy {r.cpu_pct:3.0f}% load {r.load_cpu_pct:3.0f}% other {r.other_cpu_pct:3.0f}%"
            f"{' LOAD-BOUND' if r.load_bound else ''}{err}")


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.placement = Placement.choose(args.pin)
        self.settings = Settings(maxconn=max(20000, args.idle_conns + 1000),
                                 nofile=raise_nofile(2 * max(20000, args.idle_conns + 1000) + 1000))
        # Instance sets: "base" (1 worker / nbthread 1, the proxy alone on a CPU) and "2w".
        self.variants: dict[str, tuple[Settings, Placement]] = {
            "base": (self.settings, self.placement),
            "2w": (replace(self.settings, threads=2), Placement.choose_multi(args.pin, 2)),
        }
        if self.placement.load is not None:
            # The harness itself (and what it runs: checks, reload requests) stays off the proxy's CPU.
            os.sched_setaffinity(0, self.placement.load)
        if any(s.kind == "idle" for s in SCENARIOS) and args.idle_conns + 500 > self.settings.nofile:
            log(f"warning: the file-descriptor limit is {self.settings.nofile}; {args.idle_conns} idle "
                "connections need more (raise the hard limit, or use --idle-conns)")
        kinds = proxy_kinds(self.settings, args.haproxy)
        wanted = [p.strip() for p in args.proxies.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in kinds]
        if unknown:
            raise BenchError(f"unknown proxies {unknown}; known: {', '.join(kinds)}")
        if REFERENCE not in wanted:
            log(f"note: {REFERENCE} is not in --proxies, so there are no ratios")
        self.kinds: dict[str, ProxyKind] = {}
        for name in wanted:
            why = kinds[name].available()
            if why:
                log(f"skipping {name}: {why}")
            else:
                self.kinds[name] = kinds[name]
        keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
        known = {s.key: s for s in SCENARIOS}
        bad = [k for k in keys if k not in known]
        if bad:
            raise BenchError(f"unknown scenarios {bad}; known: {', '.join(known)}")
        self.scenarios = [known[k] for k in keys]
        if not Path(args.wrk).exists() and any(s.kind == "wrk" for s in self.scenarios):
            raise BenchError(f"{args.wrk} not found (apt-get install wrk)")
        self.wrk = Wrk(args.wrk, self.placement, procs.workdir, threads=args.wrk_threads,
                       connections=args.connections)
        self.fpbload: FpbLoad | None = None
        self.instances: dict[tuple[str, str], Instance] = {}  # (variant, proxy) -> instance
        self.configs: dict[str, str] = {}
        self.problems: dict[tuple[str, str], list[str]] = {}
        self.runs: dict[tuple[str, str], dict[int, WrkResult]] = {}
        self.idle: dict[str, IdleResult] = {}
        self.reloads: dict[tuple[str, str], ReloadResult] = {}
        self.reload_problems: dict[tuple[str, str], list[str]] = {}
        self.health: dict[tuple[str, str], HealthResult] = {}
        self.health_problems: dict[str, list[str]] = {}
        self.died: set[tuple[str, str]] = set()
        self.raw_dir = procs.workdir / "wrk"
        self.raw_dir.mkdir()
        self.topo: Topology | None = None
        self.certs: dict[str, Path] = {}
        self._backend_cpus: frozenset[int] | None = self.placement.backend

    def estimate(self) -> float:
        """Roughly how long the selected scenarios take, in seconds (no profile)."""
        a = self.args
        total = 10.0  # start-up, checks
        for s in self.scenarios:
            n = len(self.proxies_for(s))
            if s.kind in ROUND_KINDS:
                total += n * (a.rounds * (a.duration + 0.5) + a.warmup + 0.5)
            elif s.kind == "reload":
                total += n * (RELOAD_LEAD + a.reloads * max(a.reload_interval, 1.0) + RELOAD_TAIL + 5)
            elif s.kind == "health":
                total += 15 + a.health_windows * a.health_window
            elif s.kind == "idle":
                total += n * (a.idle_conns / 1000 + 2 * a.idle_settle + 3)
        return total

    def proxies_for(self, s: Scenario) -> list[str]:
        return [name for name, kind in self.kinds.items()
                if kind.supports(s.frontend) and (s.proxies is None or name in s.proxies)]

    def round_scenarios(self, variant: str | None = None) -> list[Scenario]:
        return [s for s in self.scenarios if s.kind in ROUND_KINDS and (variant is None or s.variant == variant)]

    # -- set-up ------------------------------------------------------------------------
    def start(self) -> None:
        nginx = None if self.args.python_backend else find_nginx(self.args.nginx)
        self.backends, self.backend_kind = start_backends(
            self.procs, self.placement, free_ports(2), nginx)
        if nginx:
            self.backend_kind = cmd_version([nginx, "-v"]).replace("nginx version: ", "")
            self.configs["nginx (backend 1)"] = (self.procs.workdir / "fpb-backend1" / "nginx.conf").read_text()
        addresses = [b.address for b in self.backends]
        self.wrk.backend_pids = [b.proc.pid for b in self.backends]
        self.wrk.counters = lambda: backend_counters(self.backends)
        log(f"backends: {self.backend_kind} on {', '.join(addresses)}")
        log(f"CPU placement: {self.placement.describe()}")
        if self.round_scenarios("2w"):
            log(f"CPU placement for 2 workers / 2 threads: {self.variants['2w'][1].describe()}")
        if any(s.kind in ("conn", "reload") for s in self.scenarios):
            try:
                fpb = build_fpbload(self.procs.workdir)
            except BenchError as exc:
                skipped = [s.key for s in self.scenarios if s.kind in ("conn", "reload")]
                log(f"skipping {', '.join(skipped)}: {exc}")
                self.scenarios = [s for s in self.scenarios if s.kind not in ("conn", "reload")]
            else:
                self.fpbload = FpbLoad(fpb, self.placement, connections=self.args.connections,
                                       backend_pids=self.wrk.backend_pids, counters=self.wrk.counters)
        tls = sorted({s.frontend for s in self.scenarios if s.tls})
        for fe in tls:
            self.certs[fe] = certs.generate(fe.removeprefix("https-"), self.procs.workdir)
        base_frontends = ("http", "tcp", *[fe for fe in TLS_FRONTENDS if fe in tls])
        self.topo = Topology(addresses, base_frontends, certs=self.certs)
        for variant, (settings, placement) in self.variants.items():
            scenarios = [] if self.args.profile_only else self.round_scenarios(variant)
            if not scenarios and not (variant == "base" and self.args.profile == "yes"):
                continue
            kinds = proxy_kinds(settings, self.args.haproxy)
            needed = {name for s in scenarios for name in self.proxies_for(s)}
            if variant == "base" and self.args.profile == "yes":
                needed.add(SUBJECT)
            topo = self.topo if variant == "base" else Topology(addresses, ("http",))
            for name in self.kinds:
                if name not in needed:
                    continue
                inst = kinds[name].start(self.procs, placement, topo, tag="" if variant == "base" else f"-{variant}")
                self.instances[(variant, name)] = inst
                label = name if variant == "base" else f"{name} ({variant})"
                self.configs[label] = (inst.config.read_text() if name != "aiohttp"
                                       else " ".join(shlex.quote(a) for a in inst.proc.popen.args))
                log(f"{label}: pid {inst.pid}, " + ", ".join(f"{f} :{p}" for f, p in inst.ports.items()))
            for s in scenarios:
                for name in self.proxies_for(s):
                    inst = self.instances[(variant, name)]
                    problems = verify(inst.ports[s.frontend], s.frontend, cert=self.certs.get(s.frontend))
                    if problems:
                        log(f"CHECK FAILED {s.key} {name}: {'; '.join(problems)}")
                    self.problems[(s.key, name)] = problems

    def alive(self, variant: str, name: str) -> bool:
        inst = self.instances[(variant, name)]
        if inst.proc.alive():
            return True
        if (variant, name) not in self.died:
            self.died.add((variant, name))
            log(f"{name} ({variant}, pid {inst.pid}) has exited with {inst.proc.popen.returncode}:\n"
                f"{inst.proc.tail()}")
        return False

    def pin_backends(self, cpus: frozenset[int] | None) -> None:
        """Move the running backends (nginx master and workers) to ``cpus``."""
        if cpus is None or cpus == self._backend_cpus:
            return
        for b in self.backends:
            for pid in process_tree(b.proc.pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, cpus)
        self._backend_cpus = cpus

    # -- measured rounds ---------------------------------------------------------------
    def run_one(self, s: Scenario, name: str, duration: float) -> WrkResult:
        inst = self.instances[(s.variant, name)]
        placement = self.variants[s.variant][1]
        self.pin_backends(placement.backend)
        before = thread_cpu_seconds(process_tree(inst.pid)) if s.variant != "base" else None
        t0 = time.monotonic()
        if s.kind == "conn":
            assert self.fpbload is not None
            r = self.fpbload.run(inst.ports[s.frontend], int(duration), inst.pid, tls=s.tls,
                                 keepalive=s.keepalive, sni=certs.NAME if s.tls else None,
                                 placement=placement, connections=s.connections)
        else:
            r = self.wrk.run(inst.url(s.frontend, s.path), duration, s.headers, proxy_pid=inst.pid,
                             placement=placement, threads=s.wrk_threads, connections=s.connections)
        if before is not None:
            # How the work spread over the proxy's threads (HAProxy) or processes (fleetproxy).
            secs = time.monotonic() - t0
            after = thread_cpu_seconds(process_tree(inst.pid))
            busy = sorted((100 * (v - before.get(k, 0.0)) / secs for k, v in after.items()), reverse=True)
            r.extra["busiest_threads_pct"] = [round(x, 1) for x in busy[:4]]
        return r

    def rounds(self) -> None:
        scenarios = self.round_scenarios()
        if not scenarios:
            return
        if self.args.warmup > 0:
            log(f"warm-up: {self.args.warmup:g} s per scenario and proxy")
            for s in scenarios:
                for name in self.proxies_for(s):
                    if self.alive(s.variant, name):
                        self.run_one(s, name, self.args.warmup)
        for rnd in range(self.args.rounds):
            log(f"-- round {rnd + 1}/{self.args.rounds} (load average {loadavg()})")
            for s in scenarios:
                names = self.proxies_for(s)
                k = rnd % len(names) if names else 0
                for name in names[k:] + names[:k]:
                    if not self.alive(s.variant, name):
                        continue
                    r = self.run_one(s, name, self.args.duration)
                    self.runs.setdefault((s.key, name), {})[rnd] = r
                    (self.raw_dir / f"{s.key}-{name}-r{rnd + 1}.txt").write_text(r.raw)
                    log(f"   {s.key:<19} {name:<11} {describe(r, s.unit)}")
        self.pin_backends(self.placement.backend)

    # -- reloads under load --------------------------------------------------------------
    def reload_runs(self) -> None:
        scenarios = [s for s in self.scenarios if s.kind == "reload"]
        if not scenarios:
            return
        assert self.fpbload is not None
        kinds = proxy_kinds(replace(self.settings, reloadable=True), self.args.haproxy)
        load = replace(self.fpbload, connections=self.args.reload_connections)
        for s in scenarios:
            for name in self.proxies_for(s):
                log(f"   {s.key:<19} {name:<11} {self.args.reloads} reloads, one every "
                    f"{self.args.reload_interval:g} s, under load ...")
                try:
                    res = reload_run(s, kinds[name], self.procs, self.placement, self.topo.backends, load,
                                     count=self.args.reloads, interval=self.args.reload_interval,
                                     rate=self.args.reload_rate, log=log)
                except BenchError as exc:
                    log(f"   {s.key:<19} {name:<11} FAILED: {exc}")
                    self.reload_problems[(s.key, name)] = [str(exc)]
                    continue
                self.reloads[(s.key, name)] = res
                errs = ", ".join(f"{k} {v}" for k, v in res.errors_by_kind.items()) or "none"
                log(f"   {s.key:<19} {name:<11} reloads ok {res.reloads_ok}/{res.reloads} "
                    f"(median {_median(res.done):.2f} s); {res.ok:,} ok, {res.failed} failed ({errs}) at "
                    f"{res.ok_rate:,.0f} req/s; longest gap {res.max_gap_ms:.0f} ms")

    # -- health checks -----------------------------------------------------------------
    def health_runs(self) -> None:
        scenarios = [s for s in self.scenarios if s.kind == "health"]
        if not scenarios:
            return
        all_kinds = proxy_kinds(replace(self.settings, admin_sockets=True), self.args.haproxy)
        for s in scenarios:
            kinds = {name: all_kinds[name] for name in self.proxies_for(s)}
            log(f"   {s.key:<19} {' and '.join(kinds)} together, {self.args.health_servers} servers each, "
                f"inter {self.args.health_inter} ...")
            try:
                res = health_run(s, kinds, self.procs, self.placement, self.backends,
                                 servers=self.args.health_servers, inter=self.args.health_inter,
                                 windows=self.args.health_windows, window=self.args.health_window, log=log)
            except BenchError as exc:
                log(f"   {s.key:<19} FAILED: {exc}")
                self.health_problems[s.key] = [str(exc)]
                continue
            for name, r in res.items():
                self.health[(s.key, name)] = r

    # -- idle connections ----------------------------------------------------------------
    def idle_runs(self) -> None:
        for s in self.scenarios:
            if s.kind != "idle":
                continue
            for name in self.proxies_for(s):
                # A fresh instance: earlier traffic must not have pre-grown its heap.
                inst = self.kinds[name].start(self.procs, self.placement, self.topo, tag="-idle")
                try:
                    problems = verify(inst.ports[s.frontend], s.frontend)
                    self.problems[(s.key, name)] = problems
                    if problems:
                        log(f"CHECK FAILED {s.key} {name}: {'; '.join(problems)}")
                    res = idle_connections(self.procs, self.placement, inst.ports[s.frontend], inst.pid,
                                           self.args.idle_conns, settle=self.args.idle_settle)
                    self.idle[name] = res
                    log(f"   {s.key:<19} {name:<11} {res.bytes_per_conn / 1024:6.2f} KiB/conn "
                        f"(RSS {res.rss_before / 2**20:.1f} -> {res.rss_idle / 2**20:.1f} MiB, "
                        f"{res.failed} failed, {res.closed_early} closed early, "
                        f"set up in {res.open_seconds:.1f} s)")
                    if not inst.proc.alive():
                        self.died.add(("idle", name))
                        log(f"{name} exited during the idle test:\n{inst.proc.tail()}")
                finally:
                    self.procs.stop(inst.proc)

    # -- profile -------------------------------------------------------------------------
    def want_profile(self) -> bool:
        """--profile: yes; --no-profile: no; by default when a wrk target of the subject was missed."""
        mode = self.args.profile
        if mode != "auto":
            return mode == "yes"
        rows = self.rows()[0]
        missed = [r.scenario.key for r in rows
                  if r.proxy == SUBJECT and r.scenario.variant == "base" and r.scenario.kind == "wrk"
                  and not r.scenario.tls and not all(c.ok for c in r.checks())]
        if not missed:
            return False
        from pyspy import find_pyspy

        if find_pyspy() is None or ("base", SUBJECT) not in self.instances or not self.alive("base", SUBJECT):
            log("targets missed, but no profile: py-spy or a running fleetproxy is missing")
            return False
        log(f"targets missed in {', '.join(missed)}: profiling (--no-profile to skip)")
        return True

    def profile(self):
        from pyspy import find_pyspy, profile

        pyspy = find_pyspy()
        if pyspy is None:
            raise BenchError("py-spy not found: pip install py-spy (it is in proxy[bench])")
        inst = self.instances.get(("base", SUBJECT))
        if inst is None or not self.alive("base", SUBJECT):
            raise BenchError(f"--profile needs a running {SUBJECT} (is it in --proxies?)")
        stem = f"profile-{time.strftime('%Y%m%d-%H%M%S')}-{SUBJECT}-http-keepalive"
        # The data path runs in the worker processes (children of the master), which the
        # master starts after binding its listeners: wait for one.
        target = inst.pid
        deadline = time.monotonic() + 20
        while target == inst.pid and time.monotonic() < deadline:
            for pid in process_tree(inst.pid)[1:]:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"fleetproxy.process" in f.read():
                            target = pid
                            break
                except OSError:
                    continue
            else:
                time.sleep(0.1)
        if target == inst.pid:
            log(f"no {SUBJECT} worker process found: profiling the master")
        log(f"profiling {SUBJECT} worker (pid {target}) with py-spy for 2 x {self.args.profile_duration:g} s")
        prof = profile(pyspy=pyspy, pid=target, wrk=self.wrk, url=inst.url("http", "/"),
                       duration=self.args.profile_duration, placement=self.placement, procs=self.procs,
                       out_dir=OUT_DIR, stem=stem, native=not self.args.profile_python)
        log(f"profile: {prof.svg}\n         {prof.collapsed}\n         {prof.top_txt}")
        log(prof.top_txt.read_text())
        return prof

    # -- results -------------------------------------------------------------------------
    def rows(self) -> tuple[list[Row], list[IdleRow], list[ReloadRow], list[HealthRow]]:
        rows, idle, reloads, health = [], [], [], []
        for s in self.scenarios:
            for name in self.proxies_for(s):
                if s.kind in ROUND_KINDS:
                    runs = self.runs.get((s.key, name), {})
                    if not runs:
                        continue
                    ref = None if name == REFERENCE else self.runs.get((s.key, REFERENCE), {})
                    rows.append(Row(s, name, runs, ref, self.problems.get((s.key, name), []),
                                    died=(s.variant, name) in self.died))
                elif s.kind == "idle" and name in self.idle:
                    ref = None if name == REFERENCE else self.idle.get(REFERENCE)
                    idle.append(IdleRow(s, name, self.idle[name], ref, self.problems.get((s.key, name), []),
                                        died=("idle", name) in self.died))
                elif s.kind == "reload" and ((s.key, name) in self.reloads or (s.key, name) in self.reload_problems):
                    reloads.append(ReloadRow(s, name, self.reloads.get((s.key, name)),
                                             self.reloads.get((s.key, REFERENCE)) if name != REFERENCE else None,
                                             self.reload_problems.get((s.key, name), [])))
                elif s.kind == "health" and ((s.key, name) in self.health or s.key in self.health_problems):
                    health.append(HealthRow(s, name, self.health.get((s.key, name)),
                                            self.health.get((s.key, REFERENCE)) if name != REFERENCE else None,
                                            self.health_problems.get(s.key, [])))
        return rows, idle, reloads, health

    def versions(self) -> dict[str, str]:
        v = {name: kind.version() for name, kind in self.kinds.items() if name != "aiohttp"}
        v["wrk"] = self.wrk.version()
        v["backends"] = self.backend_kind
        return {k if k != "fleetproxy" else "fleetproxy (under test)": val for k, val in v.items()}


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python proxy/bench/run.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    # SIGTERM ends the run like Ctrl-C does, so every started process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="fpb-"))
    load_start = loadavg()
    started = time.monotonic()
    prof = None
    try:
        with Processes(workdir) as procs:
            bench = Bench(args, procs)
            log(f"work directory: {workdir}")
            if not args.profile_only:
                log(f"estimated run time: about {bench.estimate() / 60:.0f} min "
                    "(more on a busy machine; a profile adds about half a minute)")
            bench.start()
            if not args.profile_only:
                bench.rounds()
                bench.reload_runs()
                bench.health_runs()
                bench.idle_runs()
            if bench.want_profile():
                prof = bench.profile()
            rows, idle, reloads, health = bench.rows()
            versions = bench.versions()
            configs = bench.configs
            placement = bench.placement.describe()
            placement_2w = bench.variants["2w"][1].describe()
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if args.keep_workdir:
            log(f"kept work directory {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - started
    print(console_table(rows, idle, reloads, health))
    print(f"\n{len(rows) + len(idle) + len(reloads) + len(health)} result rows in {elapsed / 60:.1f} min; "
          f"CPU placement: {placement}")

    OUT_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = {
        "command": command, "date": today(), "args": {k: str(v) for k, v in vars(args).items()},
        "wrk": [{"scenario": r.scenario.key, "proxy": r.proxy, "rounds": {i: x.as_dict() for i, x in r.runs.items()}}
                for r in rows],
        "idle": [{"proxy": r.proxy, **r.result.as_dict()} for r in idle],
        "reload": [{"scenario": r.scenario.key, "proxy": r.proxy, "problems": r.problems,
                    **(r.result.as_dict() if r.result else {})} for r in reloads],
        "health": [{"scenario": r.scenario.key, "proxy": r.proxy, "problems": r.problems,
                    **(r.result.as_dict() if r.result else {})} for r in health],
        "elapsed_s": elapsed,
    }
    (OUT_DIR / f"results-{stamp}.json").write_text(json.dumps(raw, indent=1))

    if not args.no_results:
        meta = {
            "date": today(), "load_start": load_start, "load_end": loadavg(),
            "backends": versions.get("backends", "?"), "rounds": str(args.rounds),
            "duration": f"{args.duration:g}", "warmup": f"{args.warmup:g}",
            "idle_settle": f"{args.idle_settle:g}",
            "wrk": f"{args.wrk_threads} thread(s), {args.connections} connections, --latency, 2 s timeout",
            "idle_conns": str(args.idle_conns),
            "elapsed": f"{elapsed / 60:.1f}",
            "placement_2w": placement_2w,
            "reloads": f"{args.reloads} reloads, one every {args.reload_interval:g} s (or right after the "
                       f"previous one when it took longer), {args.reload_connections} connections"
                       + (f", at most {args.reload_rate:g} req/s" if args.reload_rate else ", closed loop"),
            "health": f"{args.health_servers} servers per proxy, inter {args.health_inter}, "
                      f"{args.health_windows} window(s) x {args.health_window:g} s",
        }
        info = machine_info({k: v for k, v in versions.items() if k != "backends"})
        md = markdown(rows=rows, idle=idle, reloads=reloads, health=health, info=info, meta=meta,
                      placement=placement, command=command,
                      note=args.note, profile_md=prof.markdown(f"{SUBJECT}, HTTP keep-alive", REPO) if prof else None,
                      rounds_table=rounds_markdown(rows), configs=configs)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(md)
        print(f"results written to {args.results}")

    missed = [r for r in [*rows, *idle, *reloads, *health] if not all(c.ok for c in r.checks())]
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
