"""The real proxy process: ``python -m fleetproxy run -c FILE``."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def _port_window() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range, where no client socket takes its local port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(1024, low - 12000), low


_WINDOW = _port_window()
_next_port = _WINDOW[0] + (os.getpid() * 7919) % (_WINDOW[1] - _WINDOW[0])


def _bindable(port: int) -> bool:
    """Nothing holds ``port`` on any IPv4 or IPv6 address (no SO_REUSEADDR: TIME_WAIT counts too)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
        return True
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
    with socket.socket(socket.AF_INET) as s:  # no IPv6 on this host
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on every address of this host right now, for any ``host``.

    Not ``bind(0)``: that picks from the ephemeral range, where the suite's own client
    connections take their local ports, and a ``[::]`` bind then failed with EADDRINUSE in
    CI. Ports come in turn from a window below that range, starting at a place that depends
    on the PID so that two test processes rarely walk the same ports.
    """
    global _next_port
    low, high = _WINDOW
    for _ in range(high - low):
        candidate = _next_port
        _next_port = low + (_next_port + 1 - low) % (high - low)
        if _bindable(candidate):
            return candidate
    raise RuntimeError(f"no free TCP port in {low}-{high - 1}")


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS, KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Proxy:
    """One proxy process; stdout (the access log) and stderr go to files."""

    def __init__(
        self,
        config: dict[str, Any] | str,
        workdir: Path,
        event_loop: str | None = None,
        name: str = "proxy",
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.event_loop = event_loop
        self.path = workdir / f"{name}.yml"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.path.write_text(text)
        doc = yaml.safe_load(text)
        self.binds: dict[str, list[tuple[str, int]]] = {}
        for fe in doc.get("frontends", []):
            out = []
            for b in fe["bind"]:
                if isinstance(b, dict):  # a bind object (TLS): {"address": ..., "tls": ...}
                    b = b["address"]
                host, _, port = b.rpartition(":")
                host = host.strip("[]")
                out.append(("127.0.0.1" if host in ("*", "", "0.0.0.0") else "::1" if host == "::" else host,
                            int(port)))
            self.binds[fe["name"]] = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, wait: bool = True) -> Proxy:
        cmd = [sys.executable, "-m", "fleetproxy", "run", "-c", str(self.path)]
        if self.event_loop:
            cmd += ["--event-loop", self.event_loop]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until every bind address has been logged as listening and accepts a connection."""
        assert self.proc is not None
        expected = sum(len(v) for v in self.binds.values())
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(f"proxy exited with {rc} while starting:\n{self.stderr()}")
            if self.stderr().count(" listening on ") >= expected:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"proxy did not start within {timeout}s:\n{self.stderr()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait; SIGKILL (and an error) if it does not stop in time."""
        if self.proc is None:
            return 0
        if self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            return self.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError(f"proxy {self.pid} ignored SIGTERM for {timeout}s:\n{self.stderr()}") from None

    # -- addresses ------------------------------------------------------------------------------
    def port(self, frontend: str | None = None, index: int = 0) -> int:
        name = frontend or next(iter(self.binds))
        return self.binds[name][index][1]

    def addr(self, frontend: str | None = None, index: int = 0) -> tuple[str, int]:
        name = frontend or next(iter(self.binds))
        return self.binds[name][index]

    # -- output ---------------------------------------------------------------------------------
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[str]:
        try:
            return self.stdout_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_log(self, predicate: Callable[[list[str]], bool] | int, timeout: float = 5.0) -> list[str]:
        """Access-log lines once ``predicate(lines)`` holds (an int: that many lines)."""
        if isinstance(predicate, int):
            count = predicate
            predicate = lambda lines: len(lines) >= count  # noqa: E731
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines()
            if predicate(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def assert_clean_exit(self) -> None:
        """Stopped by SIGTERM with status 0 and no traceback on stderr."""
        rc = self.stop()
        err = self.stderr()
        assert rc == 0, f"proxy exited with {rc}:\n{err}"
        assert "Traceback" not in err, f"proxy printed a traceback:\n{err}"
        assert not re.search(r"\b(ERROR|CRITICAL)\b", err), f"proxy logged errors:\n{err}"
