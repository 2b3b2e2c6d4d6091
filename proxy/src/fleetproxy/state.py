"""What operators changed at runtime, kept across reloads and restarts.

The master records, per server, the administrative ``state``, weight, forced
health and whether checks are enabled, together with a fingerprint of the
server's definition; plus the servers added and deleted at runtime.  When a
configuration is (re)loaded, :func:`changes` turns that record into change
messages: a server whose definition is unchanged gets its runtime values back,
a server whose definition changed takes the configuration's values, a server
added at runtime comes back unless the configuration now defines that name,
and a deleted one stays deleted unless its definition changed.

The state file is JSON, written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from .config import Config, ServerConfig, resolve_server
from .runtime import Runtime, fingerprint

log = logging.getLogger("fleetproxy.state")

VERSION = 1


def empty() -> dict[str, Any]:
    return {"version": VERSION, "servers": {}, "added": {}, "deleted": {}}


def capture(runtime: Runtime, added: dict[str, dict[str, Any]], deleted: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The record of ``runtime`` (master side)."""
    servers: dict[str, dict[str, Any]] = {}
    for be in runtime.backends.values():
        entries = servers.setdefault(be.name, {})
        for s in be.servers:
            entries[s.name] = {
                "fp": fingerprint(s.cfg),
                "state": s.state,
                "weight": s.uweight,
                "health": s.health,
                "check_enabled": s.check_enabled,
            }
    return {"version": VERSION, "servers": servers, "added": added, "deleted": deleted}


def changes(cfg: Config, record: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Change messages that bring a fresh runtime of ``cfg`` to the recorded state.

    Returns (changes, added, deleted) where the last two are the runtime
    additions and deletions that still apply under this configuration.
    """
    out: list[dict[str, Any]] = []
    backends = {b.name: b for b in cfg.backends}
    added: dict[str, dict[str, Any]] = {}
    deleted: dict[str, dict[str, str]] = {}

    # Deletions first: a configuration server deleted at runtime stays deleted
    # while the file still defines it the same way.
    for be_name, servers in (record.get("deleted") or {}).items():
        be = backends.get(be_name)
        if be is None:
            continue
        current = {s.name: fingerprint(s) for s in be.servers}
        for name, fp in servers.items():
            if current.get(name) == fp:
                deleted.setdefault(be_name, {})[name] = fp
                out.append({"op": "del_server", "backend": be_name, "server": name})

    # Then additions: a server added at runtime comes back, unless the file now
    # defines that name itself (a runtime replacement of a file server is kept
    # only while its deletion above still holds).
    for be_name, servers in (record.get("added") or {}).items():
        be = backends.get(be_name)
        if be is None:
            continue
        names = {s.name for s in be.servers} - set(deleted.get(be_name, {}))
        for name, server_cfg in servers.items():
            if name in names:
                continue  # the configuration defines it now: configuration wins
            try:
                srv = resolve_server(ServerConfig.model_validate(server_cfg), be, cfg.defaults)
            except Exception as exc:
                log.warning("dropping runtime server %s/%s from state: %s", be_name, name, exc)
                continue
            dumped = srv.model_dump(mode="json")
            added.setdefault(be_name, {})[name] = dumped
            out.append({"op": "add_server", "backend": be_name, "config": dumped})

    gone = {(b, n) for b, names in deleted.items() for n in names
            if n not in added.get(b, {})}
    for be_name, servers in (record.get("servers") or {}).items():
        be = backends.get(be_name)
        if be is None:
            continue
        current = {s.name: s for s in be.servers}
        for name, entry in servers.items():
            if (be_name, name) in gone:
                continue
            dyn = added.get(be_name, {}).get(name)
            srv_cfg = ServerConfig.model_validate(dyn) if dyn is not None else current.get(name)
            if srv_cfg is None:
                continue
            if entry.get("fp") != fingerprint(srv_cfg):
                continue  # the definition changed: the configuration's values apply
            change: dict[str, Any] = {"op": "server", "backend": be_name, "server": name}
            for key in ("state", "health", "check_enabled"):
                if key in entry:
                    change[key] = entry[key]
            if "weight" in entry:
                change["uweight"] = change["weight"] = entry["weight"]
            out.append(change)
    return out, added, deleted


def load(path: str | None) -> dict[str, Any]:
    if not path:
        return empty()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return empty()
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return empty()
    if not isinstance(data, dict) or data.get("version") != VERSION:
        log.warning("ignoring state file %s: unknown format", path)
        return empty()
    return data


def save(path: str | None, record: dict[str, Any]) -> None:
    if not path:
        return
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write state file %s: %s", path, exc)
