"""The stats page (HTML, in the spirit of HAProxy's), with CSV and JSON variants,
and the Prometheus exposition at ``/metrics``."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from .runtime_api import RuntimeAPI
from .views import CLASSES, backend_view, downtime, frontend_view, haproxy_status

COLOURS = {
    "UP": "#c0ffc0", "OPEN": "#c0ffc0", "DOWN": "#ff9090", "MAINT": "#c07820", "DRAIN": "#b0d0ff",
}

CSS = """
body{font-family:Arial,Helvetica,sans-serif;font-size:12px;margin:12px;background:#fff}
h1{font-size:18px;margin:0 0 4px 0} h2{font-size:14px;margin:18px 0 4px 0;color:#20205a}
table{border-collapse:collapse;margin-bottom:6px} th,td{border:1px solid #999;padding:2px 6px;text-align:right}
th{background:#20205a;color:#fff;font-weight:normal} td.n{text-align:left}
tr.total td{background:#e8e8ff;font-weight:bold} .meta{color:#555}
"""


def _rate(master: Any, key: str, total: int) -> float:
    """Sessions per second over the last refresh interval (kept per object)."""
    now = time.monotonic()
    prev = master.rates.get(key)
    master.rates[key] = (now, total)
    if prev is None or now - prev[0] <= 0:
        return 0.0
    return max(0.0, (total - prev[1]) / (now - prev[0]))


def render_html(master: Any) -> str:
    master.refresh_counters()
    rt = master.runtime
    now = master.loop.time()
    refresh = int(master.cfg.global_.admin.stats_refresh)
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else "",
        f"<title>fleetproxy statistics</title><style>{CSS}</style></head><body>",
        f"<h1>fleetproxy {html.escape(__version__)} statistics</h1>",
        f"<div class='meta'>workers: {master.nworkers}, current connections: {master.process_conns()},"
        f" reloads: {master.reloads}, refresh every {refresh}s &middot; "
        "<a href='/stats;csv'>CSV</a> &middot; <a href='/stats;json'>JSON</a> &middot; "
        "<a href='/metrics'>metrics</a></div>",
    ]
    for fe in rt.frontends.values():
        v = frontend_view(fe)
        r = v["responses"]
        out.append(f"<h2>frontend {html.escape(fe.name)} ({fe.mode}) &mdash; {html.escape(', '.join(fe.binds))}</h2>")
        out.append("<table><tr><th>status</th><th>cur sessions</th><th>max</th><th>limit</th>"
                   "<th>total</th><th>rate/s</th><th>requests</th><th>bad req</th><th>bytes in</th>"
                   "<th>bytes out</th>" + "".join(f"<th>{c}</th>" for c in CLASSES[1:]) + "</tr>")
        out.append(
            f"<tr style='background:{COLOURS['OPEN']}'><td class=n>OPEN</td><td>{fe.conns}</td>"
            f"<td>{fe.max_conns}</td><td>{fe.maxconn or master.cfg.global_.maxconn}</td>"
            f"<td>{fe.total_conns}</td><td>{_rate(master, 'fe/' + fe.name, fe.total_conns):.0f}</td>"
            f"<td>{fe.requests}</td><td>{fe.bad_requests}</td><td>{fe.bytes_in}</td><td>{fe.bytes_out}</td>"
            + "".join(f"<td>{r[c]}</td>" for c in CLASSES[1:]) + "</tr></table>"
        )
    for be in rt.backends.values():
        v = backend_view(be, now, servers=False)
        out.append(f"<h2>backend {html.escape(be.name)} ({be.mode}, {html.escape(be.algorithm)})</h2>")
        out.append(
            "<table><tr><th>server</th><th>status</th><th>last check</th><th>weight</th><th>act/bck</th>"
            "<th>cur sessions</th><th>max</th><th>total</th><th>rate/s</th><th>queue</th>"
            "<th>bytes in</th><th>bytes out</th>"
            + "".join(f"<th>{c}</th>" for c in CLASSES[1:])
            + "<th>conn err</th><th>resp err</th><th>retr/redis</th><th>downtime</th><th>last change</th></tr>"
        )
        for s in be.servers:
            status = haproxy_status(s, master.health)
            colour = COLOURS.get(status.split()[0], "#ffff90")
            check = (f"{s.check_status} {html.escape(s.check_desc)} in {s.check_duration}ms"
                     if s.check and s.check_enabled and s.check_status else
                     ("disabled" if s.check else "no check"))
            out.append(
                f"<tr style='background:{colour}'><td class=n>{html.escape(s.name)}</td>"
                f"<td class=n>{status}</td><td class=n>{check}</td><td>{s.weight}/{s.uweight}</td>"
                f"<td>{'B' if s.backup else 'A'}</td><td>{s.active}</td><td>{s.max_active}</td>"
                f"<td>{s.total}</td><td>{_rate(master, 'srv/' + s.log_prefix, s.total):.0f}</td>"
                f"<td>-</td><td>{s.bytes_in}</td><td>{s.bytes_out}</td>"
                + "".join(f"<td>{s.responses[i]}</td>" for i in range(1, 6))
                + f"<td>{s.conn_errors}</td><td>{s.resp_errors}</td><td>{s.retries}/{s.redispatches}</td>"
                f"<td>{int(downtime(s, now))}s</td><td>{int(now - s.last_change)}s</td></tr>"
            )
        r = v["responses"]
        out.append(
            f"<tr class=total><td class=n>Backend</td><td class=n>{v['status']}</td><td></td>"
            f"<td>{sum(s.weight for s in be.usable)}</td><td>{len(be.usable)}</td><td>{be.active}</td>"
            f"<td></td><td>{be.total}</td><td>{_rate(master, 'be/' + be.name, be.total):.0f}</td>"
            f"<td>{be.queued}</td><td>{be.bytes_in}</td><td>{be.bytes_out}</td>"
            + "".join(f"<td>{r[c]}</td>" for c in CLASSES[1:])
            + "<td></td><td></td><td></td><td></td><td></td></tr></table>"
        )
    out.append("</body></html>")
    return "".join(out)


async def stats_page(request: web.Request) -> web.Response:
    from .api import MASTER_KEY

    master = request.app[MASTER_KEY]
    fmt = request.match_info.get("fmt", "")
    if fmt == "csv":
        return web.Response(text=RuntimeAPI(master).show_stat(), content_type="text/csv")
    if fmt == "json":
        master.refresh_counters()
        now = master.loop.time()
        body = {
            "frontends": [frontend_view(f) for f in master.runtime.frontends.values()],
            "backends": [backend_view(b, now) for b in master.runtime.backends.values()],
        }
        return web.Response(text=json.dumps(body), content_type="application/json")
    return web.Response(text=render_html(master), content_type="text/html")


class FleetproxyCollector:
    """Prometheus series named ``fleetproxy_...``, computed at scrape time."""

    def __init__(self, master: Any) -> None:
        self.master = master

    def collect(self) -> Iterator[Any]:
        master = self.master
        master.refresh_counters()
        rt = master.runtime
        now = master.loop.time()

        g = GaugeMetricFamily("fleetproxy_process_workers", "Worker processes serving traffic")
        g.add_metric([], len(master._current()))
        yield g
        g = GaugeMetricFamily("fleetproxy_process_current_connections", "Client connections open")
        g.add_metric([], master.process_conns())
        yield g
        c = CounterMetricFamily("fleetproxy_process_reloads", "Successful configuration reloads")
        c.add_metric([], master.reloads)
        yield c

        fl = ["frontend"]
        cur = GaugeMetricFamily("fleetproxy_frontend_current_sessions", "Current sessions", labels=fl)
        tot = CounterMetricFamily("fleetproxy_frontend_sessions", "Sessions", labels=fl)
        req = CounterMetricFamily("fleetproxy_frontend_http_requests", "HTTP requests", labels=fl)
        bad = CounterMetricFamily("fleetproxy_frontend_request_errors", "Invalid requests", labels=fl)
        tlsf = CounterMetricFamily("fleetproxy_frontend_tls_handshake_failures", "Failed TLS handshakes",
                                   labels=fl)
        bin_ = CounterMetricFamily("fleetproxy_frontend_bytes_in", "Bytes received from clients", labels=fl)
        bout = CounterMetricFamily("fleetproxy_frontend_bytes_out", "Bytes sent to clients", labels=fl)
        resp = CounterMetricFamily("fleetproxy_frontend_http_responses", "HTTP responses by class",
                                   labels=[*fl, "code"])
        for fe in rt.frontends.values():
            cur.add_metric([fe.name], fe.conns)
            tot.add_metric([fe.name], fe.total_conns)
            req.add_metric([fe.name], fe.requests)
            bad.add_metric([fe.name], fe.bad_requests)
            tlsf.add_metric([fe.name], fe.tls_failures)
            bin_.add_metric([fe.name], fe.bytes_in)
            bout.add_metric([fe.name], fe.bytes_out)
            for i, cls in enumerate(CLASSES):
                resp.add_metric([fe.name, cls], fe.responses[i])
        yield from (cur, tot, req, bad, tlsf, bin_, bout, resp)

        bl = ["backend"]
        cur = GaugeMetricFamily("fleetproxy_backend_current_sessions", "Current sessions", labels=bl)
        tot = CounterMetricFamily("fleetproxy_backend_sessions", "Sessions", labels=bl)
        queue = GaugeMetricFamily("fleetproxy_backend_current_queue", "Requests waiting in the queue", labels=bl)
        up = GaugeMetricFamily("fleetproxy_backend_active_servers", "Servers taking new traffic", labels=bl)
        breq = CounterMetricFamily("fleetproxy_backend_http_requests", "HTTP requests sent to a server",
                                   labels=bl)
        bin_ = CounterMetricFamily("fleetproxy_backend_bytes_in", "Bytes sent to the servers", labels=bl)
        bout = CounterMetricFamily("fleetproxy_backend_bytes_out", "Bytes sent to clients", labels=bl)
        resp = CounterMetricFamily("fleetproxy_backend_http_responses", "HTTP responses by class",
                                   labels=[*bl, "code"])
        nosrv = CounterMetricFamily("fleetproxy_backend_no_server", "Requests with no server available",
                                    labels=bl)
        for be in rt.backends.values():
            cur.add_metric([be.name], be.active)
            tot.add_metric([be.name], be.total)
            queue.add_metric([be.name], be.queued)
            up.add_metric([be.name], len(be.usable))
            if be.mode == "http":
                breq.add_metric([be.name], be.total)  # one session per request in HTTP
            bin_.add_metric([be.name], be.bytes_in)
            bout.add_metric([be.name], be.bytes_out)
            nosrv.add_metric([be.name], be.no_server)
            for i, cls in enumerate(CLASSES):
                resp.add_metric([be.name, cls], be.responses[i])
        yield from (cur, tot, queue, up, breq, bin_, bout, resp, nosrv)

        sl = ["backend", "server"]
        fam = {
            "cur": GaugeMetricFamily("fleetproxy_server_current_sessions", "Current sessions", labels=sl),
            "tot": CounterMetricFamily("fleetproxy_server_sessions", "Sessions", labels=sl),
            "bin": CounterMetricFamily("fleetproxy_server_bytes_in", "Bytes sent to the server", labels=sl),
            "bout": CounterMetricFamily("fleetproxy_server_bytes_out", "Bytes received from the server",
                                        labels=sl),
            "resp": CounterMetricFamily("fleetproxy_server_http_responses", "HTTP responses by class",
                                        labels=[*sl, "code"]),
            "up": GaugeMetricFamily("fleetproxy_server_up", "1 when the server's health is up", labels=sl),
            "state": GaugeMetricFamily("fleetproxy_server_admin_state",
                                       "Administrative state (1 for the current one)",
                                       labels=[*sl, "state"]),
            "weight": GaugeMetricFamily("fleetproxy_server_weight", "Effective weight", labels=sl),
            "chkdur": GaugeMetricFamily("fleetproxy_server_check_duration_seconds",
                                        "Duration of the last health check", labels=sl),
            "chkfail": CounterMetricFamily("fleetproxy_server_check_failures", "Failed health checks",
                                           labels=sl),
            "econ": CounterMetricFamily("fleetproxy_server_connection_errors", "Failed connections",
                                        labels=sl),
            "eresp": CounterMetricFamily("fleetproxy_server_response_errors", "Invalid or aborted responses",
                                         labels=sl),
            "retr": CounterMetricFamily("fleetproxy_server_retries", "Connection retries", labels=sl),
            "redis": CounterMetricFamily("fleetproxy_server_redispatches", "Redispatches away", labels=sl),
            "down": CounterMetricFamily("fleetproxy_server_downtime_seconds", "Time spent down", labels=sl),
        }
        for s in rt.servers():
            lab = [s.backend.name, s.name]
            fam["cur"].add_metric(lab, s.active)
            fam["tot"].add_metric(lab, s.total)
            fam["bin"].add_metric(lab, s.bytes_in)
            fam["bout"].add_metric(lab, s.bytes_out)
            for i, cls in enumerate(CLASSES):
                fam["resp"].add_metric([*lab, cls], s.responses[i])
            fam["up"].add_metric(lab, 1 if s.health == "up" else 0)
            for st in ("ready", "drain", "maint"):
                fam["state"].add_metric([*lab, st], 1 if s.state == st else 0)
            fam["weight"].add_metric(lab, s.weight)
            if s.check and s.check_duration >= 0:
                fam["chkdur"].add_metric(lab, s.check_duration / 1000.0)
            fam["chkfail"].add_metric(lab, s.check_fails)
            fam["econ"].add_metric(lab, s.conn_errors)
            fam["eresp"].add_metric(lab, s.resp_errors)
            fam["retr"].add_metric(lab, s.retries)
            fam["redis"].add_metric(lab, s.redispatches)
            fam["down"].add_metric(lab, downtime(s, now))
        yield from fam.values()


def metrics_handler(master: Any) -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetproxyCollector(master))  # type: ignore[arg-type]

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    return metrics
