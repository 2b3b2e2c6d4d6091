"""``fleetproxy vrrp run | check | status | maintenance``."""

from __future__ import annotations

import argparse
import json
import logging
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
    from .control import request

    status, doc = request(path, "GET", "/v1/status", timeout=timeout)
    if status != 200 or not isinstance(doc, dict):
        raise ValueError(f"status {status}: {doc}")
    return doc


def _socket_path(args: argparse.Namespace) -> str | None:
    path = args.socket
    if path is None and args.config:
        cfg = _load(args.config)
        if cfg is None:
            return None
        path = cfg.status_socket
    return path or DEFAULT_STATUS_SOCKET


def _status(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    if path is None:
        return 1
    try:
        doc = fetch_status(path)
    except (OSError, ValueError) as exc:
        print(f"fleetproxy vrrp status: no daemon answers on {path}: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _table(doc["instances"])
    return 0


def _maintenance(args: argparse.Namespace) -> int:
    from .control import request

    path = _socket_path(args)
    if path is None:
        return 1
    body: dict = {"maintenance": args.mode == "on"}
    if args.instance:
        body["instances"] = args.instance
    try:
        status, doc = request(path, "PUT", "/v1/maintenance", body, timeout=10.0)
    except (OSError, ValueError) as exc:
        print(f"fleetproxy vrrp maintenance: no daemon answers on {path}: {exc}", file=sys.stderr)
        return 3
    if status != 200:
        msg = doc.get("error") if isinstance(doc, dict) else doc
        print(f"fleetproxy vrrp maintenance: {msg}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    chosen = set(args.instance or [i["name"] for i in doc["status"]["instances"]])
    changed = set(doc["changed"])
    for name in sorted(chosen):
        print(f"{name}: maintenance {args.mode}" + ("" if name in changed else " (already)"))
    _table([i for i in doc["status"]["instances"] if i["name"] in chosen])
    return 0


def _table(instances: list[dict]) -> None:
    rows = [("INSTANCE", "INTERFACE", "VRID", "STATE", "PRIO", "MASTER", "VIPS", "SINCE", "REASON")]
    for i in instances:
        held = ",".join(i["virtual_ips"]) + (" (held)" if i["vips_held"] else "")
        since = time.strftime("%H:%M:%S", time.localtime(i["since"]))
        prio = str(i["priority"]) if i["priority"] == i["base_priority"] else f"{i['priority']}({i['base_priority']})"
        rows.append((i["name"], i["interface"], str(i["vrid"]), i["state"], prio,
                     i["master"] or "-", held, since, i["reason"]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])


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

    p = sub.add_parser(
        "maintenance",
        help="take instances out of service (the peer takes the VIPs at once) or bring them back",
        description="on: a master leaves at once with a priority-0 advertisement (the backup takes over "
        "after Skew_Time) and the instance stays out, also across restarts with state_file, until "
        "'off', which lets it join again as a backup. Needs root or the daemon's uid.",
    )
    p.add_argument("mode", choices=["on", "off"])
    p.add_argument("-i", "--instance", action="append", metavar="NAME",
                   help="this instance only (repeatable; default: every instance)")
    p.add_argument("-c", "--config", help="find the control socket in this configuration")
    p.add_argument("-s", "--socket", help=f"control socket (default {DEFAULT_STATUS_SOCKET})")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.set_defaults(func=_maintenance)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
