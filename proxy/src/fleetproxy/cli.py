"""The ``fleetproxy`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__


def _check(args: argparse.Namespace) -> int:
    from .config import ConfigError, load

    try:
        load(args.config)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{args.config}: {line}", file=sys.stderr)
        print(f"{args.config}: configuration is invalid ({len(exc.errors)} error(s))", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{args.config}: configuration is valid")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .master import run

    return run(args.config, event_loop=args.event_loop)


def _reload(args: argparse.Namespace) -> int:
    """Ask the running proxy to reload and report the outcome (for ExecReload=)."""
    import json
    import os
    import signal

    socket_path = args.socket
    if socket_path is None and args.config:
        import yaml

        try:
            with open(args.config, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
            socket_path = ((doc.get("global") or {}).get("admin") or {}).get("socket")
        except (OSError, yaml.YAMLError, AttributeError):
            socket_path = None
    if socket_path:
        from .adminclient import AdminClient, AdminError

        try:
            status, body = AdminClient(socket_path, timeout=args.timeout).request("POST", "/v1/reload")
        except AdminError as exc:
            print(f"fleetproxy reload: {exc}", file=sys.stderr)
            return 1
        if status == 200:
            print(f"reloaded (generation {body.get('generation')})")
            return 0
        for line in body.get("errors") or [json.dumps(body)]:
            print(f"reload refused: {line}", file=sys.stderr)
        return 1
    if args.pid:
        os.kill(args.pid, signal.SIGHUP)
        print(f"SIGHUP sent to {args.pid} (no admin socket configured: the outcome is in the log)")
        return 0
    print("fleetproxy reload: give --socket, a -c file with global.admin.socket, or --pid", file=sys.stderr)
    return 2


def _demo_backend(args: argparse.Namespace) -> int:
    from .demo import serve_backend

    return serve_backend(args.listen, args.name)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.config, requests=args.requests, keep=not args.no_wait)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetproxy", description="HAProxy-class TCP/HTTP load balancer with VRRPv3 failover"
    )
    parser.add_argument("--version", action="version", version=f"fleetproxy {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a configuration file")
    p.add_argument("-c", "--config", required=True, help="YAML configuration file")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.set_defaults(func=_check)

    p = sub.add_parser("run", help="run the proxy in the foreground")
    p.add_argument("-c", "--config", required=True, help="YAML configuration file")
    p.add_argument(
        "--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
        help="event loop implementation (default: uvloop when installed)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("reload", help="reload a running proxy and report the outcome")
    p.add_argument("-c", "--config", help="configuration file (to find global.admin.socket)")
    p.add_argument("--socket", help="the JSON API's UNIX socket")
    p.add_argument("--pid", type=int, help="fallback without admin socket: send SIGHUP to this PID")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    p.set_defaults(func=_reload)

    p = sub.add_parser("demo-backend", help="a tiny HTTP backend for demos")
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--name", required=True, help="name reported in responses")
    p.set_defaults(func=_demo_backend)

    p = sub.add_parser("demo", help="run the proxy with demo backends for every server of a config")
    p.add_argument("-c", "--config", required=True, help="YAML configuration file")
    p.add_argument("-n", "--requests", type=int, default=12, help="requests to show (default 12)")
    p.add_argument("--no-wait", action="store_true", help="stop after showing the requests")
    p.set_defaults(func=_demo)

    p = sub.add_parser("vrrp", help="VRRPv3 virtual-IP failover daemon", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["vrrp"]:
        from .vrrp.cli import main as vrrp_main

        return vrrp_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    return args.func(args)
