"""The configuration schema: the contract shape, errors with key paths, durations,
defaults inheritance, cross-references, and hypothesis properties of the loader."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetproxy.config import Config, ConfigError, load, loads, parse, parse_duration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The shape from issue 2, verbatim: other tools and the Ansible role rely on it.
CONTRACT = """
global:
  maxconn: 4096
  workers: 1
defaults:
  mode: http                 # http | tcp
  timeouts: {connect: 5s, client: 50s, server: 50s, http_request: 10s, http_keep_alive: 10s, queue: 5s}
  retries: 3
  redispatch: true
frontends:
  - name: http_front
    bind: ["127.0.0.1:8080"]          # "*:80", "[::]:80", "127.0.0.1:8080"
    default_backend: http_back
    rules:                             # first match wins; conditions in one `if` are ANDed
      - {if: {path_prefix: /api/}, use_backend: api_back}
      - {if: {host: static.example.com}, use_backend: static_back}
      - {if: {header: {name: X-Canary, value: "1"}}, use_backend: canary_back}
  - name: db_front
    mode: tcp
    bind: ["127.0.0.1:15432"]
    default_backend: db_back
backends:
  - name: http_back
    balance: roundrobin              # roundrobin | static-rr | leastconn | source | uri | hdr(NAME) | random | first
    servers:
      - {name: server1, address: "127.0.0.1:9101", weight: 3}
      - {name: server2, address: "127.0.0.1:9102"}          # weight defaults to 1
      - {name: spare,   address: "127.0.0.1:9103", backup: true}
"""

CONTRACT_BACKENDS = """
  - {name: api_back, servers: [{name: api1, address: "127.0.0.1:9201"}]}
  - {name: static_back, servers: [{name: static1, address: "127.0.0.1:9202"}]}
  - {name: canary_back, servers: [{name: canary1, address: "127.0.0.1:9203"}]}
  - {name: db_back, mode: tcp, servers: [{name: db1, address: "127.0.0.1:9204"}]}
"""


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(doc) if not isinstance(doc, str) else loads(doc)
    return info.value.lines()


def minimal(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "frontends": [{"name": "fe", "bind": ["127.0.0.1:8080"], "default_backend": "be"}],
        "backends": [{"name": "be", "servers": [{"name": "s1", "address": "127.0.0.1:9101"}]}],
    }
    doc.update(over)
    return doc


# --------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------


def test_contract_shape_is_accepted_one_to_one() -> None:
    cfg = loads(CONTRACT + CONTRACT_BACKENDS)
    assert cfg.global_.maxconn == 4096 and cfg.global_.workers == 1
    assert cfg.defaults.mode == "http" and cfg.defaults.retries == 3 and cfg.defaults.redispatch is True
    t = cfg.defaults.timeouts
    assert (t.connect, t.client, t.server, t.http_request, t.http_keep_alive, t.queue) == (5, 50, 50, 10, 10, 5)
    fe = cfg.frontends[0]
    assert fe.name == "http_front" and fe.addresses == ["127.0.0.1:8080"] and fe.default_backend == "http_back"
    assert [r.use_backend for r in fe.rules] == ["api_back", "static_back", "canary_back"]
    assert fe.rules[0].if_.path_prefix == ["/api/"]
    assert fe.rules[1].if_.host == ["static.example.com"]
    assert fe.rules[2].if_.header.name == "X-Canary" and fe.rules[2].if_.header.value == "1"
    assert cfg.frontends[1].mode == "tcp" and cfg.frontends[0].mode == "http"
    servers = cfg.backend("http_back").servers
    assert [(s.name, s.address, s.weight, s.backup) for s in servers] == [
        ("server1", "127.0.0.1:9101", 3, False),
        ("server2", "127.0.0.1:9102", 1, False),
        ("spare", "127.0.0.1:9103", 1, True),
    ]
    assert cfg.backend("http_back").balance == "roundrobin"


def test_contract_without_its_backends_names_each_missing_one() -> None:
    lines = errors_of(CONTRACT)
    assert "frontends[0].rules[0].use_backend: no backend named 'api_back'" in lines
    assert "frontends[0].rules[1].use_backend: no backend named 'static_back'" in lines
    assert "frontends[0].rules[2].use_backend: no backend named 'canary_back'" in lines
    assert "frontends[1].default_backend: no backend named 'db_back'" in lines


def test_contract_example_file_is_the_contract() -> None:
    """proxy/examples/contract.yml is the issue's example plus the backends it references."""
    shipped = yaml.safe_load((EXAMPLES / "contract.yml").read_text())
    contract = yaml.safe_load(CONTRACT)
    for key in ("global", "defaults"):
        assert shipped[key] == contract[key]
    assert shipped["frontends"] == contract["frontends"]
    assert shipped["backends"][0] == contract["backends"][0]
    load(EXAMPLES / "contract.yml")


def test_seed_example_mirrors_haproxy_seed() -> None:
    cfg = load(EXAMPLES / "haproxy-seed.yml")
    fe = cfg.frontends[0]
    assert fe.name == "http_front" and fe.addresses == ["*:80"] and fe.default_backend == "http_back"
    be = cfg.backend("http_back")
    assert be.balance == "roundrobin" and len(be.servers) == 2
    assert all(s.check for s in be.servers)
    assert all(s.address.startswith("127.0.0.1:") for s in be.servers)


# --------------------------------------------------------------------------
# Errors name their key path
# --------------------------------------------------------------------------

BAD_DOCS = [
    pytest.param(
        {"backends": [{"name": "b", "servers": [
            {"name": "a", "address": "127.0.0.1:80"}, {"name": "c", "address": "127.0.0.1:99999"}]}]},
        "backends[0].servers[1].address: port 99999 out of range", id="port-range"),
    pytest.param(
        minimal(frontends=[{"name": "fe", "bind": ["*:80"], "default_backend": "htp_back"}],
                backends=[{"name": "http_back"}]),
        "frontends[0].default_backend: no backend named 'htp_back'", id="unknown-backend"),
    pytest.param(minimal(global_x=1), "global_x: unknown key", id="unknown-top-key"),
    pytest.param({"global": {"maxconn": 0}}, "global.maxconn: ", id="maxconn-zero"),
    pytest.param({"global": {"workers": 0}}, "global.workers: workers must be between 1 and 64", id="workers"),
    pytest.param({"defaults": {"mode": "udp"}}, "defaults.mode: ", id="mode"),
    pytest.param({"defaults": {"timeouts": {"connect": "5x"}}}, "defaults.timeouts.connect: invalid duration '5x'",
                 id="duration"),
    pytest.param({"defaults": {"timeouts": {"conect": "5s"}}}, "defaults.timeouts.conect: unknown key", id="typo"),
    pytest.param({"frontends": [{"name": "fe"}]}, "frontends[0].bind: required key is missing", id="missing-bind"),
    pytest.param({"frontends": [{"name": "fe", "bind": ["127.0.0.1"]}]},
                 "frontends[0].bind[0]: invalid bind address '127.0.0.1': missing ':port'", id="bind-no-port"),
    pytest.param({"frontends": [{"name": "fe", "bind": ["::1:80"]}]},
                 "frontends[0].bind[0]: invalid bind address '::1:80': write IPv6 addresses as '[addr]:port'",
                 id="bind-v6"),
    pytest.param({"backends": [{"name": "b", "servers": [{"name": "s", "address": "*:80"}]}]},
                 "backends[0].servers[0].address: invalid server address '*:80': a server needs a host",
                 id="server-wildcard"),
    pytest.param({"backends": [{"name": "b", "servers": [{"name": "s", "address": "h:80", "weight": 257}]}]},
                 "backends[0].servers[0].weight: ", id="weight"),
    pytest.param({"backends": [{"name": "b", "servers": [{"name": "s", "address": "h:80", "weight": -1}]}]},
                 "backends[0].servers[0].weight: ", id="weight-negative"),
    pytest.param({"backends": [{"name": "b", "servers": [{"name": "s s", "address": "h:80"}]}]},
                 "backends[0].servers[0].name: invalid name 's s'", id="server-name"),
    pytest.param({"backends": [{"name": "b", "balance": "hdr()"}]},
                 "backends[0].balance: unknown balance algorithm 'hdr()'", id="balance"),
    pytest.param({"backends": [{"name": "b", "balance": "leastconns"}]},
                 "backends[0].balance: unknown balance algorithm 'leastconns'", id="balance-typo"),
    pytest.param({"backends": [{"name": "b", "mode": "tcp", "balance": "uri"}]},
                 "backends[0].balance: balance uri needs mode http", id="uri-tcp"),
    pytest.param({"backends": [{"name": "b", "hash_type": "ring"}]}, "backends[0].hash_type: ", id="hash-type"),
    pytest.param({"backends": [{"name": "b"}, {"name": "b"}]},
                 "backends[1].name: duplicate backend name 'b' (first at backends[0])", id="dup-backend"),
    pytest.param({"backends": [{"name": "b", "servers": [{"name": "s", "address": "h:1"},
                                                         {"name": "s", "address": "h:2"}]}]},
                 "backends[0].servers[1].name: duplicate server name 's'", id="dup-server"),
    pytest.param({"frontends": [{"name": "a", "bind": ["*:80"]}, {"name": "b", "bind": ["0.0.0.0:80"]}]},
                 "frontends[1].bind[0]: 0.0.0.0:80 is already bound by frontends[0].bind[0]", id="dup-bind"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "rules": [{"if": {}, "use_backend": "be"}]}]),
                 "frontends[0].rules[0].if: empty condition", id="empty-if"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "rules": [{"if": {"path": "/"}}]}]),
                 "frontends[0].rules[0].use_backend: required key is missing", id="no-use-backend"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"],
                                     "rules": [{"if": {"path": "/"}, "use_backend": "nope"}]}]),
                 "frontends[0].rules[0].use_backend: no backend named 'nope'", id="rule-backend"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"],
                                     "rules": [{"if": {"path_regex": "("}, "use_backend": "be"}]}]),
                 "frontends[0].rules[0].if.path_regex: invalid regular expression '('", id="regex"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"],
                                     "rules": [{"if": {"src": ["10.0.0.0/33"]}, "use_backend": "be"}]}]),
                 "frontends[0].rules[0].if.src: invalid network '10.0.0.0/33'", id="cidr"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "rules": [
        {"if": {"header": {"name": "X", "value": "1", "regex": "1"}}, "use_backend": "be"}]}]),
                 "frontends[0].rules[0].if.header: use only one of value, regex, present", id="header-two-tests"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "rules": [
        {"if": {"any": [{"path": "/"}, {"not": {"host": "a", "bogus": 1}}]}, "use_backend": "be"}]}]),
                 "frontends[0].rules[0].if.any[1].not.bogus: unknown key", id="nested-path"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "mode": "tcp", "default_backend": "be"}]),
                 "frontends[0].default_backend: backend 'be' is mode http, frontend 'fe' is mode tcp",
                 id="mode-mismatch"),
    pytest.param(
        {"frontends": [{"name": "fe", "mode": "tcp", "bind": ["*:80"], "default_backend": "b",
                        "rules": [{"if": {"path": "/"}, "use_backend": "b"}]}],
         "backends": [{"name": "b", "mode": "tcp"}]},
        "frontends[0].rules[0].if: path needs mode http (this frontend is tcp)", id="tcp-path"),
    pytest.param(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "rules": [
        {"if": {"sni": "a.example.com"}, "use_backend": "be"}]}]),
                 "frontends[0].rules[0].if: sni needs mode tcp", id="http-sni"),
]


@pytest.mark.parametrize(("doc", "expected"), BAD_DOCS)
def test_error_names_key_path(doc: dict[str, Any], expected: str) -> None:
    lines = errors_of(doc)
    assert any(line.startswith(expected) for line in lines), lines


def test_every_error_is_reported_at_once() -> None:
    doc = {
        "global": {"maxconn": -1},
        "frontends": [{"name": "fe", "bind": ["*:99999"]}],
        "backends": [{"name": "be", "servers": [{"name": "s", "address": "nohost"}], "retries": "x"}],
    }
    lines = errors_of(doc)
    assert [line.split(":")[0] for line in lines] == [
        "global.maxconn", "frontends[0].bind[0]", "backends[0].retries", "backends[0].servers[0].address",
    ], lines


def test_schema_errors_and_reference_errors_are_reported_together() -> None:
    """One `check` shows every problem: a bad port elsewhere does not hide a dangling reference."""
    lines = errors_of({
        "frontends": [{"name": "fe", "bind": ["*:80"], "default_backend": "nope",
                       "rules": [{"if": {"path": "/"}, "use_backend": "be"},
                                 {"if": {"path": "/x"}, "use_backend": "gone"}]}],
        "backends": [{"name": "be", "servers": [{"name": "s", "address": "127.0.0.1:0"}]}],
    })
    assert lines == [
        "backends[0].servers[0].address: port 0 out of range (1-65535)",
        "frontends[0].default_backend: no backend named 'nope'",
        "frontends[0].rules[1].use_backend: no backend named 'gone'",
    ]


def test_unknown_backend_suggests_the_closest_name() -> None:
    lines = errors_of(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "default_backend": "htp_back"}],
                              backends=[{"name": "http_back"}]))
    assert lines == ["frontends[0].default_backend: no backend named 'htp_back' (did you mean 'http_back'?)"]


@pytest.mark.parametrize(("text", "where"), [
    ("global: [", "line 1, column"),
    ("frontends:\n  - name: a\n   bind: x\n", "line 3, column"),
    ("a: !!python/object:os.system x", "invalid YAML"),
    ("\tglobal: {}", "line 1, column 1"),
])
def test_yaml_syntax_errors_name_the_line(text: str, where: str) -> None:
    (line,) = errors_of(text)
    assert where in line and "invalid YAML" in line


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert errors_of(text) == [f"the top level must be a mapping, got {type(yaml.safe_load(text)).__name__}"]


def test_empty_file_is_a_valid_empty_config() -> None:
    cfg = loads("")
    assert cfg.frontends == [] and cfg.backends == [] and cfg.global_.maxconn == 4096


def test_load_reports_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.yml")
    assert "cannot read" in str(info.value) and "missing.yml" in str(info.value)
    bad = tmp_path / "latin1.yml"
    bad.write_bytes(b"global: {maxconn: 10}\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(bad)
    assert "not UTF-8" in str(info.value)


# --------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("5s", 5.0), ("250ms", 0.25), ("1m", 60.0), ("2h", 7200.0), ("1d", 86400.0), ("100us", 0.0001),
    ("1.5s", 1.5), (" 10s ", 10.0), (1500, 1.5), ("1500", 1.5), (0, 0.0), ("0", 0.0), (2.5, 0.0025),
])
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    cfg = parse({"defaults": {"timeouts": {"server": value}}})
    assert cfg.defaults.timeouts.server == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    "5x", "-1s", -5, True, False, [], {}, "s", "", "5 s s", "1e3s", float("nan"), float("inf"), "nan", "infs",
])
def test_invalid_durations(value: Any) -> None:
    (line,) = errors_of({"defaults": {"timeouts": {"server": value}}})
    assert line.startswith("defaults.timeouts.server: ")


def test_non_finite_durations_are_rejected_from_yaml() -> None:
    for text in (".nan", ".inf", "-.inf"):
        (line,) = errors_of(f"global: {{hard_stop_after: {text}}}")
        assert line.startswith("global.hard_stop_after: "), line


# --------------------------------------------------------------------------
# Defaults inheritance, key by key
# --------------------------------------------------------------------------


def test_timeouts_inherit_key_by_key() -> None:
    cfg = parse({
        "defaults": {"timeouts": {"connect": "1s", "client": "20s", "server": "30s", "queue": "4s"}},
        "frontends": [{"name": "fe", "bind": ["*:80"], "default_backend": "be",
                       "timeouts": {"client": "5s", "http_request": "3s"}}],
        "backends": [{"name": "be", "timeouts": {"server": "7s"}},
                     {"name": "other"}],
    })
    fe = cfg.frontends[0].resolved_timeouts
    assert (fe.client, fe.http_request, fe.connect, fe.server, fe.queue) == (5, 3, 1, 30, 4)
    assert fe.http_keep_alive == 10  # the built-in default, nobody set it
    be = cfg.backend("be").resolved_timeouts
    assert (be.server, be.connect, be.client, be.queue, be.tunnel) == (7, 1, 20, 4, None)
    other = cfg.backend("other").resolved_timeouts
    assert (other.server, other.connect) == (30, 1)


def test_other_defaults_inherit_unless_set() -> None:
    cfg = parse({
        "defaults": {"mode": "tcp", "balance": "leastconn", "hash_type": "consistent", "retries": 5,
                     "redispatch": True, "forwardfor": False, "log": False, "maxconn": 77},
        "frontends": [
            {"name": "inherits", "bind": ["*:80"], "default_backend": "inherits"},
            {"name": "own", "bind": ["*:81"], "mode": "http", "default_backend": "own",
             "forwardfor": True, "log": True, "maxconn": 5},
        ],
        "backends": [
            {"name": "inherits"},
            {"name": "own", "mode": "http", "balance": "first", "hash_type": "map-based", "retries": 0,
             "redispatch": False},
        ],
    })
    a, b = cfg.frontends
    assert (a.mode, a.forwardfor, a.log, a.maxconn) == ("tcp", False, False, 77)
    assert (b.mode, b.forwardfor, b.log, b.maxconn) == ("http", True, True, 5)
    x, y = cfg.backends
    assert (x.mode, x.balance, x.hash_type, x.retries, x.redispatch) == ("tcp", "leastconn", "consistent", 5, True)
    # Falsy values set on the backend win over the defaults.
    assert (y.mode, y.balance, y.hash_type, y.retries, y.redispatch) == ("http", "first", "map-based", 0, False)


def test_builtin_defaults() -> None:
    cfg = parse(minimal())
    fe, be = cfg.frontends[0], cfg.backends[0]
    assert (fe.mode, fe.forwardfor, fe.log, fe.maxconn) == ("http", True, True, None)
    assert (be.balance, be.hash_type, be.retries, be.redispatch) == ("roundrobin", "map-based", 3, True)
    t = be.resolved_timeouts
    assert (t.connect, t.client, t.server, t.http_request, t.http_keep_alive, t.queue) == (5, 50, 50, 10, 10, 5)
    s = be.servers[0]
    assert (s.weight, s.backup, s.maxconn, s.check, s.disabled) == (1, False, None, False, False)


def test_bind_forms() -> None:
    cfg = parse(minimal(frontends=[{"name": "fe", "bind": ["*:80", "[::]:81", "127.0.0.1:8080", ":82"],
                                    "default_backend": "be"}]))
    assert cfg.frontends[0].addresses == ["*:80", "[::]:81", "127.0.0.1:8080", ":82"]


def test_conditions_are_normalised() -> None:
    cfg = parse(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "default_backend": "be", "rules": [
        {"if": {"method": ["get", "Post"], "host": "Static.Example.COM", "src": "127.0.0.1"}, "use_backend": "be"},
        {"if": {"header": {"name": "X-A"}}, "use_backend": "be"},
    ]}]))
    c = cfg.frontends[0].rules[0].if_
    assert c.method == ["GET", "POST"] and c.host == ["static.example.com"] and c.src == ["127.0.0.1/32"]
    assert cfg.frontends[0].rules[1].if_.header.present is True


@pytest.mark.parametrize("name", ["X Foo", "X-Caf\u00e9", "\u20ac", "X:Y", ""])
def test_header_condition_name_must_be_a_token(name: str) -> None:
    """A header name that can never appear in a request is a configuration error (and a
    non-Latin-1 one used to crash the data path on every request)."""
    lines = errors_of(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "default_backend": "be", "rules": [
        {"if": {"header": {"name": name}}, "use_backend": "be"}]}]))
    assert any(line.startswith("frontends[0].rules[0].if.header.name: ") for line in lines), lines


@pytest.mark.parametrize("method", ["GE T", "G\u00c9T", ""])
def test_method_condition_must_be_a_token(method: str) -> None:
    lines = errors_of(minimal(frontends=[{"name": "fe", "bind": ["*:80"], "default_backend": "be", "rules": [
        {"if": {"method": [method]}, "use_backend": "be"}]}]))
    assert any(line.startswith("frontends[0].rules[0].if.method") for line in lines), lines


def test_names_given_as_binary_are_still_checked() -> None:
    lines = errors_of("backends: [{name: !!binary YSBi}]")  # b"a b"
    assert lines and lines[0].startswith("backends[0].name: invalid name"), lines


def test_deeply_nested_documents_are_config_errors() -> None:
    errors_of("a: " + "[" * 5000 + "]" * 5000)
    errors_of({"frontends": [{"name": "f", "bind": ["*:80"], "rules": [
        {"if": _nest({"path": "/"}, 400), "use_backend": "b"}]}]})


def _nest(cond: dict[str, Any], depth: int) -> dict[str, Any]:
    for _ in range(depth):
        cond = {"not": cond}
    return cond


# --------------------------------------------------------------------------
# Properties of the loader (hypothesis)
# --------------------------------------------------------------------------

KEYS = [
    "global", "defaults", "frontends", "backends", "name", "bind", "mode", "servers", "address",
    "weight", "backup", "maxconn", "timeouts", "connect", "client", "server", "queue", "http_request",
    "rules", "if", "use_backend", "default_backend", "path", "path_prefix", "host", "header", "value",
    "regex", "present", "not", "any", "src", "method", "balance", "hash_type", "retries", "redispatch",
    "workers", "log", "access", "format", "tune", "hard_stop_after", "sni", "tunnel", "check",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["5s", "250ms", "1m", "http", "tcp", "roundrobin", "hdr(X)",
                                           "127.0.0.1:80", "*:80", "[::]:80", "a:99999", "be", "fe"]),
    st.binary(max_size=6),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), children, max_size=5),
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["global", "defaults", "frontends", "backends"]), documents, max_size=4))
def test_random_documents_raise_only_config_errors(doc: dict[str, Any]) -> None:
    try:
        parse(doc)
    except ConfigError as exc:
        assert exc.errors
        for path, message in exc.errors:
            assert isinstance(path, str) and isinstance(message, str) and message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_config_errors(text: str) -> None:
    try:
        loads(text)
    except ConfigError as exc:
        assert exc.errors


duration_text = st.one_of(
    st.integers(0, 10**6),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 100_000), st.sampled_from(["us", "ms", "s", "m", "h", "d"])),
)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
timeouts = st.dictionaries(
    st.sampled_from(["connect", "client", "server", "http_request", "http_keep_alive", "queue", "tunnel"]),
    duration_text, max_size=4,
)
leaf_conditions = st.one_of(
    st.builds(lambda p: {"path": p}, st.sampled_from(["/", "/a", ["/x", "/y"]])),
    st.builds(lambda p: {"path_prefix": p}, st.sampled_from(["/api/", ["/a", "/b"]])),
    st.builds(lambda p: {"path_regex": p}, st.sampled_from([r"^/v[0-9]+/", r"\.png$"])),
    st.builds(lambda h: {"host": h}, st.sampled_from(["a.example.com", "*.example.com", ["x", "y"]])),
    st.builds(lambda h: {"header": h}, st.sampled_from([{"name": "X-A", "value": "1"}, {"name": "X-B"},
                                                        {"name": "X-C", "regex": "^a"},
                                                        {"name": "X-D", "present": False}])),
    st.builds(lambda m: {"method": m}, st.sampled_from(["GET", ["post", "PUT"]])),
    st.builds(lambda s: {"src": s}, st.sampled_from(["127.0.0.0/8", ["::1", "127.0.0.1/32"]])),
)
conditions = st.recursive(
    leaf_conditions,
    lambda inner: st.one_of(
        st.builds(lambda c: {"not": c}, inner),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a, b: {**a, **b}, inner, inner),
    ),
    max_leaves=6,
)


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    backend_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    backends = []
    port = 9000
    for name in backend_names:
        server_names = draw(st.lists(names, min_size=0, max_size=4, unique=True))
        servers = []
        for s in server_names:
            port += 1
            entry: dict[str, Any] = {"name": s, "address": f"127.0.0.1:{port}"}
            if draw(st.booleans()):
                entry["weight"] = draw(st.integers(0, 256))
            if draw(st.booleans()):
                entry["backup"] = draw(st.booleans())
            if draw(st.booleans()):
                entry["maxconn"] = draw(st.integers(1, 1000))
            servers.append(entry)
        be: dict[str, Any] = {"name": name, "servers": servers}
        if draw(st.booleans()):
            be["balance"] = draw(st.sampled_from(["roundrobin", "static-rr", "leastconn", "source", "uri",
                                                  "hdr(X-User)", "random", "first"]))
        if draw(st.booleans()):
            be["hash_type"] = draw(st.sampled_from(["map-based", "consistent"]))
        if draw(st.booleans()):
            be["timeouts"] = draw(timeouts)
        if draw(st.booleans()):
            be["retries"] = draw(st.integers(0, 10))
        backends.append(be)
    frontends = []
    for i in range(draw(st.integers(0, 3))):
        fe: dict[str, Any] = {"name": f"fe{i}", "bind": [f"127.0.0.1:{8000 + i}"],
                              "default_backend": draw(st.sampled_from(backend_names))}
        rules = draw(st.lists(conditions, max_size=3))
        fe["rules"] = [{"if": c, "use_backend": draw(st.sampled_from(backend_names))} for c in rules]
        if draw(st.booleans()):
            fe["timeouts"] = draw(timeouts)
        if draw(st.booleans()):
            fe["maxconn"] = draw(st.integers(1, 10000))
        frontends.append(fe)
    doc: dict[str, Any] = {"frontends": frontends, "backends": backends}
    if draw(st.booleans()):
        doc["defaults"] = {"timeouts": draw(timeouts), "retries": draw(st.integers(0, 5)),
                           "redispatch": draw(st.booleans())}
    if draw(st.booleans()):
        doc["global"] = {"maxconn": draw(st.integers(1, 100000)),
                         "hard_stop_after": draw(duration_text)}
    return doc


def _dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(by_alias=True, mode="json", exclude_none=True), sort_keys=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_valid_configs_round_trip(doc: dict[str, Any]) -> None:
    """Generated valid documents load; what the model dumps loads back to the same config."""
    cfg = parse(copy.deepcopy(doc))
    again = loads(_dump(cfg))
    assert again.model_dump() == cfg.model_dump()
    for fe_a, fe_b in zip(cfg.frontends, again.frontends, strict=True):
        assert fe_a.resolved_timeouts == fe_b.resolved_timeouts
    for be_a, be_b in zip(cfg.backends, again.backends, strict=True):
        assert be_a.resolved_timeouts == be_b.resolved_timeouts
    # and the text a user wrote means what it says:
    for fe, src in zip(cfg.frontends, doc["frontends"], strict=True):
        for key, text in src.get("timeouts", {}).items():
            assert math.isclose(getattr(fe.resolved_timeouts, key), parse_duration(text))
