"""The schema of ``vrrp.yml``: errors name the key path, as ``fleetproxy check`` does.

``fleetproxy vrrp check`` is this module and nothing else: it reads the file (and
the HMAC key file it names), never a socket or the network configuration.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import ConfigError, Duration, Name, _pydantic_errors, split_host_port

__all__ = [
    "Auth",
    "Garp",
    "Instance",
    "Notify",
    "Track",
    "VrrpConfig",
    "load",
    "loads",
    "parse",
]

# Not under /run/fleetproxy: that is the proxy's RuntimeDirectory, which systemd
# removes whenever fleetproxy.service stops.
DEFAULT_STATUS_SOCKET = "/run/fleetproxy-vrrp/vrrp.sock"
MIN_KEY_BYTES = 16


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Garp(_Model):
    """Gratuitous ARP on becoming master: ``repeat`` at once, ``repeat`` again after
    ``delay`` (0 = no second burst), and ``repeat`` every ``refresh`` while master
    (0 = never). keepalived: garp_master_repeat, garp_master_delay, garp_master_refresh."""

    repeat: int = Field(default=5, ge=1, le=100)
    delay: Duration = 5.0
    refresh: Duration = 0.0


_TRACK_KINDS = ("proxy", "tcp", "exec", "interface")


class Track(_Model):
    """One health source. ``weight`` 0: failure puts the instance in FAULT; a negative
    weight is added to the priority while the check fails, a positive one while it
    succeeds (keepalived's rule)."""

    proxy: str | None = None  # path of the proxy's admin UNIX socket
    tcp: str | None = None  # host:port
    exec: str | None = None  # command line, run without a shell
    interface: str | None = None
    weight: int = Field(default=0, ge=-254, le=254)
    interval: Duration | None = None
    timeout: Duration | None = None
    fall: int = Field(default=0, ge=0, le=100)
    rise: int = Field(default=0, ge=0, le=100)

    @model_validator(mode="after")
    def _one_kind(self) -> Track:
        kinds = [k for k in _TRACK_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"set exactly one of proxy, tcp, exec, interface (got {got})")
        kind = kinds[0]
        if kind == "interface":
            if any(v is not None for v in (self.interval, self.timeout)) or self.fall or self.rise:
                raise ValueError("interface tracking follows link events: interval, timeout, fall, rise do not apply")
            self.fall = self.rise = 1
            return self
        # Defaults: quick checks for the local proxy and TCP port, keepalived's for scripts.
        quick = kind in ("proxy", "tcp")
        if self.interval is None:
            self.interval = 0.2 if quick else 1.0
        if self.timeout is None:
            self.timeout = min(self.interval, 0.5) if quick else max(self.interval, 1.0)
        self.fall = self.fall or (2 if quick else 1)
        self.rise = self.rise or (2 if quick else 1)
        if not 0.01 <= self.interval <= 3600:
            raise ValueError("interval must be between 10ms and 1h")
        if not 0.001 <= self.timeout <= 3600:
            raise ValueError("timeout must be between 1ms and 1h")
        return self

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, v: str | None) -> str | None:
        if v is not None:
            split_host_port(v, what="tcp address", allow_wildcard=False)
        return v

    @field_validator("exec")
    @classmethod
    def _exec(cls, v: str | None) -> str | None:
        if v is not None:
            _command(v)
        return v

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"proxy must be the absolute path of the admin socket, got {v!r}")
        return v

    @property
    def kind(self) -> str:
        return next(k for k in _TRACK_KINDS if getattr(self, k) is not None)

    @property
    def target(self) -> str:
        return str(getattr(self, self.kind))

    def describe(self) -> str:
        return f"{self.kind} {self.target}"


def _command(value: str) -> list[str]:
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split command {value!r}: {exc}") from None
    if not argv:
        raise ValueError("empty command")
    if not argv[0].startswith("/"):
        raise ValueError(f"the command must start with an absolute path, got {argv[0]!r}")
    return argv


class Notify(_Model):
    """Hooks run with the arguments ``INSTANCE STATE PRIORITY`` appended (STATE is
    MASTER, BACKUP, FAULT or STOP); ``any`` runs on every transition."""

    master: str | None = None
    backup: str | None = None
    fault: str | None = None
    stop: str | None = None
    any: str | None = None
    timeout: Duration = 30.0

    @field_validator("master", "backup", "fault", "stop", "any")
    @classmethod
    def _cmd(cls, v: str | None) -> str | None:
        if v is not None:
            _command(v)
        return v


class Auth(_Model):
    """HMAC-SHA256 of every advertisement (not part of RFC 5798)."""

    hmac_key_file: str

    @field_validator("hmac_key_file")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"hmac_key_file must be an absolute path, got {v!r}")
        return v


def _vip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected 'address/prefix', got {value!r}")
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError as exc:
        raise ValueError(f"invalid virtual IP {value!r}: {exc}") from None
    if iface.version != 4:
        raise ValueError(f"{value!r}: only IPv4 virtual IPs are supported")
    if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback:
        raise ValueError(f"{value!r} cannot be a virtual IP")
    return str(iface)


class Instance(_Model):
    name: Name
    interface: str = Field(min_length=1, max_length=15)
    vrid: int = Field(ge=1, le=255)
    priority: int = Field(default=100, ge=1, le=255)
    advert_interval: Duration = 1.0
    preempt: bool = True
    preempt_delay: Duration = 0.0
    unicast_src: str | None = None
    unicast_peers: list[str] = Field(default_factory=list)
    virtual_ips: list[str] = Field(min_length=1, max_length=255)
    garp: Garp = Garp()
    track: list[Track] = Field(default_factory=list)
    notify: Notify = Notify()
    auth: Auth | None = None

    # Filled in by parse() from auth.hmac_key_file (never by users).
    hmac_key: bytes | None = Field(default=None, exclude=True)

    @field_validator("advert_interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        cs = round(v * 100, 6)
        if not 1 <= cs <= 4095:
            raise ValueError("advert_interval must be between 10ms and 40.95s (1-4095 centiseconds)")
        if cs != int(cs):
            raise ValueError(f"advert_interval {v:g}s is not a whole number of centiseconds (10ms steps)")
        return v

    @field_validator("preempt_delay")
    @classmethod
    def _preempt_delay(cls, v: float) -> float:
        if v > 3600:
            raise ValueError("preempt_delay must be at most 1h")
        return v

    @field_validator("virtual_ips", mode="before")
    @classmethod
    def _vips(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError("expected a list of 'address/prefix'")
        return [_vip(x) for x in v]

    @field_validator("unicast_peers", mode="before")
    @classmethod
    def _peers(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError("expected a list of IPv4 addresses")
        return [_ipv4(x, "unicast peer") for x in v]

    @field_validator("unicast_src", mode="before")
    @classmethod
    def _src(cls, v: Any) -> Any:
        return None if v is None else _ipv4(v, "unicast_src")

    @field_validator("interface")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if "/" in v or " " in v or v in (".", ".."):
            raise ValueError(f"invalid interface name {v!r}")
        return v

    @property
    def advert_interval_cs(self) -> int:
        return round(self.advert_interval * 100)

    @property
    def vip_addresses(self) -> list[str]:
        return [v.split("/")[0] for v in self.virtual_ips]


def _ipv4(value: Any, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: expected an IPv4 address") from None


class VrrpConfig(_Model):
    status_socket: str = DEFAULT_STATUS_SOCKET
    # Where maintenance is kept across restarts (None: not kept; a restart releases it).
    state_file: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    instances: list[Instance] = Field(min_length=1)

    @field_validator("status_socket")
    @classmethod
    def _sock(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("status_socket must be an absolute path")
        return v

    @field_validator("state_file")
    @classmethod
    def _state(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or v.endswith("/")):
            raise ValueError("state_file must be the absolute path of a file")
        return v


def _cross_checks(cfg: VrrpConfig, source: str | None) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    vrids: dict[tuple[str, int], int] = {}
    vips: dict[tuple[str, str], int] = {}
    for i, inst in enumerate(cfg.instances):
        here = f"instances[{i}]"
        if inst.name in names:
            errors.append((f"{here}.name", f"duplicate instance name {inst.name!r} (first at instances[{names[inst.name]}])"))
        names.setdefault(inst.name, i)
        key = (inst.interface, inst.vrid)
        if key in vrids:
            errors.append((f"{here}.vrid", f"vrid {inst.vrid} on {inst.interface} is already used by instances[{vrids[key]}]"))
        vrids.setdefault(key, i)
        for j, vip in enumerate(inst.virtual_ips):
            addr = vip.split("/")[0]
            if (inst.interface, addr) in vips and vips[(inst.interface, addr)] != i:
                errors.append((f"{here}.virtual_ips[{j}]", f"{addr} is also a virtual IP of instances[{vips[(inst.interface, addr)]}]"))
            elif addr in inst.vip_addresses[:j]:
                errors.append((f"{here}.virtual_ips[{j}]", f"{addr} is listed twice"))
            vips.setdefault((inst.interface, addr), i)
        for j, peer in enumerate(inst.unicast_peers):
            if peer in inst.vip_addresses:
                errors.append((f"{here}.unicast_peers[{j}]", f"{peer} is one of this instance's virtual IPs"))
        if inst.unicast_src is not None and not inst.unicast_peers:
            errors.append((f"{here}.unicast_src", "unicast_src needs unicast_peers"))
        if inst.priority == 255 and any(t.weight for t in inst.track):
            errors.append((f"{here}.track", "the address owner (priority 255) cannot have tracking weights"))
        if inst.auth is not None:
            path = inst.auth.hmac_key_file
            try:
                key = Path(path).read_bytes().strip()
            except OSError as exc:
                errors.append((f"{here}.auth.hmac_key_file", f"cannot read {path}: {exc.strerror or exc}"))
            else:
                if len(key) < MIN_KEY_BYTES:
                    errors.append((f"{here}.auth.hmac_key_file", f"the key in {path} is {len(key)} bytes; use at least {MIN_KEY_BYTES}"))
                inst.hmac_key = key
    return errors


def file_warnings(cfg: VrrpConfig) -> list[tuple[str, str]]:
    """Commands that are not (yet) executable on this host: warnings, not errors, so a
    configuration can be checked before its scripts are installed. At run time a
    missing tracking script is a failing check and a missing hook is logged."""
    out = []
    for i, inst in enumerate(cfg.instances):
        for j, track in enumerate(inst.track):
            if track.exec is not None:
                exe = _command(track.exec)[0]
                if not os.access(exe, os.X_OK):
                    out.append((f"instances[{i}].track[{j}].exec", f"{exe} is not an executable file"))
        for key in ("master", "backup", "fault", "stop", "any"):
            cmd = getattr(inst.notify, key)
            if cmd is not None:
                exe = _command(cmd)[0]
                if not os.access(exe, os.X_OK):
                    out.append((f"instances[{i}].notify.{key}", f"{exe} is not an executable file"))
    return out


def parse(data: Any, source: str | None = None) -> VrrpConfig:
    if not isinstance(data, dict):
        raise ConfigError([("", f"the top level must be a mapping, got {type(data).__name__}")], source)
    try:
        cfg = VrrpConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_errors(exc), source) from None
    errors = _cross_checks(cfg, source)
    if errors:
        raise ConfigError(errors, source)
    return cfg


def loads(text: str, source: str | None = None) -> VrrpConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([("", f"{where}invalid YAML: {getattr(exc, 'problem', None) or exc}")], source) from None
    return parse(data, source)


def load(path: str | Path) -> VrrpConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"{path} is not UTF-8: {exc}")], str(path)) from None
    return loads(text, str(path))
