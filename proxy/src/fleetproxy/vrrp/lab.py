"""A throw-away LAN of network namespaces for the failover tests and benchmark.

``Lab`` builds one Linux bridge, ``n`` node namespaces and one observer namespace,
each joined to the bridge by a veth pair whose inner end is called ``eth0``, all in
198.18.0.0/15 (RFC 2544). It runs daemons (fleetproxy or keepalived) inside the
nodes, and measures from the observer what the rest of the network sees: who
answers ARP for a virtual IP, and which gratuitous ARPs go by.

Every name starts with a prefix (default ``fpv``) and the creating process id, so
concurrent runs do not collide and leftovers of dead runs can be told apart and
removed. :meth:`Lab.close` removes everything it made, also after a failure.
Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces) and ``ip`` (iproute2).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CLONE_NEWNET = 0x40000000
ETH_P_ARP = 0x0806
_counter = itertools.count()
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_libc = ctypes.CDLL(None, use_errno=True)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def available() -> str | None:
    """None if labs can be built here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    probe = f"fpvprobe{os.getpid()}"
    r = run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns unavailable: {r.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(prefix: str = "fpv") -> None:
    """Remove namespaces and bridges of labs whose creating process is gone."""
    pat = re.compile(rf"^{prefix}(\d+)x[a-z0-9]+$")
    netns = run("ip", "netns", "list", check=False).stdout.split("\n")
    for line in netns:
        name = line.split(" ")[0]
        m = pat.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_netns_pids(name)
            run("ip", "netns", "del", name, check=False)
    links = run("ip", "-o", "link", "show", check=False).stdout.split("\n")
    for line in links:
        parts = line.split(": ")
        if len(parts) > 1:
            name = parts[1].split("@")[0]
            m = pat.match(name)
            if m and not _pid_alive(int(m.group(1))):
                run("ip", "link", "del", name, check=False)
                _iptables_forward(name, add=False)


def _kill_netns_pids(name: str) -> None:
    """SIGKILL what still runs in one of our namespaces (daemons, their hooks and
    checks, keepalived's children): processes a lab started, directly or not."""
    for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _iptables_forward(bridge: str, add: bool) -> None:
    """Docker sets the FORWARD policy to DROP and bridged frames go through iptables
    (br_netfilter): let our own bridge forward to itself."""
    if shutil.which("iptables") is None:
        return
    rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    if add:
        run("iptables", "-I", *rule, check=False)
    else:
        for _ in range(5):
            if run("iptables", "-D", *rule, check=False).returncode != 0:
                break


@contextlib.contextmanager
def in_netns(name: str):
    """Run the body of the ``with`` in namespace ``name`` (this thread only); sockets
    opened inside stay in that namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


@dataclass
class Node:
    lab: Lab
    index: int
    ns: str
    veth: str  # the bridge-side end, on the host
    ip: str
    mac: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.ns, *argv, check=check)

    def addresses(self) -> list[str]:
        out = run("ip", "-n", self.ns, "-j", "-4", "addr", "show", "dev", "eth0").stdout
        return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])]

    def has(self, address: str) -> bool:
        return address in self.addresses()

    def popen(self, argv: list[str], log: str, **kw) -> subprocess.Popen:
        fh = open(self.lab.path(log), "ab")  # noqa: SIM115 - closed by the child's exit
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=fh, stderr=subprocess.STDOUT, **kw)
        fh.close()
        self.procs.append(p)
        self.lab.procs.append(p)
        return p

    def partition(self, cut: bool) -> None:
        """Stop (or restart) forwarding on this node's bridge port; the link stays up."""
        run("bridge", "link", "set", "dev", self.veth, "state", "0" if cut else "3")


class Lab:
    SUBNET = "198.18.51"
    PREFIXLEN = 24
    OBSERVER_IP = "198.18.51.2"

    def __init__(self, nodes: int = 2, prefix: str = "fpv") -> None:
        self.tag = f"{prefix}{os.getpid()}x{_B36[next(_counter) % 36]}"
        self.bridge = f"{self.tag}br"
        self.nodes: list[Node] = []
        self.procs: list[subprocess.Popen] = []
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self._netns: list[str] = []
        self._n = nodes
        self.observer: Node | None = None

    # -- build and tear down ---------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        # Multicast snooping would need IGMP queriers; flood like a plain switch.
        run("ip", "link", "set", self.bridge, "type", "bridge", "mcast_snooping", "0")
        run("ip", "link", "set", self.bridge, "up")
        _iptables_forward(self.bridge, add=True)
        for i in range(1, self._n + 1):
            self.nodes.append(self._add(f"n{i}", f"h{i}", f"{self.SUBNET}.{10 + i}", i))
        self.observer = self._add("obs", "ho", self.OBSERVER_IP, 0)

    def _add(self, role: str, hostend: str, ip: str, index: int) -> Node:
        ns = f"{self.tag}{role}"
        veth = f"{self.tag}{hostend}"
        run("ip", "netns", "add", ns)
        self._netns.append(ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        run("ip", "link", "set", f"{veth}p", "netns", ns)
        run("ip", "-n", ns, "link", "set", f"{veth}p", "name", "eth0")
        run("ip", "link", "set", veth, "master", self.bridge, "up")
        run("ip", "-n", ns, "addr", "add", f"{ip}/{self.PREFIXLEN}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        node = Node(self, index, ns, veth, ip)
        info = json.loads(run("ip", "-n", ns, "-j", "link", "show", "eth0").stdout)
        node.mac = info[0]["address"]
        return node

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(Exception):
                    p.wait(5)
        for node in self.nodes:
            for f in self.dir.glob(f"{node.ns}-*.pid"):
                with contextlib.suppress(Exception):
                    pid = int(f.read_text().strip())
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "keepalived":
                        os.kill(pid, signal.SIGKILL)
        for ns in self._netns:
            _kill_netns_pids(ns)
            run("ip", "netns", "del", ns, check=False)
        run("ip", "link", "del", self.bridge, check=False)
        _iptables_forward(self.bridge, add=False)
        if not os.environ.get("FPV_KEEP_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def log(self, name: str) -> str:
        try:
            return Path(self.path(name)).read_text(errors="replace")
        except OSError:
            return ""

    # -- fleetproxy vrrp ---------------------------------------------------------------

    def vrrp_config(self, node: Node, **instance) -> dict:
        inst = {
            "name": "vip",
            "interface": "eth0",
            "vrid": 51,
            "priority": 100,
            "advert_interval": "100ms",
            "virtual_ips": [f"{self.SUBNET}.100/{self.PREFIXLEN}"],
            "garp": {"repeat": 2, "delay": "0s"},
        }
        inst.update(instance)
        return {
            "status_socket": self.path(f"{node.ns}.sock"),
            "instances": [inst],
        }

    def start_vrrp(self, node: Node, wait: bool = True, *, config: dict | None = None, **instance) -> subprocess.Popen:
        cfg = config or self.vrrp_config(node, **instance)
        path = self.path(f"{node.ns}-vrrp.yml")
        Path(path).write_text(yaml.safe_dump(cfg))
        p = node.popen([sys.executable, "-m", "fleetproxy", "vrrp", "run", "-c", path], f"{node.ns}-vrrp.log")
        p.status_socket = cfg["status_socket"]  # type: ignore[attr-defined]
        if wait:
            self.wait_state(node, ("BACKUP", "MASTER", "FAULT", "MAINT"), proc=p)
        return p

    def status(self, node: Node) -> dict | None:
        from .cli import fetch_status

        try:
            return fetch_status(self.path(f"{node.ns}.sock"), timeout=1.0)["instances"][0]
        except (OSError, ValueError, IndexError, KeyError):
            return None

    def state(self, node: Node) -> str | None:
        st = self.status(node)
        return st["state"] if st else None

    def wait_state(self, node: Node, states, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> dict:
        if isinstance(states, str):
            states = (states,)
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = self.status(node)
            if st and st["state"] in states:
                return st
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{node.ns}: daemon exited with {proc.returncode}:\n{self.log(f'{node.ns}-vrrp.log')}")
            time.sleep(0.02)
        raise AssertionError(f"{node.ns}: state {st and st['state']}, wanted {states} within {timeout}s\n"
                             f"{self.log(f'{node.ns}-vrrp.log')}")

    # -- keepalived ------------------------------------------------------------------

    def start_keepalived(self, node: Node, *, priority: int, advert_interval: float = 0.1, vrid: int = 51,
                         unicast_peers: list[str] | None = None, track_tcp: int | None = None,
                         preempt: bool = True) -> subprocess.Popen:
        vip = f"{self.SUBNET}.100/{self.PREFIXLEN}"
        lines = [
            "global_defs {",
            f"  router_id {node.ns}",
            "  vrrp_version 3",
            "  vrrp_garp_master_delay 0",
            "  vrrp_garp_master_repeat 2",
            "  script_user root",
            "  enable_script_security",
            "}",
        ]
        if track_tcp is not None:
            # keepalived 2.2 takes whole seconds for a script interval; 1 s with fall 1
            # is the fastest it can notice a dead service this way.
            lines += [
                "vrrp_script chk_tcp {",
                f"  script \"{shutil.which('bash') or '/bin/bash'} -c '</dev/tcp/127.0.0.1/{track_tcp}'\"",
                "  interval 1",
                "  timeout 1",
                "  fall 1",
                "  rise 1",
                "}",
            ]
        lines += [
            "vrrp_instance VI {",
            "  state BACKUP",
            "  interface eth0",
            f"  virtual_router_id {vrid}",
            f"  priority {priority}",
            f"  advert_int {advert_interval:g}",
            "  nopreempt" if not preempt else "",
            f"  virtual_ipaddress {{\n    {vip} dev eth0\n  }}",
        ]
        if unicast_peers:
            lines += [f"  unicast_src_ip {node.ip}", "  unicast_peer {", *[f"    {p}" for p in unicast_peers], "  }"]
        if track_tcp is not None:
            lines += ["  track_script {", "    chk_tcp", "  }"]
        lines += ["}"]
        conf = self.path(f"{node.ns}-keepalived.conf")
        Path(conf).write_text("\n".join(lines) + "\n")
        pid, vpid = self.path(f"{node.ns}-ka.pid"), self.path(f"{node.ns}-kv.pid")
        for f in (pid, vpid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
        p = node.popen(
            [shutil.which("keepalived") or "keepalived", "-n", "-l", "-D", "-R", "--no-syslog",
             "-f", conf, "-p", pid, "-r", vpid],
            f"{node.ns}-keepalived.log",
        )
        p.vrrp_pidfile = vpid  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not os.path.exists(vpid):
            if p.poll() is not None:
                raise AssertionError(f"keepalived exited: {self.log(f'{node.ns}-keepalived.log')}")
            time.sleep(0.02)
        return p

    @staticmethod
    def kill_keepalived(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """SIGKILL: the VRRP child first (no goodbye advert), then the parent.
        SIGTERM: the parent, which stops the child gracefully (priority 0)."""
        if sig == signal.SIGKILL:
            with contextlib.suppress(Exception):
                os.kill(int(Path(p.vrrp_pidfile).read_text().strip()), signal.SIGKILL)  # type: ignore[attr-defined]
        p.send_signal(sig)
        p.wait(10)

    # -- observing -------------------------------------------------------------------

    def probe(self) -> ArpProbe:
        assert self.observer is not None
        return ArpProbe(self.observer)


_ARP = struct.Struct("!HHBBH6s4s6s4s")


class AddrWatch:
    """RTM_DELADDR / RTM_NEWADDR events of one namespace, with arrival times."""

    RTMGRP_IPV4_IFADDR = 0x10

    def __init__(self, node: Node) -> None:
        with in_netns(node.ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
            self.sock.bind((0, self.RTMGRP_IPV4_IFADDR))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AddrWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait(self, address: str, event: str, until: float) -> float | None:
        """monotonic time of the first ``event`` ("add" or "del") for ``address``."""
        want = 20 if event == "add" else 21  # RTM_NEWADDR, RTM_DELADDR
        packed = socket.inet_aton(address)
        while True:
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            data = self.sock.recv(65536)
            now = time.monotonic()
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, off)
                if length < 16:
                    break
                if mtype == want:
                    attrs = off + 16 + 8  # nlmsghdr + ifaddrmsg
                    while attrs + 4 <= off + length:
                        alen, atype = struct.unpack_from("=HH", data, attrs)
                        if alen < 4:
                            break
                        if atype in (1, 2) and data[attrs + 4 : attrs + alen] == packed:
                            return now
                        attrs += (alen + 3) & ~3
                off += (length + 3) & ~3


class ArpProbe:
    """ARP from the observer namespace: ask who has an address, watch the answers."""

    def __init__(self, observer: Node) -> None:
        self.node = observer
        with in_netns(observer.ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            self.sock.bind(("eth0", ETH_P_ARP))
        self.mac = bytes.fromhex(observer.mac.replace(":", ""))
        self.ip = socket.inet_aton(observer.ip)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ArpProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def drain(self) -> None:
        while select.select([self.sock], [], [], 0)[0]:
            self.sock.recv(2048)

    def ask(self, address: str) -> None:
        frame = b"\xff" * 6 + self.mac + struct.pack("!H", ETH_P_ARP)
        frame += _ARP.pack(1, 0x0800, 6, 4, 1, self.mac, self.ip, b"\0" * 6, socket.inet_aton(address))
        self.sock.send(frame.ljust(60, b"\0"))

    def frames(self, until: float):
        """Yield (time, op, sender mac, sender ip, target ip) of ARP frames until ``until``."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            if not select.select([self.sock], [], [], left)[0]:
                return
            data = self.sock.recv(2048)
            now = time.monotonic()
            if len(data) < 42:
                continue
            _, _, _, _, op, sha, spa, _, tpa = _ARP.unpack_from(data, 14)
            yield now, op, sha.hex(":"), socket.inet_ntoa(spa), socket.inet_ntoa(tpa)

    def first_answer(self, address: str, mac: str, t0: float, timeout: float, period: float = 0.005) -> float | None:
        """Ask for ``address`` every ``period`` seconds; the time from ``t0`` to the first
        reply that gives ``mac`` (None if none within ``timeout`` of t0)."""
        mac = mac.lower()
        end = t0 + timeout
        next_ask = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_ask:
                self.ask(address)
                next_ask += period
            for when, op, sha, spa, _ in self.frames(min(next_ask, end)):
                if op == 2 and spa == address and sha == mac:
                    return when - t0
        return None

    def garps(self, address: str, until: float) -> list[tuple[float, str]]:
        """Gratuitous ARPs for ``address`` (sender = target = address): (time, sender MAC)."""
        return [(t, sha) for t, op, sha, spa, tpa in self.frames(until) if spa == address and tpa == address]
