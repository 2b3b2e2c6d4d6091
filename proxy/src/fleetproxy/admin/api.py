"""The JSON API (aiohttp), versioned under ``/v1``.

Served on the UNIX ``socket`` (admin access; protect it with the socket's mode
and group) and, with a token, on the TCP ``listen`` address next to the stats
page and ``/metrics``.  Over TCP ``Authorization: Bearer <token>`` is
required: a missing or unknown token gets 401, a ``user`` (read-only) token
that tries to write gets 403.

Endpoints::

    GET    /v1/health                                 200 when serving (used by `fleetproxy vrrp`)
    GET    /v1/info
    GET    /v1/frontends               GET /v1/frontends/{fe}
    GET    /v1/backends                GET /v1/backends/{be}
    GET    /v1/backends/{be}/servers   GET /v1/backends/{be}/servers/{srv}
    PATCH  /v1/backends/{be}/servers/{srv}           {"state", "weight", "health", "check"}
    POST   /v1/backends/{be}/servers                  a server definition (as in the config file)
    DELETE /v1/backends/{be}/servers/{srv}?wait=30s   only in maint with no session, else 409
    POST   /v1/backends/{be}/servers/{srv}/shutdown-sessions
    POST   /v1/reload                                 200, or 400 with the configuration errors
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from aiohttp import web

from ..config import parse_duration
from .views import backend_view, frontend_view, info_view, server_view

log = logging.getLogger("fleetproxy.admin")

ADMIN, USER = "admin", "user"
LEVEL_KEY = web.AppKey("level", str)
MASTER_KEY = web.AppKey("master", object)
TOKENS_KEY = web.AppKey("tokens", object)


def load_tokens(path: str | None) -> list[tuple[str, str]]:
    """Token file: one ``admin TOKEN`` or ``user TOKEN`` per line (a bare token is admin)."""
    if not path:
        return []
    tokens = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) == 1:
                tokens.append((ADMIN, parts[0]))
            elif len(parts) == 2 and parts[0] in (ADMIN, USER):
                tokens.append((parts[0], parts[1]))
            else:
                raise ValueError(f"{path}:{n}: expected 'admin TOKEN' or 'user TOKEN'")
    return tokens


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def token_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """TCP listener: /v1 needs a token; writes need an admin token."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    level = None
    if scheme.lower() == "bearer" and token:
        for lvl, known in request.app[TOKENS_KEY]():  # type: ignore[operator]
            if hmac.compare_digest(token.strip().encode(), known.encode()):
                level = lvl
                break
    if level is None:
        return web.json_response({"error": "missing or invalid token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="fleetproxy"'})
    if request.method not in ("GET", "HEAD") and level != ADMIN:
        return error(403, "this token is read-only (level user)")
    return await handler(request)


def _master(request: web.Request) -> Any:
    return request.app[MASTER_KEY]


async def health(request: web.Request) -> web.Response:
    master = _master(request)
    # Workers that serve: during a reload the old generation serves until the new one
    # is ready (only then is it told to stop), so it counts; a reload must not look
    # like an outage to `fleetproxy vrrp`'s tracking.
    ready = [w for w in master.workers if not w.stopping and w.ready.done() and not w.ready.exception()]
    if master.stopping or master.soft_stopping:
        return web.json_response({"status": "stopping"}, status=503)
    if not ready:
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok", "workers": len(ready)})


async def info(request: web.Request) -> web.Response:
    master = _master(request)
    master.refresh_counters()
    return web.json_response(info_view(master))


async def frontends(request: web.Request) -> web.Response:
    master = _master(request)
    master.refresh_counters()
    return web.json_response([frontend_view(f) for f in master.runtime.frontends.values()])


async def frontend(request: web.Request) -> web.Response:
    master = _master(request)
    master.refresh_counters()
    fe = master.runtime.frontends.get(request.match_info["fe"])
    if fe is None:
        return error(404, f"no frontend named {request.match_info['fe']!r}")
    return web.json_response(frontend_view(fe))


async def backends(request: web.Request) -> web.Response:
    master = _master(request)
    master.refresh_counters()
    now = master.loop.time()
    return web.json_response([backend_view(b, now) for b in master.runtime.backends.values()])


def _backend(request: web.Request) -> Any:
    master = _master(request)
    be = master.runtime.backends.get(request.match_info["be"])
    if be is None:
        raise web.HTTPNotFound(text=_json_error(f"no backend named {request.match_info['be']!r}"),
                               content_type="application/json")
    return be


def _json_error(message: str) -> str:
    import json

    return json.dumps({"error": message})


async def backend(request: web.Request) -> web.Response:
    master = _master(request)
    master.refresh_counters()
    return web.json_response(backend_view(_backend(request), master.loop.time()))


async def servers(request: web.Request) -> web.Response:
    master = _master(request)
    master.refresh_counters()
    now = master.loop.time()
    return web.json_response([server_view(s, now) for s in _backend(request).servers])


def _server(request: web.Request) -> Any:
    be = _backend(request)
    s = be.by_name.get(request.match_info["srv"])
    if s is None:
        raise web.HTTPNotFound(
            text=_json_error(f"no server named {request.match_info['srv']!r} in backend {be.name!r}"),
            content_type="application/json",
        )
    return s


async def server(request: web.Request) -> web.Response:
    master = _master(request)
    master.refresh_counters()
    return web.json_response(server_view(_server(request), master.loop.time()))


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=_json_error("the body must be a JSON object"),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=_json_error("the body must be a JSON object"),
                                 content_type="application/json")
    return body


async def change_server(request: web.Request) -> web.Response:
    from ..master import ControlError

    master = _master(request)
    s = _server(request)
    body = await _body(request)
    unknown = set(body) - {"state", "weight", "health", "check"}
    if unknown:
        return error(400, f"unknown field(s): {', '.join(sorted(unknown))}; "
                          "use state, weight, health, check")
    try:
        # All or nothing: everything that can be refused is checked before anything changes.
        if "check" in body:
            if body["check"] not in ("enabled", "disabled", True, False):
                return error(400, "check must be 'enabled' or 'disabled'")
            if not s.check:
                raise ControlError(f"server {s.log_prefix} has no health check configured", 409)
        master.set_server(s.backend.name, s.name, state=body.get("state"), weight=body.get("weight"),
                          health=body.get("health"))
        if "check" in body:
            master.set_check_enabled(s.backend.name, s.name, body["check"] in ("enabled", True))
    except ControlError as exc:
        return error(exc.status, str(exc))
    master.refresh_counters()
    return web.json_response(server_view(s, master.loop.time()))


async def add_server(request: web.Request) -> web.Response:
    from ..master import ControlError

    master = _master(request)
    be = _backend(request)
    body = await _body(request)
    try:
        s = master.add_server(be.name, body)
    except ControlError as exc:
        return error(exc.status, str(exc))
    return web.json_response(server_view(s, master.loop.time()), status=201)


async def delete_server(request: web.Request) -> web.Response:
    from ..master import ControlError

    master = _master(request)
    s = _server(request)
    wait = request.query.get("wait")
    try:
        if wait:
            try:
                timeout = parse_duration(wait if not wait.isdigit() else f"{wait}s")
            except ValueError:
                return error(400, f"wait: invalid duration {wait!r} (use e.g. 30s, 500ms, 2m; "
                                  "a bare number is seconds)")
            await master.wait_removable(s.backend.name, s.name, timeout)
        master.delete_server(s.backend.name, s.name)
    except ControlError as exc:
        return error(exc.status, str(exc))
    return web.Response(status=204)


async def shutdown_sessions(request: web.Request) -> web.Response:
    master = _master(request)
    s = _server(request)
    master.refresh_counters()
    before = s.active
    master.shutdown_sessions(s.backend.name, s.name)
    return web.json_response({"server": s.log_prefix, "sessions_killed": before})


async def reload(request: web.Request) -> web.Response:
    master = _master(request)
    errors = await master.reload()
    if errors:
        return web.json_response({"status": "refused", "errors": errors}, status=400)
    return web.json_response({"status": "reloaded", "generation": master.generation,
                              "reloads": master.reloads})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/info", info)
    app.router.add_get("/v1/frontends", frontends)
    app.router.add_get("/v1/frontends/{fe}", frontend)
    app.router.add_get("/v1/backends", backends)
    app.router.add_get("/v1/backends/{be}", backend)
    app.router.add_get("/v1/backends/{be}/servers", servers)
    app.router.add_post("/v1/backends/{be}/servers", add_server)
    app.router.add_get("/v1/backends/{be}/servers/{srv}", server)
    app.router.add_patch("/v1/backends/{be}/servers/{srv}", change_server)
    app.router.add_delete("/v1/backends/{be}/servers/{srv}", delete_server)
    app.router.add_post("/v1/backends/{be}/servers/{srv}/shutdown-sessions", shutdown_sessions)
    app.router.add_post("/v1/reload", reload)
