"""``fleetproxy vrrp run | check | status``."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time

from ..config import ConfigError
from .config import DEFAULT_STATUS_SOCKET


def _load(path: str):
    from .config import load

    try:
        return load(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{path}: {line}", file=sys.stderr)
        print(f"{path}: configuration is invalid ({len(exc.errors)} error(s))", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    from .config import file_warnings

    cfg = _load(args.config)
    if cfg is None:
        return 1
    for where, msg in file_warnings(cfg):
        print(f"{args.config}: warning: {where}: {msg}", file=sys.stderr)
    if not args.quiet:
        print(f"{args.config}: configuration is valid ({len(cfg.instances)} instance(s))")
    return 0


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    level = logging.DEBUG if args.verbose else getattr(logging, cfg.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    # pyroute2 is chatty at INFO/DEBUG; its warnings are enough.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    from .daemon import run

    return run(cfg)


def fetch_status(path: str, timeout: float = 2.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return json.loads(b"".join(chunks))


def _status(args: argparse.Namespace) -> int:
    path = args.socket
    if path is None and args.config:
        cfg = _load(args.config)
        if cfg is None:
            return 1
        path = cfg.status_socket
    path = path or DEFAULT_STATUS_SOCKET
    try:
        doc = fetch_status(path)
    except (OSError, ValueError) as exc:
        print(f"fleetproxy vrrp status: no daemon answers on {path}: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    rows = [("INSTANCE", "INTERFACE", "VRID", "STATE", "PRIO", "MASTER", "VIPS", "SINCE", "REASON")]
    for i in doc["instances"]:
        held = ",".join(i["virtual_ips"]) + (" (held)" if i["vips_held"] else "")
        since = time.strftime("%H:%M:%S", time.localtime(i["since"]))
        prio = str(i["priority"]) if i["priority"] == i["base_priority"] else f"{i['priority']}({i['base_priority']})"
        rows.append((i["name"], i["interface"], str(i["vrid"]), i["state"], prio,
                     i["master"] or "-", held, since, i["reason"]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetproxy vrrp", description="VRRPv3 (RFC 5798) virtual-IP failover")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("-c", "--config", required=True, help="YAML configuration (e.g. /etc/fleetproxy/vrrp.yml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_run)

    p = sub.add_parser("check", help="validate a configuration file")
    p.add_argument("-c", "--config", required=True, help="YAML configuration file")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.set_defaults(func=_check)

    p = sub.add_parser("status", help="state of each instance of the running daemon")
    p.add_argument("-c", "--config", help="find the status socket in this configuration")
    p.add_argument("-s", "--socket", help=f"status socket (default {DEFAULT_STATUS_SOCKET})")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_status)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
