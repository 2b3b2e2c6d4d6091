"""Process plumbing for the benchmark: ports, CPU placement, spawning, stopping, /proc.

Everything here is generic; nothing knows about proxies or scenarios.  Every
process the benchmark starts goes through :class:`Processes`, which stops it by
its PID (SIGTERM, then SIGKILL) when the run ends, also on errors and Ctrl-C,
and asks the kernel to send it SIGTERM should the benchmark itself die
(``PR_SET_PDEATHSIG``), so nothing outlives a run.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A benchmark cannot continue (a process failed to start, a check failed)."""


# --------------------------------------------------------------------------
# Ports and limits
# --------------------------------------------------------------------------


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE towards ``want`` (children inherit it).

    The soft limit goes up to the hard limit; the hard limit goes up only with
    CAP_SYS_RESOURCE.  Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0,
              proc: subprocess.Popen | None = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection (or ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def unix_command(path: Path | str, command: str, timeout: float = 10.0) -> str:
    """Send one line to an HAProxy-style text socket (stats socket, master CLI, fleetproxy's
    runtime socket) and return everything it answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)  # the master CLI answers, then waits for more unless told
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def unix_http(path: Path | str, method: str, url: str, timeout: float = 30.0) -> tuple[int, str]:
    """One HTTP/1.1 request over a UNIX socket (fleetproxy's admin socket): (status, body)."""

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(path))
            except OSError:
                sock.close()
                raise
            self.sock = sock

    conn = _Conn("localhost", timeout=timeout)
    try:
        conn.request(method, url)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{method} {url} on {path}: {exc!r}") from None
    finally:
        conn.close()


# --------------------------------------------------------------------------
# CPU placement
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Which CPUs each role may run on; ``None`` means no pinning.

    Roles: ``proxy`` (the proxy under test), ``load`` (wrk, the idle clients,
    py-spy, the benchmark itself) and ``backend`` (nginx).
    """

    proxy: frozenset[int] | None = None
    load: frozenset[int] | None = None
    backend: frozenset[int] | None = None

    @classmethod
    def choose(cls, mode: str) -> Placement:
        """``auto``: on 2+ CPUs the proxy gets the last CPU alone and everything
        else shares the rest; ``none``: no pinning; ``P:L`` explicit CPU lists
        (``1:0``, ``2-3:0-1``) for proxy and load+backends."""
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "none" or (mode == "auto" and len(cpus) < 2):
            return cls()
        if mode == "auto":
            proxy = frozenset(cpus[-1:])
            rest = frozenset(cpus[:-1])
            return cls(proxy=proxy, load=rest, backend=rest)
        try:
            proxy_text, load_text = mode.split(":")
            proxy, load = parse_cpus(proxy_text), parse_cpus(load_text)
        except ValueError:
            raise BenchError(f"--pin {mode!r}: use auto, none or PROXY_CPUS:LOAD_CPUS (e.g. 1:0)") from None
        return cls(proxy=proxy, load=load, backend=load)

    @classmethod
    def choose_multi(cls, mode: str, ncpus: int = 2) -> Placement:
        """Placement for a proxy with ``ncpus`` workers/threads.  ``auto``: with at least
        ``ncpus`` + 2 CPUs the proxy gets the last ``ncpus`` alone; with fewer (a 2-core
        machine) the proxy cannot have cores to itself, so every process may run on every
        CPU (the same for every proxy).  ``none`` and explicit lists as in :meth:`choose`."""
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "auto":
            if len(cpus) >= ncpus + 2:
                proxy, rest = frozenset(cpus[-ncpus:]), frozenset(cpus[:-ncpus])
                return cls(proxy=proxy, load=rest, backend=rest)
            every = frozenset(cpus)
            return cls(proxy=every, load=every, backend=every)
        return cls.choose(mode)

    @property
    def shared(self) -> bool:
        """The proxy shares its CPUs with the load generator and the backends."""
        return self.proxy is None or bool(self.proxy & (self.load or frozenset()))

    def cpus(self, role: str) -> frozenset[int] | None:
        return getattr(self, role)

    def describe(self) -> str:
        if self.proxy is None:
            return "none (the scheduler places every process)"
        if self.shared:
            return (f"proxy, load generator and nginx backends all on CPUs {fmt_cpus(self.proxy)} "
                    "(shared; the scheduler places them)")
        return (f"proxy on CPU {fmt_cpus(self.proxy)}; wrk, idle clients, py-spy and the harness "
                f"on CPU {fmt_cpus(self.load)}; nginx backends on CPU {fmt_cpus(self.backend)}")


def parse_cpus(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    if not out:
        raise ValueError(text)
    return frozenset(out)


def fmt_cpus(cpus: frozenset[int] | None) -> str:
    return "any" if cpus is None else ",".join(str(c) for c in sorted(cpus))


# --------------------------------------------------------------------------
# Spawning and stopping
# --------------------------------------------------------------------------


def _child_setup(cpus: frozenset[int] | None) -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Processes:
    """Every process a run starts; :meth:`stop_all` (or leaving the ``with``) ends them."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], *, cpus: frozenset[int] | None = None,
              stdin: int | None = subprocess.DEVNULL, stdout_pipe: bool = False,
              env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        out = open(log, "ab")  # noqa: SIM115 - owned by the child from here on
        try:
            popen = subprocess.Popen(
                list(argv), stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else out, stderr=out,
                preexec_fn=lambda: _child_setup(cpus), cwd=self.workdir,
                env=env, start_new_session=True,
            )
        finally:
            out.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Stop one process by its PID: ``sig``, wait, then SIGKILL."""
        p = proc.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def run_capture(argv: Sequence[str], *, cpus: frozenset[int] | None = None,
                timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a short-lived command (wrk, py-spy) to completion, capturing its output."""
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout,
        preexec_fn=lambda: _child_setup(cpus), check=False,
    )


# --------------------------------------------------------------------------
# /proc readers: CPU time and RSS of a process and its descendants
# --------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (for a multi-worker proxy: master + workers)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids``."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def thread_cpu_seconds(pids: Sequence[int]) -> dict[tuple[int, int], float]:
    """(pid, tid) -> user + system CPU seconds, for every thread of ``pids``."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(pid, int(tid))] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size of ``pids`` (sum; shared pages counted once per process)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have been waited for (wrk, py-spy)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class CpuAccount:
    """Who used the CPUs during a measurement, in % of one core.

    ``proxy``: the proxy's process tree; ``load``: the load generator (a child
    run to completion inside the window) plus the backends; ``other``: the rest
    of the machine's busy time: processes outside the benchmark (on a shared
    machine, other people's work) and kernel work not charged to any process.
    """

    proxy_pid: int | None
    backend_pids: list[int]
    _t0: float = 0.0
    _snap: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    _proxy: list[int] = field(default_factory=list)
    _backends: list[int] = field(default_factory=list)

    def _take(self) -> tuple[float, float, float, float]:
        return (machine_busy_seconds(), cpu_seconds(self._proxy), cpu_seconds(self._backends),
                children_cpu_seconds())

    def start(self) -> None:
        self._proxy = process_tree(self.proxy_pid) if self.proxy_pid else []
        self._backends = [p for b in self.backend_pids for p in process_tree(b)]
        self._t0 = time.monotonic()
        self._snap = self._take()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t0
        now = self._take()
        busy, proxy, backends, children = (a - b for a, b in zip(now, self._snap, strict=True))
        if elapsed <= 0:
            return {"proxy": 0.0, "load": 0.0, "other": 0.0}
        pct = 100.0 / elapsed
        return {"proxy": proxy * pct, "load": (backends + children) * pct,
                "other": max(0.0, busy - proxy - backends - children) * pct}
