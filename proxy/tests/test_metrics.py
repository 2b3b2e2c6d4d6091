"""The stats page (HTML, CSV, JSON) and the Prometheus exposition; counters summed over workers."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser

import pytest
from prometheus_client.parser import text_string_to_metric_families
from proxytest.client import ResponseReader, request
from proxytest.configs import http_config, server
from proxytest.control import (
    Api,
    get_from,
    http_get,
    runtime,
    spread_connections,
    wait_until,
    with_admin,
)


class _Tables(HTMLParser):
    """Every table: a list of rows, each a list of cell texts, plus each row's style."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.styles: list[list[str]] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._h2: list[str] | None = None
        self.meta: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
            self.styles.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
            self.styles[-1].append(a.get("style") or "")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._h2 = []
        elif tag == "meta":
            self.meta.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "h2" and self._h2 is not None:
            self.headings.append("".join(self._h2))
            self._h2 = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._h2 is not None:
            self._h2.append(data)


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, ctype, text = http_get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("fleetproxy_"), family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _m(metrics, name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def stats_proxy(proxy, backend, port, tmp_path):
    b1, b2, b3 = backend("b1"), backend("b2"), backend("b3")
    cfg = http_config(port(), [server("s1", b1, check=True, inter="200ms"), server("s2", b2),
                               server("s3", b3, backup=True)],
                      extra_backends=[{"name": "api", "servers": [server("a1", b3)]}])
    cfg["frontends"].append({"name": "fe2", "bind": [f"127.0.0.1:{port()}"], "default_backend": "api"})
    admin_port = port()
    adm = with_admin(cfg, tmp_path, listen_port=admin_port, stats_refresh="3s")
    p = proxy(cfg)
    api = Api(adm.socket)
    api.wait_health("be", "s1", "up", 5)
    for target in ("/", "/", "/?status=404", "/?status=500", "/?status=302"):
        get_from(p.port("fe"), target)
    get_from(p.port("fe2"))
    # Counters reach the master with each worker's next report (every 100 ms).
    assert wait_until(lambda: [(f["requests"], f["sessions"]["current"]) for f in api.get("/v1/frontends")]
                      == [(5, 0), (1, 0)], 3)
    return p, api, admin_port, adm


def test_stats_html(stats_proxy):
    _p, api, admin_port, _ = stats_proxy
    api.patch("be", "s2", state="maint")
    status, ctype, text = http_get(admin_port, "/stats")
    assert status == 200 and ctype.startswith("text/html")
    page = _Tables()
    page.feed(text)
    assert {"http-equiv": "refresh", "content": "3"} in page.meta
    assert [h.split(" (")[0] for h in page.headings] == ["frontend fe", "frontend fe2", "backend be",
                                                         "backend api"]
    assert len(page.tables) == 4  # one per frontend and backend
    be_rows = page.tables[2]
    header = be_rows[0]
    assert header[:4] == ["server", "status", "last check", "weight"]
    names = [r[0] for r in be_rows[1:]]
    assert names == ["s1", "s2", "s3", "Backend"]  # a row per server, then the total
    s1, s2 = be_rows[1], be_rows[2]
    assert s1[1] == "UP" and s1[2].startswith("L4OK") and s2[1] == "MAINT" and be_rows[3][2] == "no check"
    styles = page.styles[2]
    assert styles[1] != styles[2]  # state colours differ
    col = {name: i for i, name in enumerate(header)}
    assert int(s1[col["total"]]) + int(s2[col["total"]]) == 5
    assert int(be_rows[4][col["2xx"]]) == 2 and int(be_rows[4][col["4xx"]]) == 1
    fe = dict(zip(page.tables[0][0], page.tables[0][1], strict=True))
    assert fe["requests"] == "5" and fe["status"] == "OPEN" and fe["5xx"] == "1" and fe["3xx"] == "1"
    assert http_get(admin_port, "/")[0] == 302  # to /stats


def test_stats_csv_and_json(stats_proxy):
    _, _, admin_port, adm = stats_proxy
    status, ctype, text = http_get(admin_port, "/stats;csv")
    assert status == 200 and ctype.startswith("text/csv")
    rows = list(csv.DictReader(text[2:].splitlines()))
    assert [(r["pxname"], r["svname"]) for r in rows][:2] == [("fe", "FRONTEND"), ("fe2", "FRONTEND")]
    assert text.splitlines()[0] == runtime(adm.runtime_socket, "show stat").splitlines()[0]
    fe = rows[0]
    assert fe["req_tot"] == "5" and fe["hrsp_2xx"] == "2" and fe["hrsp_5xx"] == "1"

    status, ctype, text = http_get(admin_port, "/stats;json")
    assert status == 200 and ctype.startswith("application/json")
    body = json.loads(text)
    assert [f["name"] for f in body["frontends"]] == ["fe", "fe2"]
    assert [b["name"] for b in body["backends"]] == ["be", "api"]
    assert [s["name"] for s in body["backends"][0]["servers"]] == ["s1", "s2", "s3"]
    assert body["frontends"][0]["responses"]["4xx"] == 1
    assert http_get(admin_port, "/stats;xml")[0] in (200, 404)


def test_prometheus_metrics(stats_proxy):
    _, api, admin_port, _ = stats_proxy
    api.patch("be", "s2", weight=7)
    m = _metrics(admin_port)
    # frontend
    assert _m(m, "fleetproxy_frontend_http_requests_total", frontend="fe") == 5
    assert _m(m, "fleetproxy_frontend_http_requests_total", frontend="fe2") == 1
    for code, n in (("2xx", 2), ("3xx", 1), ("4xx", 1), ("5xx", 1), ("1xx", 0), ("other", 0)):
        assert _m(m, "fleetproxy_frontend_http_responses_total", frontend="fe", code=code) == n
    assert _m(m, "fleetproxy_frontend_bytes_in_total", frontend="fe") > 0
    assert _m(m, "fleetproxy_frontend_bytes_out_total", frontend="fe") > 0
    assert _m(m, "fleetproxy_frontend_sessions_total", frontend="fe") == 5
    assert _m(m, "fleetproxy_frontend_current_sessions", frontend="fe") == 0
    # backend
    assert _m(m, "fleetproxy_backend_http_requests_total", backend="be") == 5
    assert _m(m, "fleetproxy_backend_sessions_total", backend="be") == 5
    assert _m(m, "fleetproxy_backend_http_responses_total", backend="be", code="5xx") == 1
    assert _m(m, "fleetproxy_backend_bytes_out_total", backend="be") > 0
    assert ("fleetproxy_backend_bytes_in_total", (("backend", "be"),)) in m
    assert _m(m, "fleetproxy_backend_current_queue", backend="be") == 0
    assert _m(m, "fleetproxy_backend_active_servers", backend="be") == 2
    # servers
    s1 = {"backend": "be", "server": "s1"}
    s2 = {"backend": "be", "server": "s2"}
    assert (_m(m, "fleetproxy_server_sessions_total", **s1) + _m(m, "fleetproxy_server_sessions_total", **s2)) == 5
    assert _m(m, "fleetproxy_server_sessions_total", backend="be", server="s3") == 0
    assert sum(_m(m, "fleetproxy_server_http_responses_total", **s, code="2xx") for s in (s1, s2)) == 2
    assert _m(m, "fleetproxy_server_bytes_out_total", **s1) > 0
    assert ("fleetproxy_server_bytes_in_total", tuple(sorted(s1.items()))) in m
    assert _m(m, "fleetproxy_server_up", **s1) == 1
    assert _m(m, "fleetproxy_server_weight", **s2) == 7
    assert _m(m, "fleetproxy_server_current_sessions", **s1) == 0
    assert 0 <= _m(m, "fleetproxy_server_check_duration_seconds", **s1) < 1
    assert ("fleetproxy_server_check_duration_seconds", tuple(sorted(s2.items()))) not in m  # no check
    assert _m(m, "fleetproxy_server_admin_state", **s1, state="ready") == 1
    assert _m(m, "fleetproxy_server_admin_state", **s1, state="maint") == 0
    assert _m(m, "fleetproxy_process_workers") == 1
    # Health and state follow changes.
    api.patch("be", "s1", health="down", state="drain")
    m = _metrics(admin_port)
    assert _m(m, "fleetproxy_server_up", **s1) == 0
    assert _m(m, "fleetproxy_server_admin_state", **s1, state="drain") == 1
    assert _m(m, "fleetproxy_backend_active_servers", backend="be") == 1


def test_counters_are_summed_over_workers(proxy, backend, port, tmp_path):
    b1, b2 = backend("b1"), backend("b2")
    cfg = http_config(port(), [server("s1", b1), server("s2", b2)], global_={"workers": 2})
    admin_port = port()
    adm = with_admin(cfg, tmp_path, listen_port=admin_port)
    p = proxy(cfg)
    api = Api(adm.socket)
    pids = api.worker_pids()
    assert len(pids) == 2
    socks = spread_connections(p.port(), pids)  # both workers hold connections; one request each
    try:
        for s in socks:
            reader = ResponseReader(s)
            for _ in range(3):
                s.sendall(request("GET", "/"))
                assert reader.read_one().status == 200
        total = 4 * len(socks)
        assert wait_until(lambda: api.get("/v1/frontends/fe")["responses"]["2xx"] == total, 3), \
            (api.get("/v1/frontends/fe"), total)
        assert wait_until(lambda: api.get("/v1/frontends/fe")["sessions"]["current"] == len(socks), 2)
        fe = api.get("/v1/frontends/fe")
        assert fe["sessions"]["total"] == len(socks) and fe["responses"]["2xx"] == total
        servers = api.get("/v1/backends/be/servers")
        assert sum(s["sessions"]["total"] for s in servers) == total
        assert len(b1.requests) + len(b2.requests) == total
        m = _metrics(admin_port)
        assert _m(m, "fleetproxy_frontend_http_requests_total", frontend="fe") == total
        assert _m(m, "fleetproxy_frontend_current_sessions", frontend="fe") == len(socks)
        assert _m(m, "fleetproxy_process_workers") == 2
        assert _m(m, "fleetproxy_process_current_connections") == len(socks)
        row = runtime(adm.runtime_socket, "show stat").splitlines()[1].split(",")
        assert row[:2] == ["fe", "FRONTEND"] and row[7] == str(len(socks))
        info = runtime(adm.runtime_socket, "show info")
        assert f"CumReq: {total}" in info and "Nbproc: 2" in info
    finally:
        for s in socks:
            s.close()
    assert wait_until(lambda: api.get("/v1/frontends/fe")["sessions"]["current"] == 0, 2)
