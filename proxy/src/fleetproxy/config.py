"""The configuration file: one YAML document, one schema.

The shape mirrors HAProxy: ``global``, ``defaults``, ``frontends``, ``backends``.
Values in ``defaults`` are inherited by every frontend and backend that does not
set its own (timeouts key by key, as HAProxy does).  :func:`load` returns a
:class:`Config` whose sections are already resolved against the defaults, or
raises :class:`ConfigError` carrying every problem with its key path, e.g.
``backends[0].servers[1].address: port 99999 out of range``.

This module does no I/O beyond reading the file and knows nothing of sockets;
``fleetproxy check`` is this module and nothing else.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

# --------------------------------------------------------------------------
# Scalar types
# --------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """A duration in seconds from ``5s``, ``250ms``, ``1m``, ``2h``, ``1d``, ``100us``.

    A bare number (int or numeric string) is milliseconds, HAProxy's rule.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 250ms or 1m, got a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"duration {value} is not a finite number")
        if value < 0:
            raise ValueError(f"duration {value} is negative")
        return value / 1000.0
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            number, unit = m.groups()
            return float(number) * _DURATION_UNITS[unit or "ms"]
        raise ValueError(f"invalid duration {value!r} (use e.g. 5s, 250ms, 1m; a bare number is ms)")
    raise ValueError(f"expected a duration such as 5s, 250ms or 1m, got {type(value).__name__}")


def format_duration(seconds: float) -> str:
    """The text that :func:`parse_duration` reads back as exactly ``seconds`` (``250ms``)."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms", "us"):
        n = seconds / _DURATION_UNITS[unit]
        if n == int(n) and int(n) * _DURATION_UNITS[unit] == seconds:
            return f"{int(n)}{unit}"
    return f"{Decimal(repr(seconds)):f}s"


# Durations dump (mode="json") with a unit: a bare number would read back as milliseconds.
Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str, when_used="json")
]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits, '_', '-', '.', ':'"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _check_token(value: str) -> str:
    """An HTTP token (RFC 9110 5.6.2): header names and methods."""
    if not _TOKEN_RE.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP token (letters, digits and !#$%&'*+.^_`|~-)")
    return value


Token = Annotated[str, AfterValidator(_check_token)]


def split_host_port(value: str, *, what: str, allow_wildcard: bool) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``*:port`` (or ``:port``) -> (host, port).

    The wildcard becomes ``0.0.0.0``; ``[::]`` is the IPv6 any address, which on
    Linux also accepts IPv4 unless ``net.ipv6.bindv6only`` is set.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string 'host:port'")
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"invalid {what} {value!r}: expected '[ipv6]:port'")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid {what} {value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid {what} {value!r}: missing ':port'")
        if ":" in host:
            raise ValueError(f"invalid {what} {value!r}: write IPv6 addresses as '[addr]:port'")
    if host in ("*", ""):
        if not allow_wildcard:
            raise ValueError(f"invalid {what} {value!r}: a server needs a host")
        host = "0.0.0.0"
    if not port_text.isdigit():
        raise ValueError(f"invalid {what} {value!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range (1-65535)")
    return host, port


def _listen_address(value: Any) -> str:
    split_host_port(value, what="bind address", allow_wildcard=True)
    return value.strip()


def _server_address(value: Any) -> str:
    host, _ = split_host_port(value, what="server address", allow_wildcard=False)
    if host == "0.0.0.0":  # pragma: no cover - guarded above
        raise ValueError("a server needs a host")
    return value.strip()


ListenAddress = Annotated[str, BeforeValidator(_listen_address)]
ServerAddress = Annotated[str, BeforeValidator(_server_address)]

_BALANCE_RE = re.compile(
    r"^(roundrobin|static-rr|leastconn|source|uri|random|first|hdr\(([!#$%&'*+.^_`|~0-9A-Za-z-]+)\))$"
)


def _balance(value: Any) -> str:
    if not isinstance(value, str) or not _BALANCE_RE.match(value.strip()):
        raise ValueError(
            f"unknown balance algorithm {value!r}: use roundrobin, static-rr, leastconn, "
            "source, uri, hdr(NAME), random or first"
        )
    return value.strip()


Balance = Annotated[str, BeforeValidator(_balance)]


def _cidr_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a CIDR or a list of CIDRs")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected a CIDR string, got {item!r}")
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"invalid network {item!r}: {exc}") from None
    return out


def _str_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a string or a non-empty list of strings")
    return items


def _regex(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a regular expression string")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


CidrList = Annotated[list[str], BeforeValidator(_cidr_list)]
StrList = Annotated[list[str], BeforeValidator(_str_list)]
Regex = Annotated[str, BeforeValidator(_regex)]
Mode = Literal["http", "tcp"]

# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


class Timeouts(_Model):
    """HAProxy's timeouts; each key is inherited separately from ``defaults``."""

    connect: Duration | None = None
    client: Duration | None = None
    server: Duration | None = None
    http_request: Duration | None = None
    http_keep_alive: Duration | None = None
    queue: Duration | None = None
    tunnel: Duration | None = None
    check: Duration | None = None


TIMEOUT_DEFAULTS = {
    "connect": 5.0,
    "client": 50.0,
    "server": 50.0,
    "http_request": 10.0,
    "http_keep_alive": 10.0,
    "queue": 5.0,
    "tunnel": None,
    "check": None,
}


class ResolvedTimeouts(_Model):
    connect: float
    client: float
    server: float
    http_request: float
    http_keep_alive: float
    queue: float
    tunnel: float | None
    check: float | None


class HeaderCondition(_Model):
    name: Token
    value: str | None = None
    regex: Regex | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> HeaderCondition:
        tests = [t for t in ("value", "regex", "present") if getattr(self, t) is not None]
        if len(tests) > 1:
            raise ValueError(f"use only one of value, regex, present (got {', '.join(tests)})")
        if not tests:
            self.present = True
        return self


class Condition(_Model):
    """All keys set in one condition must hold (AND); ``any`` is an OR list."""

    path: StrList | None = None
    path_prefix: StrList | None = None
    path_regex: Regex | None = None
    host: StrList | None = None
    header: HeaderCondition | None = None
    method: StrList | None = None
    src: CidrList | None = None
    sni: StrList | None = None
    not_: Condition | None = Field(default=None, alias="not")
    any: list[Condition] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError(
                "empty condition: use path, path_prefix, path_regex, host, header, "
                "method, src, sni, not or any"
            )
        return self

    @field_validator("method")
    @classmethod
    def _upper(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [_check_token(m).upper() for m in v]

    @field_validator("host", "sni")
    @classmethod
    def _lower(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [h.lower() for h in v]


class Rule(_Model):
    if_: Condition = Field(alias="if")
    use_backend: Name


class LogConfig(_Model):
    """Where access logs go: ``stdout``, ``stderr``, a file path, or ``none``."""

    access: str = "stdout"
    format: Literal["httplog", "json"] = "httplog"


class Tune(_Model):
    """Limits of the HTTP data path (HAProxy's ``tune.*``)."""

    max_request_line: int = Field(default=8192, ge=64, le=1 << 20)
    max_header_size: int = Field(default=32768, ge=256, le=1 << 22)
    max_headers: int = Field(default=100, ge=1, le=10000)
    pool_idle_timeout: Duration = 10.0
    reuseport: bool | Literal["auto"] = "auto"


class AdminConfig(_Model):
    """The control plane: JSON API on a UNIX socket, HAProxy's runtime API, and
    an optional TCP listener for the stats page, metrics and the token-protected API."""

    socket: str | None = None
    runtime_socket: str | None = None
    socket_mode: str = Field(default="0660", pattern=r"^0?[0-7]{3}$")
    socket_group: str | None = None
    listen: ListenAddress | None = None
    token_file: str | None = None
    stats_refresh: Duration = 5.0


class GlobalConfig(_Model):
    maxconn: int = Field(default=4096, ge=1, le=10_000_000)
    workers: int | Literal["auto"] = 1
    hard_stop_after: Duration = 30.0
    # Soft stop (SIGTERM): keep serving this long with /v1/health reporting 503, so
    # that whatever tracks the proxy (`fleetproxy vrrp`, an upstream balancer) moves
    # traffic away before the listeners close. As HAProxy's `grace`.
    grace: Duration = Field(default=0.0, le=300.0)
    log: LogConfig = LogConfig()
    tune: Tune = Tune()
    admin: AdminConfig = AdminConfig()
    state_file: str | None = None

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 64:
            raise ValueError("workers must be between 1 and 64, or 'auto'")
        return v


class ServerDefaults(_Model):
    """Server settings that ``defaults.default_server`` and a backend's
    ``default_server`` may give every server (HAProxy's ``default-server``)."""

    weight: int | None = Field(default=None, ge=0, le=256)
    maxconn: int | None = Field(default=None, ge=1)
    check: bool | None = None
    inter: Duration | None = None
    fastinter: Duration | None = None
    downinter: Duration | None = None
    rise: int | None = Field(default=None, ge=1, le=1000)
    fall: int | None = Field(default=None, ge=1, le=1000)
    init_state: Literal["up", "down"] | None = None
    slowstart: Duration | None = None
    observe: Literal["none", "layer4", "layer7"] | None = None
    error_limit: int | None = Field(default=None, ge=1, le=100000)
    on_error: Literal["mark-down", "fastinter"] | None = None


class Defaults(_Model):
    mode: Mode = "http"
    timeouts: Timeouts = Timeouts()
    retries: int = Field(default=3, ge=0, le=100)
    redispatch: bool = True
    balance: Balance = "roundrobin"
    hash_type: Literal["map-based", "consistent"] = "map-based"
    maxconn: int | None = Field(default=None, ge=1)
    forwardfor: bool = True
    log: bool = True
    default_server: ServerDefaults = ServerDefaults()


SERVER_DEFAULTS = {
    "weight": 1,
    "maxconn": None,
    "check": False,
    "inter": 2.0,
    "fastinter": None,  # = inter
    "downinter": None,  # = inter
    "rise": 2,
    "fall": 3,
    "init_state": None,  # down with check, up without
    "slowstart": 0.0,
    "observe": "none",
    "error_limit": 10,
    "on_error": "fastinter",
}


class ServerTls(_Model):
    """TLS towards a server (re-encryption), also used by its health checks."""

    verify: Literal["required", "none"] = "required"
    ca_file: str | None = None
    sni: str | None = None
    certificate: str | None = None
    alpn: list[str] | None = None
    min_version: TLS_VERSIONS = "1.2"


class ServerConfig(ServerDefaults):
    name: Name
    address: ServerAddress
    tls: ServerTls | None = None
    backup: bool = False
    disabled: bool = False
    cookie: str | None = Field(default=None, min_length=1, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    check_address: ServerAddress | None = None

    @property
    def host(self) -> str:
        return split_host_port(self.address, what="server address", allow_wildcard=False)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.address, what="server address", allow_wildcard=False)[1]


def _status_set(value: Any) -> Any:
    """``expect_status``: a list of codes or a class such as ``2xx``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        m = re.fullmatch(r"([1-5])xx", value.strip())
        if not m:
            raise ValueError(f"invalid status class {value!r} (use e.g. 2xx, or a list of codes)")
        base = int(m.group(1)) * 100
        return list(range(base, base + 100))
    if not isinstance(value, list) or not value:
        raise ValueError("expected a status code list such as [200, 204] or a class such as 2xx")
    out = []
    for v in value:
        if isinstance(v, str) and re.fullmatch(r"[1-5]xx", v.strip()):
            out.extend(_status_set(v))
        elif isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599:
            out.append(v)
        else:
            raise ValueError(f"invalid status {v!r}")
    return out


class HttpCheck(_Model):
    method: str = Field(default="GET", pattern=r"^[A-Z]+$")
    path: str = Field(default="/", pattern=r"^/[^\s]*$")
    host: str | None = None
    expect_status: Annotated[list[int], BeforeValidator(_status_set)] = Field(
        default_factory=lambda: list(range(200, 400))
    )


class CookieConfig(_Model):
    """Cookie persistence, as HAProxy's ``cookie`` keyword."""

    name: str = Field(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    mode: Literal["insert", "prefix", "rewrite"] = "insert"
    indirect: bool = False
    nocache: bool = False
    httponly: bool = False
    secure: bool = False
    maxidle: Duration = 0.0
    maxlife: Duration = 0.0
    domain: str | None = None


class StickConfig(_Model):
    on: Literal["source"] = "source"
    expire: Duration = 1800.0
    size: int = Field(default=100_000, ge=1, le=100_000_000)


class BackendConfig(_Model):
    name: Name
    mode: Mode | None = None
    balance: Balance | None = None
    hash_type: Literal["map-based", "consistent"] | None = None
    all_backups: bool = False
    timeouts: Timeouts = Timeouts()
    retries: int | None = Field(default=None, ge=0, le=100)
    redispatch: bool | None = None
    httpchk: HttpCheck | None = None
    cookie: CookieConfig | None = None
    stick: StickConfig | None = None
    default_server: ServerDefaults = ServerDefaults()
    servers: list[ServerConfig] = Field(default_factory=list)

    # Resolved against defaults by Config (never set by users).
    resolved_timeouts: ResolvedTimeouts | None = Field(default=None, exclude=True)


TLS_VERSIONS = Literal["1.2", "1.3"]


class BindTls(_Model):
    """TLS termination on a bind address."""

    certificates: list[str] = Field(min_length=1)
    default_certificate: str | None = None
    strict_sni: bool = False
    alpn: list[str] = Field(default_factory=lambda: ["http/1.1"])
    min_version: TLS_VERSIONS = "1.2"
    ciphers: str | None = None
    client_ca: str | None = None
    verify_client: Literal["none", "optional", "required"] = "none"
    client_subject_header: str | None = Field(default=None, pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    ticket_rotation: Duration = 3600.0

    @model_validator(mode="after")
    def _client_ca(self) -> BindTls:
        if self.verify_client != "none" and not self.client_ca:
            raise ValueError(f"verify_client: {self.verify_client} needs client_ca")
        return self


class BindConfig(_Model):
    address: ListenAddress
    tls: BindTls | None = None


def _bind_item(value: Any) -> Any:
    # A plain "host:port" string stays valid; errors then point at the item itself.
    if isinstance(value, str):
        return {"address": _listen_address(value)}
    return value


Bind = Annotated[BindConfig, BeforeValidator(_bind_item)]


class Hsts(_Model):
    max_age: int = Field(default=31536000, ge=0)
    include_subdomains: bool = False
    preload: bool = False


class FrontendConfig(_Model):
    name: Name
    mode: Mode | None = None
    bind: list[Bind] = Field(min_length=1)
    default_backend: Name | None = None
    rules: list[Rule] = Field(default_factory=list)
    maxconn: int | None = Field(default=None, ge=1)
    timeouts: Timeouts = Timeouts()
    forwardfor: bool | None = None
    log: bool | None = None
    backlog: int | None = Field(default=None, ge=1)
    redirect_to_https: bool | Literal[301, 302, 307, 308] = False
    hsts: Hsts | None = None
    inspect_delay: Duration = 5.0

    resolved_timeouts: ResolvedTimeouts | None = Field(default=None, exclude=True)

    @property
    def addresses(self) -> list[str]:
        return [b.address for b in self.bind]


class Config(_Model):
    global_: GlobalConfig = Field(default=GlobalConfig(), alias="global")
    defaults: Defaults = Defaults()
    frontends: list[FrontendConfig] = Field(default_factory=list)
    backends: list[BackendConfig] = Field(default_factory=list)

    def backend(self, name: str) -> BackendConfig:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ConfigError(Exception):
    """Every problem found, each as (key path, message)."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None):
        self.errors = errors
        self.source = source
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in errors))

    def lines(self) -> list[str]:
        return [f"{p}: {m}" if p else m for p, m in self.errors]


def format_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = {"global_": "global", "if_": "if", "not_": "not"}.get(part, part)
            out += f".{part}" if out else str(part)
    return out


def _pydantic_errors(exc: ValidationError) -> list[tuple[str, str]]:
    errors = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        # Union branches add the branch name to the location; drop it.
        loc = [p for p in loc if p not in ("int", "str", "list[str]", "literal['auto']")]
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        errors.append((format_loc(loc), msg))
    # Keep order, drop duplicates (union branches report the same problem twice).
    seen: set[tuple[str, str]] = set()
    return [e for e in errors if not (e in seen or seen.add(e))]


# --------------------------------------------------------------------------
# Cross-references and inheritance
# --------------------------------------------------------------------------


def _resolve_timeouts(*layers: Timeouts) -> ResolvedTimeouts:
    values = dict(TIMEOUT_DEFAULTS)
    for layer in layers:
        for key, val in layer.model_dump(exclude_none=True).items():
            values[key] = val
    return ResolvedTimeouts(**values)


def _unique(items: list[Any], path: str, errors: list[tuple[str, str]], what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            errors.append(
                (f"{path}[{i}].name", f"duplicate {what} name {item.name!r} (first at {path}[{seen[item.name]}])")
            )
        else:
            seen[item.name] = i


def _rule_conditions(cond: Condition) -> Iterable[Condition]:
    yield cond
    if cond.not_ is not None:
        yield from _rule_conditions(cond.not_)
    for sub in cond.any or ():
        yield from _rule_conditions(sub)


def resolve_server(srv: ServerConfig, be: BackendConfig, d: Defaults) -> ServerConfig:
    """Fill a server's unset settings from the backend's, then the defaults'
    ``default_server``, then the built-in defaults (in place; returns it)."""
    for key, fallback in SERVER_DEFAULTS.items():
        if getattr(srv, key) is None:
            value = getattr(be.default_server, key)
            if value is None:
                value = getattr(d.default_server, key)
            setattr(srv, key, fallback if value is None else value)
    srv.fastinter = srv.fastinter or srv.inter
    srv.downinter = srv.downinter or srv.inter
    srv.init_state = srv.init_state or ("down" if srv.check else "up")
    return srv


def _resolve(cfg: Config) -> list[tuple[str, str]]:
    """Apply ``defaults`` and check every reference; returns the problems found."""
    errors: list[tuple[str, str]] = []
    d = cfg.defaults
    _unique(cfg.frontends, "frontends", errors, "frontend")
    _unique(cfg.backends, "backends", errors, "backend")

    backends = {}
    for i, be in enumerate(cfg.backends):
        backends.setdefault(be.name, be)
        be.mode = be.mode or d.mode
        be.balance = be.balance or d.balance
        be.hash_type = be.hash_type or d.hash_type
        be.retries = d.retries if be.retries is None else be.retries
        be.redispatch = d.redispatch if be.redispatch is None else be.redispatch
        be.resolved_timeouts = _resolve_timeouts(d.timeouts, be.timeouts)
        _unique(be.servers, f"backends[{i}].servers", errors, "server")
        cookies: dict[str, str] = {}
        for j, srv in enumerate(be.servers):
            resolve_server(srv, be, d)
            if srv.observe != "none" and not srv.check:
                errors.append((f"backends[{i}].servers[{j}].observe",
                               f"observe {srv.observe} needs check: true (as in HAProxy)"))
            if be.cookie is not None:
                value = srv.cookie or srv.name
                if value in cookies:
                    errors.append((f"backends[{i}].servers[{j}].cookie",
                                   f"cookie value {value!r} is already used by server {cookies[value]!r}"))
                cookies[value] = srv.name
        for j, srv in enumerate(be.servers):
            if srv.tls is not None:
                from . import tls as tls_mod

                if srv.tls.ca_file:
                    problem = tls_mod.inspect_ca(srv.tls.ca_file)
                    if problem:
                        errors.append((f"backends[{i}].servers[{j}].tls.ca_file", problem))
                if srv.tls.certificate:
                    for problem in tls_mod.inspect_path(srv.tls.certificate, directory=False):
                        errors.append((f"backends[{i}].servers[{j}].tls.certificate", problem))
        if be.cookie is not None and be.mode != "http":
            errors.append((f"backends[{i}].cookie", "cookie persistence needs mode http"))
        if be.mode == "tcp" and (be.balance == "uri" or be.balance.startswith("hdr(")):
            errors.append((f"backends[{i}].balance", f"balance {be.balance} needs mode http"))

    binds: dict[tuple[str, int], str] = {}
    for i, fe in enumerate(cfg.frontends):
        fe.mode = fe.mode or d.mode
        fe.forwardfor = d.forwardfor if fe.forwardfor is None else fe.forwardfor
        fe.log = d.log if fe.log is None else fe.log
        fe.maxconn = fe.maxconn or d.maxconn
        fe.resolved_timeouts = _resolve_timeouts(d.timeouts, fe.timeouts)
        for j, bind in enumerate(fe.bind):
            addr = bind.address
            key = split_host_port(addr, what="bind address", allow_wildcard=True)
            here = f"frontends[{i}].bind[{j}]"
            clash = next((k for k in binds if _binds_overlap(k, key)), None)
            if clash is not None:
                errors.append((here, f"{addr} is already bound by {binds[clash]}"
                               + ("" if clash == key else f" ({_fmt_bind(clash)})")))
            else:
                binds[key] = here
            if bind.tls is not None:
                if fe.mode == "tcp":
                    errors.append((f"{here}.tls", "TLS termination needs mode http "
                                   "(use sni rules in a tcp frontend for passthrough)"))
                errors.extend(_check_tls_files(bind.tls, f"{here}.tls"))
        if fe.redirect_to_https and not any(b.tls for b in fe.bind):
            errors.append((f"frontends[{i}].redirect_to_https", "needs a bind with tls in this frontend"))
        refs = []
        if fe.default_backend is not None:
            refs.append((f"frontends[{i}].default_backend", fe.default_backend))
        for j, rule in enumerate(fe.rules):
            refs.append((f"frontends[{i}].rules[{j}].use_backend", rule.use_backend))
            for cond in _rule_conditions(rule.if_):
                if fe.mode == "tcp":
                    used = [k for k in ("path", "path_prefix", "path_regex", "host", "header", "method")
                            if getattr(cond, k) is not None]
                    if used:
                        errors.append(
                            (f"frontends[{i}].rules[{j}].if", f"{used[0]} needs mode http (this frontend is tcp)")
                        )
                elif cond.sni is not None:
                    errors.append((f"frontends[{i}].rules[{j}].if", "sni needs mode tcp"))
        for path, name in refs:
            be = backends.get(name)
            if be is None:
                errors.append((path, _no_backend(name, backends)))
            elif be.mode != fe.mode:
                errors.append((path, f"backend {name!r} is mode {be.mode}, frontend {fe.name!r} is mode {fe.mode}"))
    return errors


def _binds_overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listeners cannot both be bound: the same port, and the same address or
    a wildcard covering the other (``[::]`` is dual-stack, it covers IPv4 too)."""
    if a[1] != b[1]:
        return False
    if a[0] == b[0] or "::" in (a[0], b[0]):
        return True
    return "0.0.0.0" in (a[0], b[0]) and ":" not in a[0] + b[0]


def _fmt_bind(key: tuple[str, int]) -> str:
    return f"[{key[0]}]:{key[1]}" if ":" in key[0] else f"{key[0]}:{key[1]}"


def _no_backend(name: str, backends: Iterable[str]) -> str:
    hint = _closest(name, backends)
    return f"no backend named {name!r}" + (f" (did you mean {hint!r}?)" if hint else "")


def _raw_references(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Backend references that cannot resolve, read from the raw document: reported
    together with schema errors, so that one ``check`` shows every problem."""
    frontends, backends = data.get("frontends"), data.get("backends", [])
    if not isinstance(frontends, list) or not isinstance(backends, list):
        return []
    names = {b.get("name") for b in backends if isinstance(b, dict) and isinstance(b.get("name"), str)}
    errors = []
    for i, fe in enumerate(frontends):
        if not isinstance(fe, dict):
            continue
        refs = [(f"frontends[{i}].default_backend", fe.get("default_backend"))]
        rules = fe.get("rules")
        if isinstance(rules, list):
            refs += [(f"frontends[{i}].rules[{j}].use_backend", r.get("use_backend"))
                     for j, r in enumerate(rules) if isinstance(r, dict)]
        errors += [(path, _no_backend(name, names)) for path, name in refs
                   if isinstance(name, str) and name not in names]
    return errors


def _check_tls_files(tls: BindTls, path: str) -> list[tuple[str, str]]:
    """Every certificate readable, with its key, and usable by OpenSSL."""
    from . import tls as tls_mod

    errors = []
    for k, cert in enumerate(tls.certificates):
        for problem in tls_mod.inspect_path(cert):
            errors.append((f"{path}.certificates[{k}]", problem))
    if tls.default_certificate:
        for problem in tls_mod.inspect_path(tls.default_certificate, directory=False):
            errors.append((f"{path}.default_certificate", problem))
    if tls.client_ca:
        problem = tls_mod.inspect_ca(tls.client_ca)
        if problem:
            errors.append((f"{path}.client_ca", problem))
    return errors


def _closest(name: str, choices: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.8)
    return found[0] if found else None


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def parse(data: Any, source: str | None = None) -> Config:
    """Validate an already-parsed document (a dict) and resolve it."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("", f"the top level must be a mapping, got {type(data).__name__}")], source)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = _pydantic_errors(exc)
        seen = {path for path, _ in errors}
        errors += [e for e in _raw_references(data) if e[0] not in seen]
        raise ConfigError(errors, source) from None
    errors = _resolve(cfg)
    if errors:
        raise ConfigError(errors, source)
    return cfg


def loads(text: str, source: str | None = None) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([("", f"{where}invalid YAML: {problem}")], source) from None
    except RecursionError:
        raise ConfigError([("", "invalid YAML: the document is nested too deeply")], source) from None
    return parse(data, source)


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"{path} is not UTF-8: {exc}")], str(path)) from None
    return loads(text, str(path))


Condition.model_rebuild()

__all__ = [
    "BackendConfig",
    "Condition",
    "Config",
    "ConfigError",
    "FrontendConfig",
    "ServerConfig",
    "load",
    "loads",
    "parse",
    "parse_duration",
    "split_host_port",
]
