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
    from .config import ConfigError, load
    from .process import run

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{args.config}: {line}", file=sys.stderr)
        return 1
    return run(cfg, event_loop=args.event_loop)


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
