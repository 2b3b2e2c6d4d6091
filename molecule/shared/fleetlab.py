"""Instruments for the fleet scenarios (molecule/ha, molecule/rolling) and the demo.

Everything runs on the controller, which reaches the containers' addresses over the
Docker bridge:

- ``Traffic``: a bounded, paced HTTP client. It opens a new connection for every
  request (so each request finds the virtual IP wherever it is at that moment) at a
  fixed rate, whatever the previous requests are doing, and records each request's
  start, end, outcome, and the backend name and version the answer carried.
- ``VipWatch``: who holds the virtual IP, from netlink address events of each proxy
  container's network namespace (``nsenter --net`` + ``ip -ts monitor address``),
  with timestamps, so failover times and periods with two holders are measured, not
  polled.
- small helpers for Docker and Ansible, and ``Measurements``, the table the verify
  step prints.

All times are ``time.monotonic()`` seconds. Containers share the host's kernel, hence
its clocks: wall-clock stamps taken inside a container (the journal, ``ip -ts``,
Docker's ``FinishedAt``) are converted with one offset taken at import.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import itertools
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field

# wall clock - monotonic clock, for converting wall-clock stamps.
_OFFSET = time.time() - time.monotonic()


def mono_from_wall(wall: float) -> float:
    return wall - _OFFSET


def wall_from_mono(mono: float) -> float:
    return mono + _OFFSET


# --------------------------------------------------------------------------- traffic

@dataclass
class Request:
    seq: int
    start: float
    end: float = 0.0
    status: int = 0
    served_by: str = ""
    version: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def latency(self) -> float:
        return self.end - self.start


class Traffic:
    """Paced requests to ``http://host:port/`` from a thread of its own.

    ``rate`` requests per second, each on a new connection with ``Connection: close``,
    each bounded by ``timeout`` seconds (connect included); the whole run by
    ``max_duration`` seconds and ``rate * max_duration`` requests. A request that
    does not complete with status 200 is a failure, with the reason in ``error``.
    """

    def __init__(self, host: str, port: int = 80, *, rate: float = 50.0, timeout: float = 3.0,
                 max_duration: float = 600.0, path: str = "/traffic") -> None:
        self.host, self.port, self.rate, self.timeout = host, port, rate, timeout
        self.max_duration, self.path = max_duration, path
        self.results: list[Request] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = self.stopped = 0.0

    # The client --------------------------------------------------------------
    async def _exchange(self, req: Request) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                f"GET {self.path}/{req.seq} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"User-Agent: fleetlab\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while len(data) < 65536:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            writer.close()
        head, sep, _body = data.partition(b"\r\n\r\n")
        if not sep:
            req.error = "incomplete response" if data else "empty response"
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        req.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        for line in lines[1:]:
            name, _colon, value = line.partition(":")
            name = name.strip().lower()
            if name == "x-served-by":
                req.served_by = value.strip()
            elif name == "x-app-version":
                req.version = value.strip()
        if req.status != 200:
            req.error = f"status {req.status}"

    async def _one(self, req: Request) -> None:
        try:
            await asyncio.wait_for(self._exchange(req), self.timeout)
        except asyncio.TimeoutError:
            req.error = "timeout"
        except ConnectionRefusedError:
            req.error = "connection refused"
        except ConnectionResetError:
            req.error = "connection reset"
        except OSError as exc:
            req.error = f"{type(exc).__name__}: {exc}"
        req.end = time.monotonic()
        self.results.append(req)

    async def _main(self) -> None:
        tasks: set[asyncio.Task] = set()
        interval = 1.0 / self.rate
        base = self.started = time.monotonic()
        seq = 0
        limit = int(self.rate * self.max_duration)
        while seq < limit and not self._stop.is_set():
            now = time.monotonic()
            if now - self.started > self.max_duration:
                break
            due = base + seq * interval
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > interval:
                base = now - seq * interval   # fell behind (a stalled machine): no burst
            task = asyncio.ensure_future(self._one(Request(seq, time.monotonic())))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            seq += 1
        if tasks:
            await asyncio.wait(tasks)
        self.stopped = time.monotonic()

    # Control -----------------------------------------------------------------
    def start(self) -> Traffic:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True,
                                        name="fleetlab-traffic")
        self._thread.start()
        while not self.started:
            time.sleep(0.005)
        return self

    def stop(self) -> list[Request]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self.completed()

    def stop_when_done(self) -> list[Request]:
        """Wait until the run ends by itself (max_duration), then return the results."""
        if self._thread is not None:
            self._thread.join(self.max_duration + self.timeout + 5)
        return self.stop()

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def completed(self) -> list[Request]:
        return sorted(list(self.results), key=lambda r: r.seq)

    def wait_for(self, predicate, timeout: float, what: str = "") -> Request:
        """Wait until a completed request satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            done = list(self.results)
            for req in done[seen:]:
                if predicate(req):
                    return req
            seen = len(done)
            time.sleep(0.02)
        raise AssertionError(f"no request {what} within {timeout}s; last: {summary(self.completed()[-5:])}")


def window(results: list[Request], since: float | None = None, until: float | None = None) -> list[Request]:
    return [r for r in results if (since is None or r.start >= since) and (until is None or r.start < until)]


def failures(results: list[Request]) -> list[Request]:
    return [r for r in results if not r.ok]


def served(results: list[Request]) -> collections.Counter:
    return collections.Counter(r.served_by for r in results if r.ok)


def longest_gap(results: list[Request], since: float, until: float) -> float:
    """The longest time in [since, until] without a successful answer arriving: what a
    client polling steadily experiences as the interruption."""
    ends = sorted(r.end for r in results if r.ok and since <= r.end <= until)
    marks = [since, *ends, until]
    return max(b - a for a, b in itertools.pairwise(marks))


def summary(results: list[Request]) -> dict:
    fails = failures(results)
    return {
        "requests": len(results),
        "failed": len(fails),
        "errors": dict(collections.Counter(r.error for r in fails)),
        "served_by": dict(served(results)),
        "max_latency_s": round(max((r.latency for r in results), default=0.0), 3),
    }


# ------------------------------------------------------------------------ VIP watch

@dataclass
class VipEvent:
    t: float          # monotonic
    node: str
    held: bool
    source: str       # "monitor", "initial", "gone"


_IP_TS = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]\s*(.*)$")
_IP_ADDR = re.compile(r"^(Deleted )?\d+: (\S+)\s+inet ([0-9.]+)/")


class VipWatch:
    """Which of ``nodes`` (container names) holds ``vip`` on ``interface``, event by
    event. (An address elsewhere, e.g. on ``lo``, is not "held": nobody on the LAN
    reaches it through ARP.)"""

    def __init__(self, vip: str, nodes: list[str], interface: str = "eth0") -> None:
        self.vip = vip.split("/")[0]
        self.interface = interface
        self.nodes = list(nodes)
        self.events: list[VipEvent] = []
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._held = {n: False for n in nodes}

    def start(self) -> VipWatch:
        for node in self.nodes:
            self.attach(node)
        return self

    def close(self) -> None:
        for node in list(self._procs):
            self._detach(node)

    def __enter__(self) -> VipWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, t: float, node: str, held: bool, source: str) -> None:
        with self._lock:
            if self._held.get(node) is held:
                return
            self._held[node] = held
            self.events.append(VipEvent(t, node, held, source))

    def _detach(self, node: str) -> None:
        proc = self._procs.pop(node, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

    def attach(self, node: str) -> None:
        """(Re)start watching ``node``'s network namespace (after ``docker start`` too)."""
        self._detach(node)
        pid = container_pid(node)
        netns = f"--net=/proc/{pid}/ns/net"
        proc = subprocess.Popen(
            ["nsenter", netns, "ip", "-ts", "-o", "monitor", "address"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        self._procs[node] = proc
        threading.Thread(target=self._read, args=(node, proc), daemon=True, name=f"vipwatch-{node}").start()
        # The monitor runs first, then the current state is read: nothing falls between.
        time.sleep(0.05)
        out = subprocess.run(["nsenter", netns, "ip", "-o", "-4", "addr", "show", "dev", self.interface],
                             capture_output=True, text=True, timeout=10, check=False).stdout
        held = any(self._parse(line) == (True,) for line in out.splitlines())
        with self._lock:
            self._held[node] = None  # type: ignore[assignment]  # force the initial record
        self._record(time.monotonic(), node, held, "initial")

    def _parse(self, text: str) -> tuple[bool] | None:
        """(held,) for a line about the VIP on the interface, else None."""
        match = _IP_ADDR.match(text.strip())
        if not match or match.group(2) != self.interface or match.group(3) != self.vip:
            return None
        return (match.group(1) is None,)

    def _read(self, node: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            received = time.monotonic()
            match = _IP_TS.match(line)
            t, text = received, line
            if match:
                text = match.group(2)
                try:
                    stamp = _dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
                    t = min(received, mono_from_wall(stamp))
                except ValueError:
                    pass
            parsed = self._parse(text)
            if parsed is None:
                continue
            if self._procs.get(node) is not proc:
                return
            self._record(t, node, parsed[0], "monitor")

    def mark_gone(self, node: str, t: float) -> None:
        """``node`` died at ``t`` (docker kill): whatever its namespace still says, it
        holds nothing from then on."""
        self._detach(node)
        self._record(t, node, False, "gone")

    # Queries -----------------------------------------------------------------
    def holders(self) -> list[str]:
        with self._lock:
            return sorted(n for n, held in self._held.items() if held)

    def wait(self, predicate, timeout: float, what: str) -> float:
        """Wait until ``predicate(holders)`` is true; return the time of the event that
        made it so (or now, if it already was)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                holders = sorted(n for n, held in self._held.items() if held)
                last = self.events[-1].t if self.events else time.monotonic()
            if predicate(holders):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s; holders {holders}; "
                                     f"events {self.describe(since=time.monotonic() - timeout - 5)}")
            time.sleep(0.01)

    def wait_single(self, node: str, timeout: float) -> float:
        return self.wait(lambda h: h == [node], timeout, f"{node} alone holds {self.vip}")

    def first_event(self, node: str, held: bool, since: float) -> VipEvent | None:
        with self._lock:
            return next((e for e in self.events if e.node == node and e.held == held and e.t >= since), None)

    def overlaps(self, since: float, until: float | None = None) -> list[tuple[float, float]]:
        """Periods in [since, until] when two or more nodes held the VIP."""
        until = time.monotonic() if until is None else until
        with self._lock:
            events = sorted(self.events, key=lambda e: e.t)
        held: dict[str, bool] = {}
        periods: list[tuple[float, float]] = []
        begin: float | None = None
        for ev in events:
            if ev.t > until:
                break
            before = sum(held.values())
            held[ev.node] = ev.held
            after = sum(held.values())
            if before < 2 <= after:
                begin = ev.t
            elif after < 2 <= before and begin is not None:
                periods.append((begin, ev.t))
                begin = None
        if begin is not None:
            periods.append((begin, until))
        return [(max(a, since), b) for a, b in periods if b > since]

    def describe(self, since: float = 0.0) -> list[str]:
        with self._lock:
            return [f"{e.t - since:+.3f}s {e.node} {'+' if e.held else '-'}VIP ({e.source})"
                    for e in self.events if e.t >= since]


# ------------------------------------------------------------------- VRRP adverts

class AdvertWatch:
    """Every VRRP advertisement on a Docker network's bridge, as the host receives it
    (AF_PACKET, kernel receive timestamps): who advertised when, with which priority.
    The last advert of a master that was killed is its last sign of life."""

    ETH_P_IP = 0x0800
    SO_TIMESTAMPNS = 35
    SOL_PACKET = 263
    PACKET_ADD_MEMBERSHIP = 1
    PACKET_MR_MULTICAST = 0

    def __init__(self, network: str) -> None:
        self.network = network
        self.interface = bridge_of(network)
        self.adverts: list[tuple[float, str, int]] = []   # (monotonic, source, priority)
        self._stop = threading.Event()
        self._sock = None
        self._thread: threading.Thread | None = None

    def start(self) -> AdvertWatch:
        import socket
        import struct

        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(self.ETH_P_IP))
        sock.bind((self.interface, 0))
        # The bridge delivers the VRRP group's frames to the host only when asked to.
        mreq = struct.pack("iHH8s", socket.if_nametoindex(self.interface), self.PACKET_MR_MULTICAST, 6,
                           bytes.fromhex("01005e000012"))
        sock.setsockopt(self.SOL_PACKET, self.PACKET_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.SOL_SOCKET, self.SO_TIMESTAMPNS, 1)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"adverts-{self.interface}")
        self._thread.start()
        return self

    def _read(self) -> None:
        import socket
        import struct

        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 28 or data[9] != 112:   # IPv4 protocol 112: VRRP
                continue
            t = time.monotonic()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == self.SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    t = min(t, mono_from_wall(sec + nsec / 1e9))
            ihl = (data[0] & 0x0F) * 4
            source = ".".join(str(b) for b in data[12:16])
            self.adverts.append((t, source, data[ihl + 2]))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()

    def last_from(self, source: str, before: float | None = None) -> float | None:
        """Time of the last advert with a priority above 0 from ``source``."""
        times = [t for t, src, prio in list(self.adverts)
                 if src == source and prio > 0 and (before is None or t <= before)]
        return max(times, default=None)


# -------------------------------------------------------------------- proxy state

@dataclass
class Sample:
    t0: float         # the poll was sent
    t1: float         # its answer arrived
    servers: dict     # "backend/server" -> {"state", "health", "sessions"}


class StatePoller:
    """Every ``interval`` seconds, each proxy's ``/stats;json`` (its admin.listen):
    a timeline of every server's administrative state, health and active sessions, as
    the proxy itself reports them."""

    def __init__(self, urls: dict[str, str], interval: float = 0.1, max_duration: float = 1800.0) -> None:
        self.urls, self.interval, self.max_duration = urls, interval, max_duration
        self.samples: dict[str, list[Sample]] = {node: [] for node in urls}
        self.errors: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _poll(self, node: str, url: str) -> None:
        import urllib.request

        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.max_duration:
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    doc = json.loads(resp.read())
                servers = {
                    f"{b['name']}/{s['name']}": {"state": s["state"], "health": s["health"],
                                                 "sessions": s["sessions"]["current"]}
                    for b in doc["backends"] for s in b["servers"]
                }
                self.samples[node].append(Sample(t0, time.monotonic(), servers))
            except (OSError, ValueError, KeyError) as exc:
                self.errors[f"{node}: {type(exc).__name__}"] += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def start(self) -> StatePoller:
        for node, url in self.urls.items():
            th = threading.Thread(target=self._poll, args=(node, url), daemon=True, name=f"poll-{node}")
            th.start()
            self._threads.append(th)
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(5)

    def out_of_rotation(self, node: str, server: str) -> list[tuple[float, float]]:
        """Periods in which ``node`` certainly had ``server`` ("backend/server") drained:
        from the answer of the first poll that saw it out of rotation (drain or maint, or
        deleted) with no active session, to the sending of the last poll that still saw
        it out of rotation. A request that starts inside such a period must not reach it."""
        periods: list[tuple[float, float]] = []
        begin: float | None = None
        last_out: float | None = None
        for smp in self.samples[node]:
            cur = smp.servers.get(server)
            out = cur is None or cur["state"] != "ready"
            if out:
                if begin is None and (cur is None or cur["sessions"] == 0):
                    begin = smp.t1
                last_out = smp.t0
            else:
                if begin is not None and last_out is not None and last_out > begin:
                    periods.append((begin, last_out))
                begin = last_out = None
        if begin is not None and last_out is not None and last_out > begin:
            periods.append((begin, last_out))
        return periods


# -------------------------------------------------------------------------- docker

def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    run = subprocess.run(["docker", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {run.stderr.strip() or run.stdout.strip()}")
    return run.stdout.strip()


def dexec(container: str, *cmd: str, timeout: float = 120, check: bool = True) -> str:
    return docker("exec", container, *cmd, timeout=timeout, check=check)


def bridge_of(network: str) -> str:
    """The host interface of a Docker bridge network."""
    name = docker("network", "inspect", "-f", '{{index .Options "com.docker.network.bridge.name"}}', network)
    if name and name != "<no value>":
        return name
    return "br-" + docker("network", "inspect", "-f", "{{.Id}}", network)[:12]


def container_ip(container: str) -> str:
    return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container).split()[0]


def container_pid(container: str) -> int:
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", container))
    if pid <= 0:
        raise RuntimeError(f"container {container} is not running")
    return pid


def _parse_docker_time(text: str) -> float:
    """Docker's RFC 3339 with nanoseconds (2026-11-26T14:38:22.710177123Z) -> epoch."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        raise ValueError(text)
    base = _dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = _dt.timezone.utc if match.group(3) == "Z" else _dt.datetime.strptime(match.group(3), "%z").tzinfo
    frac = float("0." + match.group(2)) if match.group(2) else 0.0
    return base.replace(tzinfo=tz).timestamp() + frac


def container_finished_at(container: str) -> float:
    """When the container's main process died (monotonic), as Docker recorded it."""
    return mono_from_wall(_parse_docker_time(docker("inspect", "-f", "{{.State.FinishedAt}}", container)))


def journal_time(container: str, unit: str, message_prefix: str, since_mono: float) -> float | None:
    """Monotonic time of the first journal entry of ``unit`` in ``container`` whose
    message starts with ``message_prefix``, at or after ``since_mono``."""
    since = _dt.datetime.fromtimestamp(wall_from_mono(since_mono) - 1).strftime("%Y-%m-%d %H:%M:%S")
    out = dexec(container, "journalctl", "-o", "json", "--no-pager", "--since", since, check=False)
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str) or not message.startswith(message_prefix):
            continue
        if unit not in (entry.get("UNIT"), entry.get("_SYSTEMD_UNIT"), entry.get("USER_UNIT")):
            continue
        t = mono_from_wall(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
        if t >= since_mono - 0.001:
            return t
    return None


def wait_systemd(container: str, timeout: float = 120) -> str:
    """After ``docker start``: wait until systemd finished booting the container."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = dexec(container, "systemctl", "is-system-running", check=False, timeout=30)
        if state in ("running", "degraded"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"{container}: systemd still {state!r} after {timeout}s")


# ------------------------------------------------------------------------- ansible

def _ansible_env() -> dict:
    return dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")


def inventory() -> str:
    return os.environ["MOLECULE_INVENTORY_FILE"]


def playbook(path: str, *args: str, extra_vars: dict | None = None, timeout: float = 900) -> str:
    """Run a playbook against the scenario's inventory; its output, or an
    AssertionError carrying it."""
    argv = ["ansible-playbook", "-i", inventory(), *args]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    run = subprocess.run([*argv, path], check=False, capture_output=True, text=True, timeout=timeout, env=_ansible_env())
    output = run.stdout + run.stderr
    if run.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} {path} failed ({run.returncode}):\n{output[-12000:]}")
    return output


def module(pattern: str, name: str, args: dict | None = None, timeout: float = 600) -> dict:
    """Run one module on the hosts matching ``pattern``; {host: result}."""
    env = dict(_ansible_env(), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    argv = ["ansible", "-i", inventory(), pattern, "-m", name, "-a", json.dumps(args or {})]
    run = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    try:
        doc = json.loads(run.stdout[run.stdout.index("{"):])
    except ValueError as exc:
        raise AssertionError(f"{' '.join(argv)}: no JSON output:\n{run.stdout}\n{run.stderr}") from exc
    results = {host: res for play in doc["plays"] for task in play["tasks"] for host, res in task["hosts"].items()}
    bad = {h: r for h, r in results.items() if r.get("failed") or r.get("unreachable")}
    if bad:
        raise AssertionError(f"{name} failed: {json.dumps(bad, indent=1)[:6000]}")
    return results


def inventory_host(host: str) -> dict:
    out = subprocess.run(["ansible-inventory", "-i", inventory(), "--host", host],
                         check=True, capture_output=True, text=True, env=_ansible_env()).stdout
    return json.loads(out)


# -------------------------------------------------------------------- measurements

@dataclass
class Row:
    case: str
    measured_s: float | None
    bound_s: float | None
    failed: int | None = None
    requests: int | None = None
    gap_s: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class Measurements:
    """Rows of measured times, printed as a table and kept as JSON."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def table(self) -> str:
        """A table narrow enough for Molecule's console (notes go below it)."""
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f}"

        head = ("#", "case", "ms", "bound", "failed", "gap")
        body = [
            (str(i), r.case, ms(r.measured_s), ms(r.bound_s),
             "-" if r.requests is None else f"{r.failed}/{r.requests}", ms(r.gap_s))
            for i, r in enumerate(self.rows, 1)
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
        fmt = " | ".join(f"{{:<{w}}}" for w in widths)
        lines = [self.title, fmt.format(*head), "-+-".join("-" * w for w in widths)]
        lines += [fmt.format(*row) for row in body]
        notes = [f"  {i}: {r.note}" for i, r in enumerate(self.rows, 1) if r.note]
        if notes:
            lines += ["", "ms: measured; failed: failed/sent requests; gap: longest time (ms) without",
                      "an answer at the client", *notes]
        return "\n".join(lines)

    def dump(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump({"title": self.title, "rows": [asdict(r) for r in self.rows]}, fh, indent=1)


# The tables a scenario's verify step prints at its end (pytest_terminal_summary).
REPORTS: list[Measurements] = []


def print_report(terminalreporter) -> None:
    """Print every table of REPORTS and keep them as JSON in build/fleet-results/."""
    for report in REPORTS:
        if not report.rows:
            continue
        terminalreporter.write_line("")
        for line in report.table().splitlines():
            terminalreporter.write_line(line)
        project = os.environ.get("MOLECULE_PROJECT_DIRECTORY")
        if project:
            out = os.path.join(project, "build", "fleet-results")
            os.makedirs(out, exist_ok=True)
            name = re.sub(r"[^a-z0-9]+", "-", report.title.lower()).strip("-")[:40]
            report.dump(os.path.join(out, f"{name}.json"))


def duration(text: str | int | float) -> float:
    """'100ms', '1s', '250us', 2 (ms) -> seconds."""
    if isinstance(text, (int, float)):
        return text / 1000
    match = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)?\s*", str(text))
    if not match:
        raise ValueError(text)
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1e-3}[match.group(2)]
    return float(match.group(1)) * unit
