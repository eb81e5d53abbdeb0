"""The configuration file: one TOML file, validated as a whole at start.

Every key has a type and a default; an unknown key, a wrong type or a bad value is a
ConfigError that names the file, the line and the key.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import socket
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .engine.flood import FloodConfig
from .engine.proxy import CARRIER, DIALER, EngineConfig, SideConfig
from .engine.redirect import RedirectConfig
from .io.httpguard import HttpLimits
from .io.keys import DevPki, KeyFileError, load_private_key, write_dev_pki
from .io.records import RecordsConfig
from .io.tls import DevTlsFiles, TlsSettings, TlsSetupError, write_dev_tls
from .io.webhooks import WebhookConfig
from .policy.accounts import Account, Business, LocalPresence
from .policy.digest import ALGORITHMS, DigestConfig
from .policy.health import HealthLimits
from .policy.inventory import NumberBlock
from .policy.numbers import NumberFormatError, block_text, overlapping, parse_block_text
from .policy.registration import CALL_PURPOSES, call_purpose
from .sip.message import CORES, compiled_available
from .sip.transport import Side, Transport
from .sip.uri import ascii_digits
from .stir.credentials import CachePolicy, SigningCertificate, SigningCertificateError, check_signing_chain
from .stir.passport import ClaimError, check_origid
from .stir.rcd import RcdError, check_name
from .stir.signing import AuthPolicy, NeighbourSpoofing, UnsignedCalls
from .stir.verification import OnFailure, VerifyPolicy
from .stir.x5u import FetchLimits, UrlPolicy
from .transaction import TimerConfig


class ConfigError(Exception):
    """A problem in the configuration, phrased for the operator."""


ADMIN_LIMITS = HttpLimits(max_connections=256, max_per_source=32)
REST_LIMITS = HttpLimits()


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    enabled: bool = True
    user: str = "admin"
    password_file: Path | None = None  # the credential of the Trust Center and the API
    password: str = field(default="", repr=False)  # read from password_file at load
    limits: HttpLimits = ADMIN_LIMITS  # connections, header and body deadlines (io.httpguard)


@dataclass(frozen=True, kw_only=True)
class RestConfig:
    """The ATIS-1000082 HTTP interface (io.rest)."""

    host: str
    port: int
    max_body_bytes: int = 16384
    tls_certificate: Path | None = None  # HTTPS when set, with tls_key
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # clients must present a certificate it signed
    max_in_flight: int = 256  # requests handled at once; past this, 503
    max_in_flight_per_account: int = 64  # of them, one account's at most
    limits: HttpLimits = REST_LIMITS  # connections, header and body deadlines (io.httpguard)


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
    max_tcp_per_source: int = 32
    tcp_first_message_timeout: float = 10.0
    tcp_reserved_for_trusted: int = 128
    shutdown_grace: float = 2.0
    gc_threshold: int = 50_000
    timer_resolution: float = 0.01
    workers: int = 1  # processes sharing the SIP ports, one per core at most
    # SO_RCVBUF/SO_SNDBUF of each UDP listener: what arrives while the loop is busy (a GC
    # pause, a flush) waits here instead of being dropped; capped by net.core.rmem_max
    udp_buffer: int = 4 << 20


@dataclass(frozen=True, kw_only=True)
class SigningConfig:
    name: str
    key_path: Path
    key: ec.EllipticCurvePrivateKey
    x5u: str
    certificate: Path | None = None
    chain: Path | None = None
    serve_path: str = ""
    dev_spc: str = ""  # development keys for this SPC are created when the key is missing
    spc: str = ""  # the SPC the certificate's TNAuthList must hold
    roots: tuple[x509.Certificate, ...] = ()  # STI-CA roots the chain must validate to
    acme: bool = False  # got and renewed by ACME ([acme], [sti_pa])
    organization: str = ""  # the CSR's O= (ACME)
    publish_url: str = ""  # HTTP PUT target of the chain ("{serial}" allowed)
    publish_token_file: Path | None = None  # Bearer token for publish_url
    x5u_template: str = ""  # x5u as configured ("{serial}": one URL per certificate)
    serve_template: str = ""  # serve_path as configured
    cert_info: SigningCertificate | None = None  # the certificate, checked; None: none yet

    def resolved(self, template: str) -> str:
        serial = self.cert_info.serial if self.cert_info is not None else "none"
        return template.replace("{serial}", serial)


@dataclass(frozen=True, kw_only=True)
class AcmeConfig:
    """The STI-CA's ACME server and the STI-PA's API (ATIS-1000080)."""

    directory: str
    account_key: Path
    contact: tuple[str, ...]
    ca_file: Path | None  # TLS trust for the ACME server and the STI-PA (default: system)
    renew_before: float  # share of the lifetime left when renewal starts
    check_interval: float
    retry_interval: float
    timeout: float
    sti_pa_url: str
    sti_pa_user: str
    sti_pa_password_file: Path | None
    sti_pa_keys: tuple[ec.EllipticCurvePublicKey, ...]  # keys SPC tokens must be signed with
    token_lifetime_margin: float


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    store_path: Path
    store_url: str = ""
    store_instance: str = ""
    refresh_interval: float
    signing: tuple[SigningConfig, ...]
    accounts: tuple[Account, ...]
    numbers: tuple[NumberBlock, ...]  # numbers owned by accounts, written in the config
    policy: AuthPolicy
    health: HealthLimits | None = None  # None: number health is off
    health_flush_interval: float = 5.0
    health_redis: str = ""  # number health shared in Redis ("": each instance its own)
    health_redis_timeout: float = 0.25
    health_redis_stream_max: int = 1_000_000
    max_range_size: int = 10_000
    # REST API keys as stored, "sha256:<hex>" -> account. The keys are random tokens: a fast
    # hash is enough, and the key itself is never kept.
    api_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    policy: VerifyPolicy
    url_policy: UrlPolicy
    crl_policy: UrlPolicy
    fetch: FetchLimits
    cache: CachePolicy
    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    freshness: int
    cache_entries: int
    max_parked: int
    tls_ca_file: Path | None


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path
    engine: EngineConfig
    auth: AuthConfig | None = None
    verify: VerifyConfig | None = None
    transport: TransportConfig = field(default_factory=TransportConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    redirect: RedirectConfig | None = None  # the SIP 302 front end
    rest: RestConfig | None = None  # the ATIS-1000082 REST front end
    acme: AcmeConfig | None = None  # certificates by ACME
    tls: TlsSettings | None = None  # SIP over TLS: our certificate, the peers' CAs
    digest: DigestConfig | None = None  # dialers recognised by digest credentials
    records: RecordsConfig = field(default_factory=RecordsConfig)  # call records
    webhook: WebhookConfig | None = None  # call records to a CRM
    raw: dict[str, Any] = field(default_factory=dict)
    created_keys: tuple[DevPki, ...] = ()  # development keys this load created
    sip_core: str = "auto"  # [sip] core: the message parser (sip.message.use_core)


# -- schema ------------------------------------------------------------------------------
# Each section: key -> (expected python type(s), default). Defaults of None mean required.
_SIDE_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), None),
    "advertise": ((str,), ""),
    "next_hop": ((str,), None),
    "next_hop_transport": ((str,), "udp"),
    "allowed_sources": ((list,), []),
    "allow_any_source": ((bool,), False),
    "listen_tls": ((str,), ""),  # host:port of a SIP-over-TLS listener
    "tls_verify_clients": ((str,), "none"),  # "optional" or "required": client certificates
    "next_hop_tls_name": ((str,), ""),  # the name the next hop's certificate carries
}
_DIGEST_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "realm": ((str,), "stirshaken-proxy"),
    "algorithms": ((list,), ["SHA-256", "MD5"]),  # challenged in this order (RFC 8760)
    "nonce_lifetime": ((int, float), 300.0),
    "max_failures": ((int,), 10),  # failed answers from one address within failure_window
    "failure_window": ((int, float), 60.0),
    "ban_seconds": ((int, float), 300.0),  # ... then its requests get 403 this long
    "dialog_lifetime": ((int, float), 43_200.0),  # in-dialog requests of an admitted call
}
_RECORDS_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "enabled": ((bool,), True),
    "keep_days": ((int, float), 90),
    "flush_interval": ((int, float), 2.0),
    "queue_max": ((int,), 100_000),  # records waiting to be written; past this, counted drops
    "jsonl_dir": ((str,), ""),  # also write rotated JSON Lines files here
    "journal_dir": ((str,), ""),  # records not yet stored, kept across a crash (default:
    # the folder of [store] path)
    "webhook_url": ((str,), ""),  # POST batches of records here (CRM logging)
    "webhook_secret_file": ((str,), ""),  # the HMAC-SHA256 key of the signature header
    "webhook_batch": ((int,), 100),
    "webhook_timeout": ((int, float), 5.0),
    "webhook_max_backoff": ((int, float), 300.0),
    "webhook_outbox_max": ((int,), 1_000_000),  # records waiting; past this, counted drops
}
_TLS_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "certificate": ((str,), None),
    "key": ((str,), None),
    "ca_files": ((list,), []),  # CAs of peers' certificates (default: the system's)
    "handshake_timeout": ((int, float), 5.0),
    "min_version": ((str,), "1.2"),
    "dev_certificates": ((bool,), False),  # make a development CA and certificate if missing
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
    "core": ((str,), "auto"),  # the parser: auto (compiled where built), compiled, python
}
_TRANSPORT_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "tcp": ((bool,), True),
    "max_tcp_connections": ((int,), 1024),
    "tcp_idle_timeout": ((int, float), 300.0),
    "tcp_connect_timeout": ((int, float), 5.0),
    "max_tcp_pending_bytes": ((int,), 1 << 20),
    "max_tcp_per_source": ((int,), 32),  # inbound connections from one address
    "tcp_first_message_timeout": ((int, float), 10.0),  # a silent connection is closed
    "tcp_reserved_for_trusted": ((int,), 128),  # of max_tcp_connections: listed sources only
    "shutdown_grace": ((int, float), 2.0),
    "gc_threshold": ((int,), 50_000),
    "timer_resolution": ((int, float), 0.01),
    "workers": ((int, str), 1),
    "udp_buffer": ((int,), 4 << 20),
}
_ADMIN_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), "127.0.0.1:8080"),
    "enabled": ((bool,), True),
    "user": ((str,), "admin"),
    "password_file": ((str,), ""),  # state-changing requests and the Trust Center need it
    "header_timeout": ((int, float), ADMIN_LIMITS.header_timeout),
    "body_timeout": ((int, float), ADMIN_LIMITS.body_timeout),
    "max_connections": ((int,), ADMIN_LIMITS.max_connections),
    "max_connections_per_source": ((int,), ADMIN_LIMITS.max_per_source),
}
_REDIRECT_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), None),
    "route": ((str,), ""),
    "verify_sources": ((list,), []),
    "answer_cache_seconds": ((int, float), 32.0),
}
_REST_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), None),
    "max_body_bytes": ((int,), 16384),
    "max_in_flight": ((int,), 256),
    "max_in_flight_per_account": ((int,), 64),
    "header_timeout": ((int, float), HttpLimits.header_timeout),
    "body_timeout": ((int, float), HttpLimits.body_timeout),
    "max_connections": ((int,), HttpLimits.max_connections),
    "max_connections_per_source": ((int,), HttpLimits.max_per_source),
    "tls_certificate": ((str,), ""),
    "tls_key": ((str,), ""),
    "tls_client_ca": ((str,), ""),
}
_LOG_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "level": ((str,), "info"),
    "format": ((str,), "text"),
}
_STORE_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "path": ((str,), "var/stirshaken.db"),
    "refresh_interval": ((int, float), 2.0),
    "max_range_size": ((int,), 10_000),  # numbers in one range (an NPA-NXX block)
    "url": ((str,), ""),  # postgresql://... (several instances) or sqlite:///path
    "instance": ((str,), ""),  # this instance's name in a shared store (default: host name)
}
_SIGNING_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((str,), "default"),
    "key": ((str,), None),
    "x5u": ((str,), None),
    "certificate": ((str,), ""),
    "chain": ((str,), ""),
    "serve_path": ((str,), ""),
    "dev_spc": ((str,), ""),
    "spc": ((str,), ""),
    "roots": ((list,), []),
    "acme": ((bool,), False),
    "organization": ((str,), ""),
    "publish_url": ((str,), ""),
    "publish_token_file": ((str,), ""),
}
_ACME_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "directory": ((str,), None),
    "account_key": ((str,), "var/acme/account-key.pem"),
    "contact": ((list,), []),
    "ca_file": ((str,), ""),
    "renew_before": ((int, float), 0.33),
    "check_interval": ((int, float), 3600.0),
    "retry_interval": ((int, float), 300.0),
    "timeout": ((int, float), 30.0),
}
_STI_PA_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "url": ((str,), None),
    "user_id": ((str,), ""),
    "password_file": ((str,), ""),
    "token_keys": ((list,), None),
    "token_min_validity": ((int, float), 60.0),
}
_ACCOUNT_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((str,), None),
    "origid": ((str,), None),
    "sources": ((list,), []),
    "signing": ((str,), "default"),
    "gateway": ((bool,), False),
    "numbers": ((list,), []),
    "local_presence": ((str,), "off"),
    "max_calls_per_hour": ((int,), 0),  # 0: the [health] limit
    "api_keys": ((list,), []),  # "sha256:<hex>" of each REST API key (stirshaken-proxy api-key)
    "tls_names": ((list,), []),  # client certificate names that identify it (mutual TLS)
    "brand": ((str,), ""),  # the caller name its A calls carry (rcd nam; logos: CLI)
    # legal_name, ein, address, contact, dba (the brand must match), call_purpose
    "business": ((dict,), {}),
}
_AUTH_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "unsigned_calls": ((str,), "forward"),
    "max_date_skew": ((int,), 60),
    "country_code": ((str,), "1"),
    "neighbour_spoofing": ((str,), "sign_b"),
    "local_presence_header": ((str,), "X-Local-Presence"),
    "call_reason_header": ((str,), "X-Call-Reason"),  # the dialer's call reason (rcd crn)
}
_VERIFY_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "enabled": ((bool,), True),
    "on_failure": ((str,), "mark"),
    "on_missing": ((str,), "mark"),
    "freshness": ((int,), 60),
    "trust_anchors": ((list,), None),
    "crl_files": ((list,), []),
    "fetch_timeout": ((int, float), 2.0),
    "fetch_max_bytes": ((int,), 65536),
    "cache_max_age": ((int, float), 86400.0),
    "cache_default_age": ((int, float), 3600.0),
    "negative_cache_age": ((int, float), 30.0),
    "cache_entries": ((int,), 10000),
    "max_in_flight": ((int,), 64),
    "max_in_flight_per_host": ((int,), 4),
    "host_failures": ((int,), 5),  # failed fetches in a row before a host rests
    "host_backoff": ((int, float), 30.0),  # seconds a failing host is not asked
    "max_parked": ((int,), 10000),
    "allowed_ports": ((list,), [443, 8443]),
    "allow_networks": ((list,), []),
    "allow_http": ((bool,), False),
    "tls_ca_file": ((str,), ""),
    "attestation_header": ((bool,), True),
}
_FLOOD_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "enabled": ((bool,), True),
    "requests_per_second": ((int, float), 50.0),
    "burst": ((int, float), 100.0),
    "ban_seconds": ((int, float), 60.0),
    "max_sources": ((int,), 100_000),
    "exempt": ((list,), []),
}
_HEALTH_KEYS: dict[str, tuple[tuple[type, ...], Any]] = {
    "enabled": ((bool,), True),
    "max_calls_per_hour": ((int,), 50),
    "min_average_duration": ((int, float), 30.0),
    "min_answer_ratio": ((int, float), 0.2),
    "short_call_seconds": ((int, float), 6.0),
    "min_samples": ((int,), 50),
    "quarantine_hours": ((int, float), 24.0),
    "flush_interval": ((int, float), 5.0),
    "redis": ((str,), ""),  # redis://host:port/db: number health shared by instances
    "redis_timeout": ((int, float), 0.25),  # seconds a caller-ID pick may wait for Redis
    "redis_stream_max": ((int,), 1_000_000),  # health events kept in Redis (replay at start)
}
# Sections that later parts of the service validate themselves (see extra_sections).
_SECTIONS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    DIALER: _SIDE_KEYS,
    CARRIER: _SIDE_KEYS,
    "sip": _SIP_KEYS,
    "transport": _TRANSPORT_KEYS,
    "admin": _ADMIN_KEYS,
    "redirect": _REDIRECT_KEYS,
    "rest": _REST_KEYS,
    "log": _LOG_KEYS,
    "store": _STORE_KEYS,
    "signing": _SIGNING_KEYS,
    "acme": _ACME_KEYS,
    "sti_pa": _STI_PA_KEYS,
    "tls": _TLS_KEYS,
    "digest": _DIGEST_KEYS,
    "records": _RECORDS_KEYS,
    "accounts": _ACCOUNT_KEYS,
    "auth": _AUTH_KEYS,
    "verify": _VERIFY_KEYS,
    "flood": _FLOOD_KEYS,
    "health": _HEALTH_KEYS,
}


class _Source:
    """The config file's text, to point errors at a line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, section: str, key: str | None = None, entry: int = 0) -> int | None:
        """Line of ``key`` in ``[section]`` (or in the ``entry``-th ``[[section]]``)."""
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
        in_section = False
        seen = -1
        for n, line in enumerate(self.lines, 1):
            if header.match(line):
                seen += 1
                if seen < entry:
                    continue
                if seen > entry:
                    return None
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

    def error(self, section: str, key: str | None, problem: str,
              entry: int | None = None) -> ConfigError:
        e = entry or 0
        line = self.line_of(section, key, e) or self.line_of(section, None, e)
        where = f"{self.path}:{line}" if line else str(self.path)
        table = f"[[{section}]] #{e + 1}" if entry is not None else f"[{section}]"
        name = f"{table} {key}" if key else table
        return ConfigError(f"{where}: {name}: {problem}")


def _section(src: _Source, data: dict[str, Any], name: str,
             schema: dict[str, tuple[tuple[type, ...], Any]], *, entry: int | None = None,
             raw: Any = None) -> dict[str, Any]:
    """Validate one table against its schema: unknown keys, types, required keys, defaults."""
    if raw is None:
        raw = data.get(name, {})
    if not isinstance(raw, dict):
        raise src.error(name, None, "must be a table", entry)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise src.error(name, key, f"unknown key (known keys: {known})", entry)
        types, _ = schema[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise src.error(name, key, f"must be {want}, not {type(value).__name__}", entry)
        out[key] = value
    for key, (_, default) in schema.items():
        if key not in out:
            if default is None:
                raise src.error(name, key, "is required", entry)
            out[key] = default
    return out


def _array(src: _Source, data: dict[str, Any], name: str) -> list[Any]:
    raw = data.get(name, [])
    if not isinstance(raw, list):
        raise src.error(name, None, f"must be an array of tables ([[{name}]])")
    return raw


def parse_hostport(src: _Source, section: str, key: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not ascii_digits(port) or not 0 <= int(port) <= 65535:
        raise src.error(section, key, f"must be host:port, not {text!r}")
    return host, int(port)


def _positive(src: _Source, section: str, values: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if values[key] <= 0:
            raise src.error(section, key, f"must be greater than 0, not {values[key]}")


def _side(src: _Source, name: Side, values: dict[str, Any]) -> SideConfig:
    host, port = parse_hostport(src, name, "listen", values["listen"])
    adv = values["advertise"] or values["listen"]
    adv_host, adv_port = parse_hostport(src, name, "advertise", adv)
    if adv_port == 0:
        adv_port = port
    nh_host, nh_port = parse_hostport(src, name, "next_hop", values["next_hop"])
    transport = _choice(src, name, "next_hop_transport", values["next_hop_transport"],
                        Transport)
    cidrs = _cidrs(src, name, "allowed_sources", values["allowed_sources"])
    tls_port = 0
    if values["listen_tls"]:
        tls_host, tls_port = parse_hostport(src, name, "listen_tls", values["listen_tls"])
        if tls_host != host:
            raise src.error(name, "listen_tls", f"must be on the listen address {host}")
    if values["tls_verify_clients"] not in ("none", "optional", "required"):
        raise src.error(name, "tls_verify_clients",
                        f'must be "none", "optional" or "required", not '
                        f'{values["tls_verify_clients"]!r}')
    return SideConfig(
        name=name, host=host, port=port, advertise_host=adv_host, advertise_port=adv_port,
        next_hop_host=nh_host, next_hop_port=nh_port,
        next_hop_transport=transport, allowed_sources=cidrs,
        allow_any_source=values["allow_any_source"], tls_port=tls_port,
        advertise_tls_port=tls_port, next_hop_tls_name=values["next_hop_tls_name"] or nh_host,
        tls_verify_clients=values["tls_verify_clients"])


def _secret_file(src: _Source, section: str, key: str, path: Path) -> bytes:
    """A secret kept in a file of its own (its bytes, as they are)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise src.error(section, key, f"cannot read {path}: {exc.strerror}") from None


_EIN = re.compile(r"\d{2}-\d{7}\Z")


def _business(src: _Source, v: dict[str, Any], entry: int) -> Business:
    known = {"legal_name", "ein", "address", "contact", "dba", "call_purpose"}
    for key, value in v.items():
        if key not in known:
            raise src.error("accounts", "business", f"unknown key {key!r} (known: "
                            f"{', '.join(sorted(known))})", entry)
        if key == "dba":
            if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
                raise src.error("accounts", "business", "dba must be a list of names", entry)
        elif not isinstance(value, str) or len(value) > 200 or any(c in value for c in "\r\n"):
            raise src.error("accounts", "business", f"{key} must be one line of text", entry)
    if not v.get("legal_name"):
        raise src.error("accounts", "business", "legal_name is required", entry)
    if v.get("ein") and not _EIN.match(v["ein"]):
        raise src.error("accounts", "business", f"ein {v['ein']!r} is not NN-NNNNNNN", entry)
    purpose = call_purpose(v.get("call_purpose", "Telemarketing"))
    if purpose is None:
        raise src.error("accounts", "business", f"call_purpose {v['call_purpose']!r} is not "
                        f"one of: {', '.join(CALL_PURPOSES)}", entry)
    return Business(legal_name=v["legal_name"], ein=v.get("ein", ""),
                    address=v.get("address", ""), contact=v.get("contact", ""),
                    dba=tuple(v.get("dba", ())), call_purpose=purpose)


def _digest(src: _Source, data: dict[str, Any]) -> DigestConfig:
    v = _section(src, data, "digest", _DIGEST_KEYS)
    if "accounts" not in data:
        raise src.error("digest", None, "needs [[accounts]]: credentials sign as an account")
    _positive(src, "digest", v, "nonce_lifetime", "max_failures", "failure_window",
              "ban_seconds", "dialog_lifetime")
    realm = v["realm"]
    if not realm or any(c in realm for c in '"\\\r\n'):
        raise src.error("digest", "realm", f"{realm!r} cannot be a realm (no quotes, "
                        "backslashes or line breaks)")
    algorithms = v["algorithms"]
    if not algorithms or any(a not in ALGORITHMS for a in algorithms) \
            or len(set(algorithms)) != len(algorithms):
        raise src.error("digest", "algorithms", f'must list "SHA-256" and/or "MD5", not '
                        f"{algorithms!r}")
    return DigestConfig(realm=realm, algorithms=tuple(algorithms),
                        nonce_lifetime=float(v["nonce_lifetime"]),
                        max_failures=v["max_failures"],
                        failure_window=float(v["failure_window"]),
                        ban_seconds=float(v["ban_seconds"]),
                        dialog_lifetime=float(v["dialog_lifetime"]))


def _tls(src: _Source, data: dict[str, Any], sides: dict[Side, SideConfig]) -> TlsSettings | None:
    """[tls], required when a side listens for TLS or forwards over it. With
    dev_certificates, a missing certificate is made (with its development CA) for the
    listen addresses."""
    wanted = [s for s in sides.values()
              if s.tls_port or s.next_hop_transport is Transport.TLS]
    if "tls" not in data:
        if wanted:
            what = "listen_tls" if wanted[0].tls_port else "next_hop_transport"
            raise src.error(wanted[0].name, what, "needs a [tls] section (certificate, key)")
        return None
    v = _section(src, data, "tls", _TLS_KEYS)
    _positive(src, "tls", v, "handshake_timeout")
    if v["min_version"] not in ("1.2", "1.3"):
        raise src.error("tls", "min_version", f'must be "1.2" or "1.3", not {v["min_version"]!r}')
    cert, key = Path(v["certificate"]), Path(v["key"])
    cas = [Path(str(p)) for p in v["ca_files"]]
    if v["dev_certificates"] and not cert.exists() and not key.exists():
        ca = cas[0] if cas else cert.parent / "sip-tls-ca.pem"
        names = tuple(dict.fromkeys(
            [s.advertise_host for s in sides.values()] + ["localhost"]))
        try:
            write_dev_tls(DevTlsFiles(ca_cert=ca, ca_key=ca.with_name(ca.stem + "-key.pem"),
                                      cert=cert, key=key), names=names)
        except (OSError, FileExistsError) as exc:
            raise src.error("tls", "certificate",
                            f"cannot create development TLS certificates: {exc}") from None
    for name, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise src.error("tls", name, f"{path} does not exist")
    for path in cas:
        if not path.is_file():
            raise src.error("tls", "ca_files", f"{path} does not exist")
    settings = TlsSettings(certificate=cert, key=key, ca_files=tuple(cas),
                           handshake_timeout=float(v["handshake_timeout"]),
                           min_version=v["min_version"])
    try:
        settings.client_context()
    except TlsSetupError as exc:
        raise src.error("tls", "certificate", str(exc)) from None
    return settings


_E = TypeVar("_E", bound=enum.StrEnum)


def _choice(src: _Source, section: str, key: str, value: str, kind: type[_E],
            entry: int | None = None) -> _E:
    try:
        return kind(value)
    except ValueError:
        names = " or ".join(f'"{m.value}"' for m in kind)
        raise src.error(section, key, f"must be {names}, not {value!r}", entry) from None


def load_config(path: str | Path, *, extra_sections: tuple[str, ...] = (),
                pending_ok: bool = False) -> Config:
    """Read and validate a config file. Raises ConfigError naming file, line and key.
    ``pending_ok``: an ACME identity may have no key yet (``certs request`` gets it)."""
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
    if sip["core"] not in CORES:
        raise src.error("sip", "core", f"{sip['core']!r} is not one of: {', '.join(CORES)}")
    if sip["core"] == "compiled" and not compiled_available():
        raise src.error("sip", "core", "the compiled core is not built in this install (no C "
                        "compiler when it was installed): install gcc and python3-dev and "
                        "run scripts/setup.sh again, or use \"auto\"")
    transport = _section(src, data, "transport", _TRANSPORT_KEYS)
    if not 0 <= transport["tcp_reserved_for_trusted"] < transport["max_tcp_connections"]:
        raise src.error("transport", "tcp_reserved_for_trusted",
                        "must be at least 0 and under max_tcp_connections")
    _positive(src, "transport", transport, "max_tcp_per_source", "tcp_first_message_timeout")
    _positive(src, "transport", transport, "max_tcp_connections", "tcp_idle_timeout",
              "tcp_connect_timeout", "max_tcp_pending_bytes", "gc_threshold",
              "timer_resolution", "udp_buffer")
    if transport["timer_resolution"] > 0.1:
        raise src.error("transport", "timer_resolution", "must be at most 0.1 s (T1 is 0.5 s)")
    if transport["shutdown_grace"] < 0:
        raise src.error("transport", "shutdown_grace", "must not be negative")
    if transport["workers"] == "auto":
        transport["workers"] = len(os.sched_getaffinity(0))
    elif isinstance(transport["workers"], str) or not 1 <= transport["workers"] <= 64:
        raise src.error("transport", "workers", "must be \"auto\" (one per core) or 1 to 64")
    admin = _section(src, data, "admin", _ADMIN_KEYS)
    admin_host, admin_port = parse_hostport(src, "admin", "listen", admin["listen"])
    password_file = Path(admin["password_file"]) if admin["password_file"] else None
    password = ""
    if password_file is not None:
        try:
            password = _secret_file(src, "admin", "password_file",
                                    password_file).decode().strip()
        except UnicodeDecodeError:
            raise src.error("admin", "password_file", f"cannot read {password_file}: not "
                            "UTF-8 text") from None
        if len(password) < 8:
            raise src.error("admin", "password_file", "the password needs at least 8 "
                            "characters")
    if not admin["user"] or ":" in admin["user"]:
        raise src.error("admin", "user", "must be a name without ':'")
    admin_limits = _http_limits(src, "admin", admin)
    log = _section(src, data, "log", _LOG_KEYS)
    if log["level"] not in ("debug", "info", "warning", "error"):
        raise src.error("log", "level", "must be debug, info, warning or error")
    if log["format"] not in ("text", "json"):
        raise src.error("log", "format", "must be \"text\" or \"json\"")
    flood_values = _section(src, data, "flood", _FLOOD_KEYS)
    _positive(src, "flood", flood_values, "requests_per_second", "burst", "ban_seconds",
              "max_sources")
    flood = FloodConfig(
        enabled=flood_values["enabled"],
        requests_per_second=float(flood_values["requests_per_second"]),
        burst=float(flood_values["burst"]), ban_seconds=float(flood_values["ban_seconds"]),
        max_sources=flood_values["max_sources"],
        exempt=_cidrs(src, "flood", "exempt", flood_values["exempt"]))
    tls = _tls(src, data, sides)
    digest = _digest(src, data) if "digest" in data else None
    rv = _section(src, data, "records", _RECORDS_KEYS)
    _positive(src, "records", rv, "keep_days", "flush_interval", "queue_max")
    webhook = None
    if rv["webhook_url"]:
        if not rv["webhook_url"].startswith(("https://", "http://")):
            raise src.error("records", "webhook_url", "must be an http(s) URL")
        if not rv["webhook_secret_file"]:
            raise src.error("records", "webhook_secret_file",
                            "is required with webhook_url (the signature's key)")
        key = _secret_file(src, "records", "webhook_secret_file",
                           Path(rv["webhook_secret_file"])).strip()
        if len(key) < 16:
            raise src.error("records", "webhook_secret_file", "needs at least 16 bytes")
        _positive(src, "records", rv, "webhook_batch", "webhook_timeout",
                  "webhook_max_backoff", "webhook_outbox_max")
        webhook = WebhookConfig(url=rv["webhook_url"], secret=key,
                                batch=rv["webhook_batch"],
                                timeout=float(rv["webhook_timeout"]),
                                max_backoff=float(rv["webhook_max_backoff"]),
                                outbox_max=rv["webhook_outbox_max"])
    records = RecordsConfig(enabled=rv["enabled"], keep_days=float(rv["keep_days"]),
                            flush_interval=float(rv["flush_interval"]),
                            queue_max=rv["queue_max"],
                            jsonl_dir=Path(rv["jsonl_dir"]) if rv["jsonl_dir"] else None,
                            journal_dir=Path(rv["journal_dir"]) if rv["journal_dir"]
                            else None,
                            webhook=webhook is not None,
                            outbox_max=rv["webhook_outbox_max"])
    created: list[DevPki] = []
    acme = _acme(src, data) if "acme" in data or "sti_pa" in data else None
    auth = (_auth(src, data, created, pending_ok=pending_ok)
            if "signing" in data or "accounts" in data else None)
    verify = _verify(src, data) if "verify" in data else None
    timers = TimerConfig(t1=float(sip["t1"]), t2=float(sip["t2"]), t4=float(sip["t4"]),
                         timer_c=float(sip["timer_c"]))
    engine = EngineConfig(
        dialer=sides[DIALER], carrier=sides[CARRIER], timers=timers,
        max_message_size=sip["max_message_size"], max_transactions=sip["max_transactions"],
        max_parked=verify.max_parked if verify else 10_000, flood=flood,
        retry_after=sip["retry_after"], server_name=sip["server_name"])
    redirect = _redirect(src, data, engine) if "redirect" in data else None
    rest = _rest(src, data) if "rest" in data else None
    return Config(
        path=path, engine=engine, auth=auth, verify=verify, redirect=redirect, rest=rest,
        acme=acme, tls=tls, digest=digest, records=records, webhook=webhook,
        transport=TransportConfig(**{k: transport[k] for k in _TRANSPORT_KEYS}),
        admin=AdminConfig(host=admin_host, port=admin_port, enabled=admin["enabled"],
                          user=admin["user"], password_file=password_file,
                          password=password, limits=admin_limits),
        log=LogConfig(level=log["level"], format=log["format"]),
        raw=data, created_keys=tuple(created), sip_core=sip["core"])


def _redirect(src: _Source, data: dict[str, Any], engine: EngineConfig) -> RedirectConfig:
    v = _section(src, data, "redirect", _REDIRECT_KEYS)
    host, port = parse_hostport(src, "redirect", "listen", v["listen"])
    if v["route"]:
        parse_hostport(src, "redirect", "route", v["route"])
    _positive(src, "redirect", v, "answer_cache_seconds")
    return RedirectConfig(
        host=host, port=port, route=v["route"],
        verify_sources=_cidrs(src, "redirect", "verify_sources", v["verify_sources"]),
        max_message_size=engine.max_message_size, max_parked=engine.max_parked,
        answer_cache_seconds=float(v["answer_cache_seconds"]),
        retry_after=engine.retry_after, server_name=engine.server_name, flood=engine.flood)


def _http_limits(src: _Source, section: str, v: dict[str, Any]) -> HttpLimits:
    _positive(src, section, v, "header_timeout", "body_timeout", "max_connections",
              "max_connections_per_source")
    if v["max_connections_per_source"] > v["max_connections"]:
        raise src.error(section, "max_connections_per_source", "must be at most "
                        "max_connections")
    return HttpLimits(header_timeout=float(v["header_timeout"]),
                      body_timeout=float(v["body_timeout"]),
                      max_connections=v["max_connections"],
                      max_per_source=v["max_connections_per_source"])


def _rest(src: _Source, data: dict[str, Any]) -> RestConfig:
    v = _section(src, data, "rest", _REST_KEYS)
    host, port = parse_hostport(src, "rest", "listen", v["listen"])
    _positive(src, "rest", v, "max_body_bytes", "max_in_flight", "max_in_flight_per_account")
    limits = _http_limits(src, "rest", v)
    files: dict[str, Path | None] = {}
    for key in ("tls_certificate", "tls_key", "tls_client_ca"):
        files[key] = Path(v[key]) if v[key] else None
        if files[key] is not None and not files[key].is_file():  # type: ignore[union-attr]
            raise src.error("rest", key, f"{v[key]} does not exist")
    if (files["tls_certificate"] is None) != (files["tls_key"] is None):
        raise src.error("rest", "tls_key", "tls_certificate and tls_key go together")
    if files["tls_client_ca"] is not None and files["tls_certificate"] is None:
        raise src.error("rest", "tls_client_ca", "client certificates need HTTPS "
                        "(tls_certificate and tls_key)")
    return RestConfig(host=host, port=port, max_body_bytes=v["max_body_bytes"],
                      max_in_flight=v["max_in_flight"],
                      max_in_flight_per_account=v["max_in_flight_per_account"], limits=limits,
                      tls_certificate=files["tls_certificate"], tls_key=files["tls_key"],
                      tls_client_ca=files["tls_client_ca"])


_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}\Z")


def _cidrs(src: _Source, section: str, key: str, values: list[Any],
           entry: int | None = None) -> tuple[str, ...]:
    out = []
    for item in values:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except (TypeError, ValueError):
            raise src.error(section, key, f"{item!r} is not an IP address or CIDR",
                            entry) from None
    return tuple(out)


def _dev_keys(src: _Source, v: dict[str, Any], entry: int) -> DevPki:
    """Development keys at the paths a [[signing]] entry names (its directory gets ca.pem and
    ca-key.pem, and cert.pem / chain.pem where it names none)."""
    key = Path(v["key"])
    folder = key.parent
    paths = DevPki(ca_cert=folder / "ca.pem", ca_key=folder / "ca-key.pem",
                   cert=Path(v["certificate"]) if v["certificate"] else folder / "cert.pem",
                   key=key, chain=Path(v["chain"]) if v["chain"] else folder / "chain.pem")
    try:
        return write_dev_pki(paths, spc=v["dev_spc"])
    except ValueError as exc:
        raise src.error("signing", "dev_spc", str(exc), entry) from None
    except (FileExistsError, KeyFileError) as exc:
        raise src.error("signing", "key", f"cannot create development keys: {exc}",
                        entry) from None


_TEMPLATE_RE = re.compile(r"\{(?!serial\})[^}]*\}")


def _signing_roots(src: _Source, data: dict[str, Any], v: dict[str, Any], entry: int,
                   key_path: Path) -> tuple[x509.Certificate, ...]:
    """The STI-CA roots an identity's chain must validate to: its own ``roots``, else
    [verify] trust_anchors, else the development CA beside the key (``keys init``, dev_spc)."""
    if v["roots"]:
        return tuple(_load_pem_certs(src, "roots", v["roots"], section="signing", entry=entry))
    anchors = data.get("verify", {}).get("trust_anchors")
    if isinstance(anchors, list) and anchors:
        return tuple(_load_pem_certs(src, "trust_anchors", anchors))
    dev_ca = key_path.parent / "ca.pem"
    if dev_ca.is_file():
        return tuple(_load_pem_certs(src, "roots", [str(dev_ca)], section="signing",
                                     entry=entry))
    return ()


def _signing(src: _Source, data: dict[str, Any], v: dict[str, Any], i: int,
             created: list[DevPki], *, pending_ok: bool) -> SigningConfig:
    """One [[signing]] identity with its certificate checked (ATIS-1000080 §6.4.1)."""
    for opt in ("x5u", "serve_path", "publish_url"):
        if _TEMPLATE_RE.search(v[opt]):
            raise src.error("signing", opt, "the only placeholder is {serial}", i)
    if not re.match(r"https?://[^\s?#]+\Z", v["x5u"]):
        raise src.error("signing", "x5u", "must be an https:// URL without query or "
                        "fragment (http:// only for development)", i)
    if v["publish_url"] and not re.match(r"https?://[^\s#]+\Z", v["publish_url"]):
        raise src.error("signing", "publish_url", "must be an https:// URL", i)
    spc = v["spc"] or v["dev_spc"]
    if v["acme"]:
        if not spc:
            raise src.error("signing", "spc", "an ACME identity needs its SPC", i)
        if not v["organization"]:
            raise src.error("signing", "organization",
                            "an ACME identity needs the organization for its certificate", i)
        if not v["certificate"] or not v["chain"]:
            raise src.error("signing", "chain", "an ACME identity needs certificate and chain "
                            "(where the certificate it gets is installed)", i)
        if "acme" not in data or "sti_pa" not in data:
            raise src.error("signing", "acme", "needs the [acme] and [sti_pa] sections", i)
    key_path = Path(v["key"])
    if v["dev_spc"] and not key_path.exists():
        created.append(_dev_keys(src, v, i))
    token_file = Path(v["publish_token_file"]) if v["publish_token_file"] else None
    if token_file is not None and not token_file.is_file():
        raise src.error("signing", "publish_token_file", f"{token_file} does not exist", i)
    common = dict(name=v["name"], key_path=key_path, x5u=v["x5u"], x5u_template=v["x5u"],
                  serve_path=v["serve_path"], serve_template=v["serve_path"],
                  dev_spc=v["dev_spc"], spc=spc, acme=v["acme"],
                  organization=v["organization"], publish_url=v["publish_url"],
                  publish_token_file=token_file,
                  certificate=Path(v["certificate"]) if v["certificate"] else None,
                  chain=Path(v["chain"]) if v["chain"] else None)
    roots = _signing_roots(src, data, v, i, key_path)
    if v["acme"] and not roots:
        raise src.error("signing", "roots", "an ACME identity needs the STI-CA root(s) its "
                        "certificate must chain to", i)
    if v["acme"] and pending_ok and not key_path.exists():
        return SigningConfig(key=None, roots=roots, **common)  # type: ignore[arg-type]
    try:
        key = load_private_key(key_path)
    except FileNotFoundError:
        hint = (f"get it with: stirshaken-proxy certs request --identity {v['name']}"
                if v["acme"] else
                "development keys: set dev_spc, or run stirshaken-proxy keys init DIR --spc CODE")
        raise src.error("signing", "key", f"{key_path} does not exist ({hint})", i) from None
    except (OSError, ValueError, TypeError) as exc:
        raise src.error("signing", "key", f"{key_path}: not a usable private key: {exc}",
                        i) from None
    if not isinstance(key.curve, ec.SECP256R1):
        raise src.error("signing", "key", f"{key_path}: ES256 needs a P-256 key", i)
    for opt in ("certificate", "chain"):
        if v[opt] and not Path(v[opt]).is_file():
            raise src.error("signing", opt, f"{v[opt]} does not exist", i)
    if v["serve_path"] and (not v["serve_path"].startswith("/") or not v["chain"]):
        raise src.error("signing", "serve_path", "must start with / and needs chain", i)
    config = SigningConfig(key=key, roots=roots, **common)
    chain_path = config.chain or config.certificate
    if chain_path is None:
        return config  # a key only: the certificate lives elsewhere (x5u)
    which = "chain" if config.chain else "certificate"
    if not roots:
        raise src.error("signing", "roots", "needs the STI-CA root(s) the certificate must "
                        "chain to (or [verify] trust_anchors)", i)
    try:
        info = check_signing_chain(key, chain_path.read_bytes(), spc=spc, roots=list(roots),
                                   now=time.time())
    except (OSError, SigningCertificateError) as exc:
        raise src.error("signing", which, f"{chain_path}: {exc}", i) from None
    config = replace(config, cert_info=info)
    return replace(config, x5u=config.resolved(v["x5u"]),
                   serve_path=config.resolved(v["serve_path"]))


def _acme(src: _Source, data: dict[str, Any]) -> AcmeConfig:
    a = _section(src, data, "acme", _ACME_KEYS)
    p = _section(src, data, "sti_pa", _STI_PA_KEYS)
    if not re.match(r"https?://[^\s#]+\Z", a["directory"]):
        raise src.error("acme", "directory", "must be the ACME directory's https:// URL")
    if not re.match(r"https?://[^\s#]+\Z", p["url"]):
        raise src.error("sti_pa", "url", "must be the STI-PA API's https:// URL")
    if not 0 < a["renew_before"] < 1:
        raise src.error("acme", "renew_before", "must be a share of the lifetime, 0 to 1 "
                        "(0.33: renew when a third is left)")
    _positive(src, "acme", a, "check_interval", "retry_interval", "timeout")
    ca_file = Path(a["ca_file"]) if a["ca_file"] else None
    if ca_file is not None and not ca_file.is_file():
        raise src.error("acme", "ca_file", f"{ca_file} does not exist")
    password = Path(p["password_file"]) if p["password_file"] else None
    if password is not None and not password.is_file():
        raise src.error("sti_pa", "password_file", f"{password} does not exist")
    keys = []
    for cert in _load_pem_certs(src, "token_keys", p["token_keys"], section="sti_pa"):
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise src.error("sti_pa", "token_keys", "the STI-PA signs with ES256 (P-256 keys)")
        keys.append(key)
    if not keys:
        raise src.error("sti_pa", "token_keys", "needs the STI-PA's certificate(s)")
    return AcmeConfig(
        directory=a["directory"], account_key=Path(a["account_key"]),
        contact=tuple(str(c) for c in a["contact"]), ca_file=ca_file,
        renew_before=float(a["renew_before"]), check_interval=float(a["check_interval"]),
        retry_interval=float(a["retry_interval"]), timeout=float(a["timeout"]),
        sti_pa_url=p["url"].rstrip("/"), sti_pa_user=p["user_id"],
        sti_pa_password_file=password, sti_pa_keys=tuple(keys),
        token_lifetime_margin=float(p["token_min_validity"]))


def _auth(src: _Source, data: dict[str, Any], created: list[DevPki], *,
          pending_ok: bool = False) -> AuthConfig:
    store = _section(src, data, "store", _STORE_KEYS)
    _positive(src, "store", store, "refresh_interval", "max_range_size")
    if store["url"] and not re.match(r"(postgresql|postgres|sqlite)://", store["url"]):
        raise src.error("store", "url", "must be postgresql://user@host/db or sqlite:///path")
    policy = _section(src, data, "auth", _AUTH_KEYS)
    unsigned = _choice(src, "auth", "unsigned_calls", policy["unsigned_calls"], UnsignedCalls)
    if policy["max_date_skew"] <= 0:
        raise src.error("auth", "max_date_skew", "must be greater than 0")
    if not ascii_digits(policy["country_code"]):
        raise src.error("auth", "country_code", "must be digits, e.g. \"1\"")
    neighbour = _choice(src, "auth", "neighbour_spoofing", policy["neighbour_spoofing"],
                        NeighbourSpoofing)
    hv = _section(src, data, "health", _HEALTH_KEYS)
    _positive(src, "health", hv, "max_calls_per_hour", "min_average_duration", "min_samples",
              "quarantine_hours", "flush_interval", "redis_timeout", "redis_stream_max")
    if hv["redis"] and not re.match(r"rediss?://[^\s]+\Z", hv["redis"]):
        raise src.error("health", "redis", "must be redis://host:port/db (or rediss://)")
    if not 0 <= hv["min_answer_ratio"] <= 1:
        raise src.error("health", "min_answer_ratio", "must be between 0 and 1")
    health = HealthLimits(
        max_calls_per_hour=hv["max_calls_per_hour"],
        min_average_duration=float(hv["min_average_duration"]),
        min_answer_ratio=float(hv["min_answer_ratio"]),
        short_call_seconds=float(hv["short_call_seconds"]), min_samples=hv["min_samples"],
        quarantine_seconds=float(hv["quarantine_hours"]) * 3600) if hv["enabled"] else None
    signing: dict[str, SigningConfig] = {}
    for i, raw in enumerate(_array(src, data, "signing")):
        v = _section(src, data, "signing", _SIGNING_KEYS, entry=i, raw=raw)
        if v["name"] in signing:
            raise src.error("signing", "name", f"duplicate name {v['name']!r}", i)
        signing[v["name"]] = _signing(src, data, v, i, created, pending_ok=pending_ok)
        if v["serve_path"] and "{serial}" not in v["serve_path"] and any(
                s.serve_template == v["serve_path"] for s in list(signing.values())[:-1]):
            raise src.error("signing", "serve_path", f"{v['serve_path']} is another "
                            "identity's (add {serial}, or give each its own)", i)
    accounts: list[Account] = []
    numbers: list[NumberBlock] = []
    api_keys: dict[str, str] = {}
    tls_owner: dict[str, str] = {}  # client certificate name -> account
    for i, raw in enumerate(_array(src, data, "accounts")):
        v = _section(src, data, "accounts", _ACCOUNT_KEYS, entry=i, raw=raw)
        if any(a.name == v["name"] for a in accounts):
            raise src.error("accounts", "name", f"duplicate name {v['name']!r}", i)
        try:
            check_origid(v["origid"])
        except ClaimError as exc:
            raise src.error("accounts", "origid", exc.text, i) from None
        if v["signing"] not in signing:
            known = ", ".join(sorted(signing)) or "none configured"
            raise src.error("accounts", "signing",
                            f"no [[signing]] named {v['signing']!r} (known: {known})", i)
        for text in v["numbers"]:
            try:
                first, last = parse_block_text(str(text), country_code=policy["country_code"])
            except NumberFormatError as exc:
                raise src.error("accounts", "numbers", str(exc), i) from None
            block = NumberBlock(first=first, last=last, account=v["name"], label="config")
            if block.size > store["max_range_size"]:
                raise src.error("accounts", "numbers", f"{text}: a range of {block.size:,} "
                                f"numbers is over [store] max_range_size "
                                f"({store['max_range_size']:,})", i)
            numbers.append(block)
        if v["max_calls_per_hour"] < 0:
            raise src.error("accounts", "max_calls_per_hour", "must not be negative", i)
        presence = _choice(src, "accounts", "local_presence", v["local_presence"],
                           LocalPresence, i)
        for value in v["api_keys"]:
            if not isinstance(value, str) or not _KEY_HASH.match(value):
                raise src.error("accounts", "api_keys", f"{value!r} is not \"sha256:<64 hex "
                                "digits>\" (make one with: stirshaken-proxy api-key new)", i)
            if value in api_keys:
                raise src.error("accounts", "api_keys", "the same key is given to two "
                                "accounts", i)
            api_keys[value] = v["name"]
        business = _business(src, v["business"], i) if v["business"] else None
        brand = ""
        if v["brand"]:
            try:
                brand = check_name(v["brand"])
            except RcdError as exc:
                raise src.error("accounts", "brand", str(exc), i) from None
            problem = business.brand_problem(brand) if business is not None else None
            if problem is not None:
                raise src.error("accounts", "brand", problem, i)
        tls_names = []
        for value in v["tls_names"]:
            if not isinstance(value, str) or not value or any(c in value for c in " \n*"):
                raise src.error("accounts", "tls_names", f"{value!r} is not a certificate "
                                "name (a DNS name or the domain of a sip: URI, no wildcard)", i)
            owner = tls_owner.setdefault(value.lower(), v["name"])
            if owner != v["name"]:
                raise src.error("accounts", "tls_names", f"{value!r} already names account "
                                f"{owner!r}", i)
            tls_names.append(value.lower())
        accounts.append(Account(name=v["name"], origid=v["origid"],
                                sources=_cidrs(src, "accounts", "sources", v["sources"], i),
                                signing=v["signing"], gateway=v["gateway"],
                                local_presence=presence,
                                max_calls_per_hour=v["max_calls_per_hour"] or None,
                                tls_names=tuple(tls_names), brand=brand, business=business))
    clash = overlapping(numbers)
    if clash is not None:
        entry = next(i for i, a in enumerate(accounts) if a.name == clash[1].account)
        raise src.error("accounts", "numbers",
                        f"{block_text(clash[1])} ({clash[1].account}) overlaps "
                        f"{block_text(clash[0])} ({clash[0].account})", entry)
    if not signing:
        raise ConfigError(f"{src.path}: [[accounts]] need at least one [[signing]] identity")
    return AuthConfig(
        store_path=Path(store["path"]), refresh_interval=float(store["refresh_interval"]),
        signing=tuple(signing.values()), accounts=tuple(accounts), numbers=tuple(numbers),
        policy=AuthPolicy(unsigned_calls=unsigned,
                          max_date_skew=policy["max_date_skew"],
                          country_code=policy["country_code"],
                          neighbour_spoofing=neighbour,
                          local_presence_header=policy["local_presence_header"],
                          call_reason_header=policy["call_reason_header"]),
        health=health, health_flush_interval=float(hv["flush_interval"]), api_keys=api_keys,
        health_redis=hv["redis"] if hv["enabled"] else "",
        health_redis_timeout=float(hv["redis_timeout"]),
        health_redis_stream_max=hv["redis_stream_max"],
        max_range_size=store["max_range_size"], store_url=store["url"],
        store_instance=store["instance"] or socket.gethostname())


def _load_pem_certs(src: _Source, key: str, paths: list[Any], *, section: str = "verify",
                    entry: int | None = None) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for item in paths:
        path = Path(str(item))
        try:
            certs.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except FileNotFoundError:
            raise src.error(section, key, f"{path} does not exist", entry) from None
        except (OSError, ValueError) as exc:
            raise src.error(section, key, f"{path}: not PEM certificates: {exc}",
                            entry) from None
    return certs


def _verify(src: _Source, data: dict[str, Any]) -> VerifyConfig | None:
    v = _section(src, data, "verify", _VERIFY_KEYS)
    if not v["enabled"]:
        return None
    on_failure = _choice(src, "verify", "on_failure", v["on_failure"], OnFailure)
    on_missing = _choice(src, "verify", "on_missing", v["on_missing"], OnFailure)
    _positive(src, "verify", v, "freshness", "fetch_timeout", "fetch_max_bytes",
              "cache_max_age", "cache_default_age", "negative_cache_age", "cache_entries",
              "max_in_flight", "max_parked", "max_in_flight_per_host", "host_failures",
              "host_backoff")
    anchors = _load_pem_certs(src, "trust_anchors", v["trust_anchors"])
    if not anchors:
        raise src.error("verify", "trust_anchors", "needs at least one STI-CA root certificate")
    crls: list[x509.CertificateRevocationList] = []
    for item in v["crl_files"]:
        path = Path(str(item))
        try:
            raw = path.read_bytes()
            crls.append(x509.load_pem_x509_crl(raw) if raw.lstrip().startswith(b"-----")
                        else x509.load_der_x509_crl(raw))
        except (OSError, ValueError) as exc:
            raise src.error("verify", "crl_files", f"{path}: not a CRL: {exc}") from None
    ports = v["allowed_ports"]
    if not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise src.error("verify", "allowed_ports", "must be port numbers")
    nets = _cidrs(src, "verify", "allow_networks", v["allow_networks"])
    tls_ca = Path(v["tls_ca_file"]) if v["tls_ca_file"] else None
    if tls_ca is not None and not tls_ca.is_file():
        raise src.error("verify", "tls_ca_file", f"{tls_ca} does not exist")
    country = data.get("auth", {}).get("country_code", "1")
    return VerifyConfig(
        policy=VerifyPolicy(on_failure=on_failure, on_missing=on_missing,
                            attestation_header=v["attestation_header"],
                            country_code=str(country)),
        url_policy=UrlPolicy(ports=tuple(ports), allow_networks=nets,
                             allow_http=v["allow_http"]),
        # CRL distribution points are plain http on port 80 as a rule.
        crl_policy=UrlPolicy(ports=tuple({80, *ports}), allow_networks=nets, allow_http=True),
        fetch=FetchLimits(timeout=float(v["fetch_timeout"]), max_bytes=v["fetch_max_bytes"],
                          max_in_flight=v["max_in_flight"],
                          max_per_host=v["max_in_flight_per_host"],
                          host_failures=v["host_failures"],
                          host_backoff=float(v["host_backoff"])),
        cache=CachePolicy(max_age=float(v["cache_max_age"]),
                          default_age=float(v["cache_default_age"]),
                          negative_age=float(v["negative_cache_age"])),
        anchors=tuple(anchors), crls=tuple(crls), freshness=v["freshness"],
        cache_entries=v["cache_entries"], max_parked=v["max_parked"], tls_ca_file=tls_ca)
