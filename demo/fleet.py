"""The fleet demo: a proxy pair behind a virtual IP in front of application servers,
each a Docker container, deployed with the collection's playbooks/site.yml.

    python demo/fleet.py up      create (or reuse) the containers, deploy, demonstrate
    python demo/fleet.py down    remove the containers and their network

`make demo` / `make demo-down` run these with the project's virtualenv, after making
sure a Docker engine and the local systemd image exist. Everything the demo creates
is named in inventories/demo (containers, addresses, network) and labelled
``fleetproxy.demo``. Needs root (Docker, and nsenter to watch the VIP).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "molecule", "shared"))

import fleetlab as lab  # noqa: E402

INVENTORY = os.path.join(ROOT, "inventories", "demo")
IMAGE = os.environ.get("FLEETPROXY_MOLECULE_IMAGE", "fleetproxy/debian12-systemd:latest")
LABEL = "fleetproxy.demo"
FLEETPROXY = "/opt/fleetproxy/venv/bin/fleetproxy"
VRRP_CONFIG = "/etc/fleetproxy/vrrp.yml"
BIN = os.path.dirname(sys.executable)


def say(text: str = "") -> None:
    print(text, flush=True)


class Fleet:
    def __init__(self) -> None:
        out = subprocess.run([os.path.join(BIN, "ansible-inventory"), "-i", INVENTORY, "--list"],
                             check=True, capture_output=True, text=True).stdout
        inv = json.loads(out)
        self.hostvars = inv["_meta"]["hostvars"]
        self.proxies = inv["proxies"]["hosts"]
        self.backends = inv["backends"]["hosts"]
        first = self.hostvars[self.proxies[0]]
        self.network = first["demo_network"]
        self.subnet = first["demo_subnet"]
        self.gateway = first["demo_gateway"]
        self.vip = first["fleetproxy_vip_addresses"][0].split("/")[0]
        self.advert = lab.duration(first["fleetproxy_vip_advert_interval"])
        self.priority = {p: int(self.hostvars[p]["fleetproxy_vip_priority"]) for p in self.proxies}

    @property
    def containers(self) -> list[str]:
        return [*self.proxies, *self.backends]

    # -- containers ----------------------------------------------------------------
    def create(self) -> None:
        if not lab.docker("network", "ls", "-q", "--filter", f"name=^{self.network}$"):
            lab.docker("network", "create", "--subnet", self.subnet, "--gateway", self.gateway,
                       "--label", LABEL, self.network)
        for name in self.containers:
            state = lab.docker("inspect", "-f", "{{.State.Status}}", name, check=False)
            if state == "running":
                continue
            if state:
                lab.docker("start", name)
                continue
            sysctls = ["--sysctl", "net.ipv4.ip_forward=0"]
            if name in self.proxies:
                # /proc/sys is read-only in a container: what the proxy role would set.
                sysctls += ["--sysctl", "net.ipv4.ip_nonlocal_bind=1"]
            lab.docker(
                "run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
                "--network", self.network, "--ip", self.hostvars[name]["demo_address"],
                # systemd as PID 1 without --privileged (see molecule/default).
                "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
                *sysctls, IMAGE, "/lib/systemd/systemd",
            )
        for name in self.containers:
            lab.wait_systemd(name, timeout=120)

    def destroy(self) -> None:
        names = lab.docker("ps", "-aq", "--filter", f"label={LABEL}")
        if names:
            lab.docker("rm", "-f", *names.split())
        if lab.docker("network", "ls", "-q", "--filter", f"label={LABEL}"):
            lab.docker("network", "rm", self.network)

    # -- deployment ----------------------------------------------------------------
    def playbook(self, path: str) -> float:
        t = time.monotonic()
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "build", "collections"),
                   ANSIBLE_PIPELINING="true", ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
        argv = [os.path.join(BIN, "ansible-playbook"), "-i", INVENTORY, path]
        say(f"  $ {' '.join(['ansible-playbook', '-i', os.path.relpath(INVENTORY, ROOT), os.path.relpath(path, ROOT)])}")
        run = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            say(run.stdout[-8000:] + run.stderr[-4000:])
            raise SystemExit(f"{os.path.relpath(path, ROOT)} failed (exit {run.returncode})")
        recap = run.stdout[run.stdout.rfind("PLAY RECAP"):].strip().splitlines()[1:]
        for line in recap:
            say("    " + " ".join(line.split()))
        return time.monotonic() - t

    # -- demonstration -------------------------------------------------------------
    def vrrp_state(self, node: str) -> str:
        out = lab.dexec(node, FLEETPROXY, "vrrp", "status", "--json", "-c", VRRP_CONFIG, check=False)
        try:
            return json.loads(out)["instances"][0]["state"]
        except (ValueError, KeyError, IndexError):
            return "?"

    def wait_ready(self, timeout: float = 60) -> None:
        """Every backend up behind the VIP: a few answers from each."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = lab.served(lab.Traffic(self.vip, rate=50, max_duration=0.4).start().stop_when_done())
            if len(seen) == len(self.backends):
                return
            time.sleep(1)
        raise SystemExit(f"the VIP {self.vip} did not answer from every backend within {timeout}s")


def spread(results: list[lab.Request]) -> str:
    seen = lab.served(results)
    width = max(seen.values(), default=1)
    lines = []
    for name, count in sorted(seen.items()):
        lines.append(f"      {name:10} {count:4}  {'#' * round(40 * count / width)}")
    fails = lab.failures(results)
    if fails:
        errors = collections.Counter(r.error for r in fails)
        lines.append(f"      failed     {len(fails):4}  ({', '.join(f'{e}: {n}' for e, n in errors.items())})")
    return "\n".join(lines)


def up(fleet: Fleet) -> None:
    t_all = time.monotonic()
    say(f"fleetproxy demo: {len(fleet.proxies)} proxies sharing a virtual IP in front of "
        f"{len(fleet.backends)} application servers, one Docker container each")
    say()
    say("1. Containers (from inventories/demo/hosts.yml):")
    fleet.create()
    for name in fleet.containers:
        role = (f"proxy, VRRP priority {fleet.priority[name]}" if name in fleet.proxies
                else f"application server {fleet.hostvars[name]['fleet_app_name']}")
        say(f"     {name:12} {fleet.hostvars[name]['demo_address']:15} {role}")
    say()
    say("2. Deployment with the collection:")
    fleet.playbook(os.path.join(ROOT, "molecule", "shared", "backends.yml"))
    fleet.playbook(os.path.join(ROOT, "playbooks", "site.yml"))
    say()

    master = max(fleet.proxies, key=lambda p: fleet.priority[p])
    backup = next(p for p in fleet.proxies if p != master)
    adverts = lab.AdvertWatch(fleet.network).start()
    with lab.VipWatch(fleet.vip, fleet.proxies) as watch:
        watch.wait_single(master, timeout=30)
        fleet.wait_ready()
        say("3. Requests spread over the backends: 40 requests to the VIP "
            f"(held by {master}, {fleet.vrrp_state(master)}):")
        results = lab.Traffic(fleet.vip, rate=40, max_duration=1.0).start().stop_when_done()
        say(spread(results))
        say()

        say(f"4. Failover: a client sends 50 requests/s to the VIP; {master} (the master) is killed (docker kill).")
        traffic = lab.Traffic(fleet.vip, rate=50, max_duration=60).start()
        time.sleep(1.0)
        t_cmd = time.monotonic()
        lab.docker("kill", master)
        watch.mark_gone(master, t_cmd)
        t_vip = watch.wait_single(backup, timeout=10)
        time.sleep(2.0)
        results = traffic.stop()
        t_last = adverts.last_from(fleet.hostvars[master]["demo_address"], before=t_vip)
        t_death = max(t_cmd, t_last) if t_last is not None else t_cmd
        gap = lab.longest_gap(results, t_cmd - 0.5, t_vip + 1.5)
        fails = lab.failures(results)
        mdi = 3 * fleet.advert + (256 - fleet.priority[backup]) * fleet.advert / 256
        say(f"     {backup} holds the VIP {1000 * (t_vip - t_death):.0f} ms after {master}'s last VRRP advertisement "
            f"(Master_Down_Interval {1000 * mdi:.0f} ms); {backup} is now {fleet.vrrp_state(backup)}")
        say(f"     the client: {len(results)} requests, {len(fails)} failed, longest time without an answer "
            f"{1000 * gap:.0f} ms")
        say("     (until the backup takes over, the dead container's network namespace still holds the VIP and")
        say("      refuses connections; requests whose SYN was lost are retransmitted by TCP to the new master)")
        after = lab.window(results, since=t_vip + 0.1)
        say(f"     answers after the failover, all through {backup}:")
        say(spread(after))
        say()

        say(f"5. {master} comes back (docker start) and, with the higher priority, takes the VIP back:")
        t_start = time.monotonic()
        lab.docker("start", master)
        watch.attach(master)
        t_back = watch.wait_single(master, timeout=90)
        overlap = max((b - a for a, b in watch.overlaps(t_start)), default=0.0)
        say(f"     {master} holds the VIP again {t_back - t_start:.1f} s after docker start (boot included); "
            f"both held it for {1000 * overlap:.0f} ms")
        fleet.wait_ready()
    adverts.close()
    say()
    say(f"The fleet is running ({time.monotonic() - t_all:.0f} s):")
    say(f"  VIP         http://{fleet.vip}/            curl -si http://{fleet.vip}/")
    say(f"  stats page  http://{fleet.vip}:8404/stats   (also /metrics, /stats;json)")
    for p in fleet.proxies:
        say(f"  {p:11} http://{fleet.hostvars[p]['demo_address']}:8404/stats   "
            f"docker exec {p} {FLEETPROXY} vrrp status -c {VRRP_CONFIG}")
    say("  inventory   inventories/demo   (ansible-playbook -i inventories/demo playbooks/site.yml)")
    say("  make demo-down removes the containers and their network.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the fleetproxy fleet demo in Docker")
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args(argv)
    fleet = Fleet()
    if args.action == "down":
        fleet.destroy()
        say(f"removed the demo containers and the network {fleet.network}")
        return 0
    up(fleet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
