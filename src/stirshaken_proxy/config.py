"""The configuration file: one TOML file, validated as a whole at start.

Every key has a type and a default; an unknown key, a wrong type or a bad value is a
ConfigError that names the file, the line and the key.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.proxy import CARRIER, DIALER, EngineConfig, SideConfig
from .transaction import TimerConfig


class ConfigError(Exception):
    """A problem in the configuration, phrased for the operator."""


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, kw_only=True)
class TransportConfig:
    tcp: bool = True
    max_tcp_connections: int = 1024
    tcp_idle_timeout: float = 300.0
    tcp_connect_timeout: float = 5.0
    max_tcp_pending_bytes: int = 1 << 20
    shutdown_grace: float = 2.0
    workers: int = 1
    gc_threshold: int = 50_000


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    engine: EngineConfig
    transport: TransportConfig = field(default_factory=TransportConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    raw: dict[str, Any] = field(default_factory=dict)


# -- schema ------------------------------------------------------------------------------
# Each section: key -> (expected python type(s), default). Defaults of None mean required.
_SIDE_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), None),
    "advertise": ((str,), ""),
    "next_hop": ((str,), None),
    "next_hop_transport": ((str,), "udp"),
    "allowed_sources": ((list,), []),
    "allow_any_source": ((bool,), False),
}
_SIP_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "max_message_size": ((int,), 65535),
    "max_transactions": ((int,), 100_000),
    "retry_after": ((int,), 5),
    "t1": ((int, float), 0.5),
    "t2": ((int, float), 4.0),
    "t4": ((int, float), 5.0),
    "timer_c": ((int, float), 180.0),
    "server_name": ((str,), "stirshaken-proxy"),
}
_TRANSPORT_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "tcp": ((bool,), True),
    "max_tcp_connections": ((int,), 1024),
    "tcp_idle_timeout": ((int, float), 300.0),
    "tcp_connect_timeout": ((int, float), 5.0),
    "max_tcp_pending_bytes": ((int,), 1 << 20),
    "shutdown_grace": ((int, float), 2.0),
    "workers": ((int,), 1),
    "gc_threshold": ((int,), 50_000),
}
_ADMIN_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), "127.0.0.1:8080"),
    "enabled": ((bool,), True),
}
_LOG_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "level": ((str,), "info"),
    "format": ((str,), "text"),
}
# Sections that later parts of the service validate themselves (see extra_sections).
_SECTIONS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    DIALER: _SIDE_KEYS,
    CARRIER: _SIDE_KEYS,
    "sip": _SIP_KEYS,
    "transport": _TRANSPORT_KEYS,
    "admin": _ADMIN_KEYS,
    "log": _LOG_KEYS,
}


class _Source:
    """The config file's text, to point errors at a line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, section: str, key: str | None = None) -> int | None:
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
        in_section = False
        for n, line in enumerate(self.lines, 1):
            if header.match(line):
                if key is None:
                    return n
                in_section = True
                continue
            if in_section:
                if re.match(r"^\s*\[", line):
                    in_section = False
                elif key is not None and re.match(r"^\s*" + re.escape(key) + r"\s*=", line):
                    return n
        return None

    def error(self, section: str, key: str | None, problem: str) -> ConfigError:
        line = self.line_of(section, key) or self.line_of(section)
        where = f"{self.path}:{line}" if line else str(self.path)
        name = f"[{section}] {key}" if key else f"[{section}]"
        return ConfigError(f"{where}: {name}: {problem}")


def _section(src: _Source, data: dict[str, Any], name: str,
             schema: dict[str, tuple[tuple[type, ...], Any]]) -> dict[str, Any]:
    raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise src.error(name, None, "must be a table")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise src.error(name, key, f"unknown key (known keys: {known})")
        types, _ = schema[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise src.error(name, key, f"must be {want}, not {type(value).__name__}")
        out[key] = value
    for key, (_, default) in schema.items():
        if key not in out:
            if default is None:
                raise src.error(name, key, "is required")
            out[key] = default
    return out


def parse_hostport(src: _Source, section: str, key: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise src.error(section, key, f"must be host:port, not {text!r}")
    return host, int(port)


def _positive(src: _Source, section: str, values: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if values[key] <= 0:
            raise src.error(section, key, f"must be greater than 0, not {values[key]}")


def _side(src: _Source, name: str, values: dict[str, Any]) -> SideConfig:
    host, port = parse_hostport(src, name, "listen", values["listen"])
    adv = values["advertise"] or values["listen"]
    adv_host, adv_port = parse_hostport(src, name, "advertise", adv)
    if adv_port == 0:
        adv_port = port
    nh_host, nh_port = parse_hostport(src, name, "next_hop", values["next_hop"])
    if values["next_hop_transport"] not in ("udp", "tcp"):
        raise src.error(name, "next_hop_transport", "must be \"udp\" or \"tcp\"")
    cidrs = []
    for item in values["allowed_sources"]:
        try:
            cidrs.append(str(ipaddress.ip_network(item, strict=False)))
        except (TypeError, ValueError):
            raise src.error(name, "allowed_sources",
                            f"{item!r} is not an IP address or CIDR") from None
    return SideConfig(
        name=name, host=host, port=port, advertise_host=adv_host, advertise_port=adv_port,
        next_hop_host=nh_host, next_hop_port=nh_port,
        next_hop_transport=values["next_hop_transport"], allowed_sources=tuple(cidrs),
        allow_any_source=values["allow_any_source"])


def load_config(path: str | Path, *, extra_sections: tuple[str, ...] = ()) -> Config:
    """Read and validate a config file. Raises ConfigError naming file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    src = _Source(path, text)
    known = set(_SECTIONS) | set(extra_sections)
    for name in data:
        if name not in known:
            raise src.error(name, None, f"unknown section (known: {', '.join(sorted(known))})")
    sides = {}
    for name in (DIALER, CARRIER):
        if name not in data:
            raise ConfigError(f"{path}: section [{name}] is required")
        sides[name] = _side(src, name, _section(src, data, name, _SIDE_KEYS))
    sip = _section(src, data, "sip", _SIP_KEYS)
    _positive(src, "sip", sip, "max_message_size", "max_transactions", "t1", "t2", "t4",
              "timer_c")
    transport = _section(src, data, "transport", _TRANSPORT_KEYS)
    _positive(src, "transport", transport, "max_tcp_connections", "tcp_idle_timeout",
              "tcp_connect_timeout", "max_tcp_pending_bytes", "workers", "gc_threshold")
    if transport["shutdown_grace"] < 0:
        raise src.error("transport", "shutdown_grace", "must not be negative")
    admin = _section(src, data, "admin", _ADMIN_KEYS)
    admin_host, admin_port = parse_hostport(src, "admin", "listen", admin["listen"])
    log = _section(src, data, "log", _LOG_KEYS)
    if log["level"] not in ("debug", "info", "warning", "error"):
        raise src.error("log", "level", "must be debug, info, warning or error")
    if log["format"] not in ("text", "json"):
        raise src.error("log", "format", "must be \"text\" or \"json\"")
    timers = TimerConfig(t1=float(sip["t1"]), t2=float(sip["t2"]), t4=float(sip["t4"]),
                         timer_c=float(sip["timer_c"]))
    engine = EngineConfig(
        dialer=sides[DIALER], carrier=sides[CARRIER], timers=timers,
        max_message_size=sip["max_message_size"], max_transactions=sip["max_transactions"],
        retry_after=sip["retry_after"], server_name=sip["server_name"])
    return Config(
        path=path, engine=engine,
        transport=TransportConfig(**{k: transport[k] for k in _TRANSPORT_KEYS}),
        admin=AdminConfig(host=admin_host, port=admin_port, enabled=admin["enabled"]),
        log=LogConfig(level=log["level"], format=log["format"]),
        raw=data)
