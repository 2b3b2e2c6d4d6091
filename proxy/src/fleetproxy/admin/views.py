"""Read-only views of the master's runtime, shared by the JSON API, the HAProxy
runtime API, the stats page and the metrics endpoint."""

from __future__ import annotations

import os
import time
from typing import Any

from .. import __version__
from ..runtime import DOWN, DRAIN, MAINT, UP, Backend, Frontend, Server

HAPROXY_COMPAT_VERSION = "2.6.0"  # runtime API level implemented (show info parsers look at it)
CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


def downtime(s: Server, now: float) -> float:
    return s.downtime + (now - s.last_change if s.health == DOWN else 0.0)


def haproxy_status(s: Server, checker: Any = None) -> str:
    """HAProxy's status column: UP, DOWN, MAINT, DRAIN, with transitions ("UP 1/3")."""
    if s.state == MAINT:
        return "MAINT"
    counts = checker.counts.get(id(s)) if checker is not None else None
    if s.health == DOWN:
        if counts and counts[0] and s.check_enabled:
            return f"DOWN {counts[0]}/{s.cfg.rise}"
        return "DOWN"
    if s.state == DRAIN:
        return "DRAIN"
    if counts and counts[1] and s.check_enabled:
        return f"UP {counts[1]}/{s.cfg.fall}"
    return "UP"


def responses(values: list[int]) -> dict[str, int]:
    return {CLASSES[i]: values[i] for i in (1, 2, 3, 4, 5, 0)}


def server_view(s: Server, now: float) -> dict[str, Any]:
    return {
        "name": s.name,
        "backend": s.backend.name,
        "address": f"{s.host}:{s.port}" if ":" not in s.host else f"[{s.host}]:{s.port}",
        "state": s.state,
        "health": s.health,
        "usable": s.usable,
        "backup": s.backup,
        "weight": s.weight,
        "admin_weight": s.uweight,
        "config_weight": s.config_weight,
        "maxconn": s.cfg.maxconn or 0,
        "cookie": s.cookie if s.backend.cookie is not None else None,
        "check": {
            "configured": s.check,
            "enabled": s.check_enabled,
            "status": s.check_status or None,
            "description": s.check_desc or None,
            "duration_ms": s.check_duration if s.check_duration >= 0 else None,
            "failures": s.check_fails,
            "count": s.check_count,
            "last_s": round(now - s.check_at, 3) if s.check_at >= 0 else None,
            "inter_ms": int((s.cfg.inter or 0) * 1000),
            "rise": s.cfg.rise,
            "fall": s.cfg.fall,
        },
        "sessions": {"current": s.active, "max": s.max_active, "total": s.total},
        "active_requests": s.active,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "responses": responses(s.responses),
        "errors": {"connect": s.conn_errors, "response": s.resp_errors},
        "retries": s.retries,
        "redispatches": s.redispatches,
        "downtime_s": round(downtime(s, now), 3),
        "last_change_s": round(now - s.last_change, 3),
        "origin": ("config" if any(c is s.cfg for c in s.backend.cfg.servers) else "runtime"),
        "definition": s.cfg.model_dump(mode="json", exclude_none=True),
    }


def backend_view(b: Backend, now: float, servers: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": b.name,
        "mode": b.mode,
        "balance": b.algorithm,
        "status": "UP" if b.usable else "DOWN",
        "usable_servers": len(b.usable),
        "sessions": {"current": b.active, "total": b.total},
        "queue": b.queued,
        "bytes_in": b.bytes_in,
        "bytes_out": b.bytes_out,
        "responses": responses(b.responses),
        "no_server": b.no_server,
        "queue_timeouts": b.queue_timeouts,
    }
    if servers:
        out["servers"] = [server_view(s, now) for s in b.servers]
    return out


def frontend_view(f: Frontend) -> dict[str, Any]:
    return {
        "name": f.name,
        "mode": f.mode,
        "bind": f.binds,
        "default_backend": f.cfg.default_backend,
        "sessions": {"current": f.conns, "max": f.max_conns, "total": f.total_conns},
        "maxconn": f.maxconn,
        "requests": f.requests,
        "bad_requests": f.bad_requests,
        "tls_handshake_failures": f.tls_failures,
        "bytes_in": f.bytes_in,
        "bytes_out": f.bytes_out,
        "responses": responses(f.responses),
    }


def info_view(master: Any) -> dict[str, Any]:
    workers = [
        {"pid": w.pid, "generation": w.generation, "stopping": w.stopping,
         "ready": w.ready.done() and w.ready.exception() is None}
        for w in master.workers
    ]
    return {
        "name": "fleetproxy",
        "version": __version__,
        "haproxy_runtime_api": HAPROXY_COMPAT_VERSION,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - master.started, 3),
        "config": master.config_path,
        "workers": workers,
        "nbproc_workers": master.nworkers,
        "generation": master.generation,
        "reloads": master.reloads,
        "last_reload_error": master.last_reload_error or None,
        "maxconn": master.cfg.global_.maxconn,
        "state_file": master.cfg.global_.state_file,
        "current_connections": master.process_conns(),
    }


__all__ = ["DOWN", "DRAIN", "MAINT", "UP", "backend_view", "frontend_view", "haproxy_status",
           "info_view", "server_view"]
