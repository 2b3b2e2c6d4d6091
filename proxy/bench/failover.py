"""Failover benchmark: fleetproxy vrrp against keepalived, in the same run.

On a LAN of network namespaces (a Linux bridge, two nodes, one observer) it measures,
over repeated runs, the time from the master's death to the backup answering ARP for
the virtual IP (as seen by the observer, which asks every 2 ms):

- sigkill:  the master's daemon is SIGKILLed (keepalived: its VRRP child, then the parent);
- graceful: the master's daemon gets SIGTERM (it sends priority 0);
- tracked:  the service the master tracks (a TCP listener on 127.0.0.1:8080) is killed;

at advertisement intervals of 1 s and 100 ms. It also measures how long two masters
coexist after a partition (the master's bridge port stops forwarding until the
backup has taken over) heals: from the heal to the loser removing the VIP; and the
CPU an idle pair uses at 100 ms.

    sudo python proxy/bench/failover.py [--runs 5] [--idle 20] [--out proxy/bench/RESULTS-failover.md]

Needs root, iproute2, and keepalived for the comparison (skipped with a note if absent).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fleetproxy.vrrp import lab as labmod
from fleetproxy.vrrp.state import master_down_interval_cs, skew_time_cs

VIP = "198.18.51.100"
MASTER_PRIO, BACKUP_PRIO = 200, 100
SCENARIOS = ("sigkill", "graceful", "tracked", "partition")
LISTENER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080)); s.listen(64)
while True:
    c, _ = s.accept(); c.close()
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Pair:
    """Start a master (priority 200) and a backup (100) of one implementation."""

    def __init__(self, lab: labmod.Lab, impl: str, interval: float) -> None:
        self.lab, self.impl, self.interval = lab, impl, interval
        self.master, self.backup = lab.nodes
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, track: bool) -> None:
        lab, m, b = self.lab, self.master, self.backup
        if track:
            self.procs["svc"] = m.popen([sys.executable, "-c", LISTENER], "svc.log")
            time.sleep(0.3)
        if self.impl == "fleetproxy":
            iv = f"{round(self.interval * 1000)}ms"
            garp = {"repeat": 2, "delay": "0s"}
            extra = {"track": [{"tcp": "127.0.0.1:8080"}]} if track else {}
            self.procs["m"] = lab.start_vrrp(m, wait=False, priority=MASTER_PRIO, advert_interval=iv, garp=garp, **extra)
            self.procs["b"] = lab.start_vrrp(b, wait=False, priority=BACKUP_PRIO, advert_interval=iv, garp=garp)
            lab.wait_state(m, "MASTER", 15, proc=self.procs["m"])
            lab.wait_state(b, "BACKUP", 15, proc=self.procs["b"])
        else:
            self.procs["m"] = lab.start_keepalived(m, priority=MASTER_PRIO, advert_interval=self.interval,
                                                   track_tcp=8080 if track else None)
            self.procs["b"] = lab.start_keepalived(b, priority=BACKUP_PRIO, advert_interval=self.interval)
            deadline = time.monotonic() + 15
            while not m.has(VIP):
                if time.monotonic() > deadline:
                    raise RuntimeError("keepalived master did not take the VIP:\n" + lab.log(f"{m.ns}-keepalived.log"))
                time.sleep(0.05)
        time.sleep(3 * self.interval + 0.2)  # the backup has heard a few adverts
        if b.has(VIP):
            raise RuntimeError(f"{self.impl}: backup holds the VIP in steady state")

    def kill(self, scenario: str) -> None:
        p = self.procs["m"]
        if scenario == "tracked":
            self.procs["svc"].kill()
        elif self.impl == "fleetproxy":
            p.send_signal(signal.SIGKILL if scenario == "sigkill" else signal.SIGTERM)
        elif scenario == "sigkill":
            with open(p.vrrp_pidfile) as f:  # type: ignore[attr-defined]
                os.kill(int(f.read().strip()), signal.SIGKILL)
            p.kill()
        else:
            p.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        for key, p in self.procs.items():
            if p.poll() is None:
                if self.impl == "keepalived" and key in ("m", "b"):
                    try:
                        pid = int(Path(p.vrrp_pidfile).read_text().strip())  # type: ignore[attr-defined]
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "keepalived":
                            os.kill(pid, signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
                p.kill()
            p.wait(10)
        self.procs.clear()
        for n in self.lab.nodes:  # what a SIGKILLed daemon leaves behind
            n.partition(False)
            if n.has(VIP):
                n.sh("ip", "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)


def measure(lab: labmod.Lab, impl: str, interval: float, scenario: str, rng: random.Random) -> float | None:
    pair = Pair(lab, impl, interval)
    try:
        pair.start(track=scenario == "tracked")
        # Kill at a random phase of the advert timer (and of the tracking checks, 1 s
        # for keepalived's script): a fixed start-to-kill delay would measure one phase.
        time.sleep(rng.uniform(0, 1.0 if scenario == "tracked" else interval))
        if scenario == "partition":
            return _partition(lab, pair, interval)
        with lab.probe() as probe:
            probe.drain()
            t0 = time.monotonic()
            pair.kill(scenario)
            return probe.first_answer(VIP, pair.backup.mac, t0, timeout=10 * interval + 3, period=0.002)
    finally:
        pair.stop()


def _partition(lab: labmod.Lab, pair: Pair, interval: float) -> float | None:
    """Cut the master off until the backup holds the VIP too, then heal: seconds until
    the loser (the backup) removes the VIP, i.e. how long two masters outlive the heal."""
    m, b = pair.master, pair.backup
    with labmod.AddrWatch(b) as watch:
        m.partition(True)
        if watch.wait(VIP, "add", time.monotonic() + 10 * interval + 3) is None:
            raise RuntimeError(f"{pair.impl}: the cut-off backup never took the VIP")
        time.sleep(3 * interval)
        if not m.has(VIP):
            raise RuntimeError(f"{pair.impl}: the cut-off master dropped the VIP")
        t0 = time.monotonic()
        m.partition(False)
        gone = watch.wait(VIP, "del", t0 + 10 * interval + 3)
    return None if gone is None else gone - t0


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def idle_cpu(lab: labmod.Lab, impl: str, seconds: float) -> float:
    """Percent of one core used by both daemons of an idle pair at 100 ms adverts."""
    pair = Pair(lab, impl, 0.1)
    try:
        pair.start(track=False)
        pids = [pair.procs["m"].pid, pair.procs["b"].pid]
        if impl == "keepalived":
            for p in (pair.procs["m"], pair.procs["b"]):
                with open(p.vrrp_pidfile) as f:  # type: ignore[attr-defined]
                    pids.append(int(f.read().strip()))
        time.sleep(1.0)
        t0, c0 = time.monotonic(), cpu_ticks(pids)
        time.sleep(seconds)
        t1, c1 = time.monotonic(), cpu_ticks(pids)
        return 100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    finally:
        pair.stop()


def bound(scenario: str, interval: float) -> str:
    cs = round(interval * 100)
    if scenario == "sigkill":
        return f"<= {float(master_down_interval_cs(BACKUP_PRIO, cs)) / 100 + 0.05:.3f}"
    if scenario == "graceful":
        skew = float(skew_time_cs(BACKUP_PRIO, cs)) / 100
        return f"<= {max(0.1, skew + 0.05):.3f} (Skew_Time {skew:.3f})"
    if scenario == "tracked":
        return "<= 1.000"
    return f"<= {2 * interval:.3f}"


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    ka = "absent"
    if shutil.which("keepalived"):
        out = subprocess.run(["keepalived", "--version"], capture_output=True, text=True)
        ka = (out.stdout + out.stderr).splitlines()[0].strip()
    osr = platform.freedesktop_os_release().get("PRETTY_NAME", "Linux") if hasattr(platform, "freedesktop_os_release") else "Linux"
    return [
        f"- {osr}, kernel {platform.release()}, {os.cpu_count()} cores ({cpu}), {mem} RAM",
        f"- Python {platform.python_version()}; {ka}",
        f"- load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(the machine is shared with other builds and tests)",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU sampling (default 20)")
    ap.add_argument("--intervals", default="1,0.1", help="advert intervals in seconds (default 1,0.1)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-failover.md")))
    ap.add_argument("--seed", type=int, default=5798, help="seed of the random kill phases")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    why = labmod.available()
    if why:
        log(f"failover benchmark needs network namespaces: {why}")
        return 2
    labmod.remove_leftovers()
    impls = ["fleetproxy"] + (["keepalived"] if shutil.which("keepalived") else [])
    if "keepalived" not in impls:
        log("keepalived is not installed: measuring fleetproxy only (apt-get install keepalived)")
    intervals = [float(x) for x in args.intervals.split(",")]
    scenarios = [s for s in args.scenarios.split(",") if s]
    started = time.time()
    header = machine()
    results: dict[tuple[str, float, str], list[float | None]] = {}
    cpu: dict[str, float] = {}
    with labmod.Lab(2) as lab:
        for interval in intervals:
            for scenario in scenarios:
                for impl in impls:
                    key = (impl, interval, scenario)
                    results[key] = []
                    for i in range(args.runs):
                        t = measure(lab, impl, interval, scenario, rng)
                        results[key].append(t)
                        log(f"{impl:10s} advert {interval:g}s {scenario:9s} run {i + 1}: "
                            + ("no answer" if t is None else f"{t * 1000:.0f} ms"))
        for impl in impls:
            cpu[impl] = idle_cpu(lab, impl, args.idle)
            log(f"{impl:10s} idle pair at 100 ms: {cpu[impl]:.2f}% of one core")

    lines = [
        "# Failover: fleetproxy vrrp and keepalived, measured in the same run",
        "",
        f"`make bench-failover` (proxy/bench/failover.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{args.runs} runs per case, medians (min-max) in milliseconds.",
        "",
        *header,
        "",
        "Time from the master's death to the backup answering ARP for the virtual IP, seen",
        "from a third namespace on the bridge that asks every 2 ms. `partition`: how long the",
        "loser keeps the VIP after a healed partition (both were master during it).",
        "Master priority 200, backup 100; fleetproxy tracks TCP 127.0.0.1:8080 every 200 ms",
        "(fall 2); keepalived 2.2 runs its check script every 1 s (its minimum) with fall 1.",
        "Each kill comes at a random phase of the advert timer (and of the checks), seed",
        f"{args.seed}. The RFC makes a backup wait Skew_Time after a priority-0 advert, so",
        "`graceful` and `tracked` include (256 - 100) / 256 x the advert interval.",
        "",
        "| advert | case | target (s) | " + " | ".join(impls) + " |",
        "|---|---|---|" + "---|" * len(impls),
    ]
    for interval in intervals:
        for scenario in scenarios:
            cells = []
            for impl in impls:
                vals = results[(impl, interval, scenario)]
                ok = [v for v in vals if v is not None]
                missed = len(vals) - len(ok)
                if not ok:
                    cells.append("no answer")
                    continue
                cell = f"{statistics.median(ok) * 1000:.0f} ({min(ok) * 1000:.0f}-{max(ok) * 1000:.0f})"
                if missed:
                    cell += f", {missed} missed"
                cells.append(cell)
            lines.append(f"| {interval * 1000:.0f} ms | {scenario} | {bound(scenario, interval)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Idle pair at 100 ms adverts, both daemons together, over {args.idle:g} s (target < 1% of one core):",
        "",
        "| implementation | CPU (% of one core) |",
        "|---|---|",
        *[f"| {impl} | {cpu[impl]:.2f} |" for impl in impls],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    log(f"written to {args.out} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
