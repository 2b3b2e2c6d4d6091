"""How do new connections spread over worker processes?  One shared listening
socket versus one SO_REUSEPORT socket per worker (issue 4: choose by the numbers).

Two uvloop worker processes run a minimal HTTP responder that counts the
connections it accepts.  wrk opens connections (``Connection: close``, so every
request is a new connection; then keep-alive with 50 and 400 connections) and
the script reports each worker's share and CPU, for both socket layouts.  It
also shows what each layout means for a reload: with a shared socket, old
workers can stop accepting and close their copy while the new ones accept on
the same queue, so nothing waits in a queue that is about to disappear; with
per-worker SO_REUSEPORT sockets, connections already queued on a closing
socket are reset.

    python proxy/bench/worker_spread.py [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

WORKER = r'''
import asyncio, os, signal, socket, sys, uvloop
fd, port, reuse, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
if reuse:
    sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port)); sock.listen(1024)
else:
    sock = socket.socket(fileno=fd)
sock.setblocking(False)
count = [0]
class P(asyncio.Protocol):
    def connection_made(self, t):
        count[0] += 1; self.t = t
    def data_received(self, d):
        close = b"close" in d
        self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\nok")
        if close: self.t.close()
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(P, sock=sock)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    open(out, "w").write(str(count[0]))
uvloop.install(); asyncio.run(main())
'''


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mode: str, wrk_args: list[str], duration: int) -> tuple[list[int], list[float], float]:
    port_sock = socket.socket()
    port_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mode == "reuseport":
        port_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    if mode == "shared":
        port_sock.listen(1024)
    procs, outs = [], []
    for i in range(2):
        out = f"/tmp/fpb-spread-{os.getpid()}-{i}"
        outs.append(out)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(port_sock.fileno()), str(port),
             "1" if mode == "reuseport" else "0", out],
            pass_fds=[port_sock.fileno()],
        ))
    if mode == "reuseport":
        port_sock.close()  # the workers' own sockets serve
    time.sleep(1.0)
    cpu0 = [cpu_seconds(p.pid) for p in procs]
    res = subprocess.run(["wrk", "-t1", f"-d{duration}s", *wrk_args, f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True)
    rate = 0.0
    for line in res.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
    cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    counts = []
    for p, out in zip(procs, outs, strict=True):
        p.wait(10)
        with open(out) as f:
            counts.append(int(f.read()))
        os.unlink(out)
    if mode == "shared":
        port_sock.close()
    return counts, cpu, rate


def close_under_load(migrate: str, duration: int = 4) -> tuple[int, int]:
    """Per-worker SO_REUSEPORT sockets: one worker closes its socket (as a worker does
    when a reload retires it) while wrk opens new connections; wrk's socket errors count
    the connections that were queued on it.  Returns (requests, errors)."""
    path = "/proc/sys/net/ipv4/tcp_migrate_req"
    with open(path) as f:
        before = f.read().strip()
    with open(path, "w") as f:
        f.write(migrate)
    try:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        procs = []
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, "-1", str(port), "1", f"/tmp/fpb-spread-close-{os.getpid()}-{i}"]))
        time.sleep(1.0)
        wrk = subprocess.Popen(["wrk", "-t1", "-c50", f"-d{duration}s", "-H", "Connection: close",
                                f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
        time.sleep(duration / 2)
        procs[0].send_signal(signal.SIGTERM)  # closes its listening socket and exits
        out, _ = wrk.communicate()
        procs[1].send_signal(signal.SIGTERM)
        for i, p in enumerate(procs):
            p.wait(10)
            try:
                os.unlink(f"/tmp/fpb-spread-close-{os.getpid()}-{i}")
            except OSError:
                pass
        requests = errors = 0
        for line in out.splitlines():
            if " requests in " in line:
                requests = int(line.split()[0])
            if line.strip().startswith("Socket errors:"):
                errors = sum(int(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
        return requests, errors
    finally:
        with open(path, "w") as f:
            f.write(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    loads = {
        "new connection per request, 50 clients": ["-c50", "-H", "Connection: close"],
        "keep-alive, 50 connections": ["-c50"],
        "keep-alive, 400 connections": ["-c400"],
    }
    print("| load | layout | connections per worker | share of the busier | CPU s per worker | req/s |")
    print("|---|---|---|---|---|---|")
    for name, wrk_args in loads.items():
        for mode in ("shared", "reuseport"):
            counts, cpu, rate = run(mode, wrk_args, args.duration)
            share = max(counts) / max(1, sum(counts))
            print(f"| {name} | {mode} | {counts[0]} / {counts[1]} | {share:.0%} | "
                  f"{cpu[0]:.2f} / {cpu[1]:.2f} | {rate:,.0f} |")
    if os.geteuid() == 0:
        print()
        print("| per-worker sockets, one closed under load | requests | socket errors |")
        print("|---|---|---|")
        for migrate in ("0", "1"):
            requests, errors = close_under_load(migrate, args.duration)
            print(f"| net.ipv4.tcp_migrate_req={migrate} | {requests} | {errors} |")


if __name__ == "__main__":
    main()
