"""Accounts (tenants) and gateways, recognised by the source address of their traffic or by
the name in the client certificate of their TLS connection."""

from __future__ import annotations

import enum
import ipaddress
import re
import uuid
from dataclasses import dataclass

_CACHE_LIMIT = 65536


class LocalPresence(enum.StrEnum):
    """Caller-ID selection for an account's calls."""

    OFF = "off"
    ALWAYS = "always"
    HEADER = "header"  # when the dialer asks, per call


@dataclass(frozen=True, kw_only=True)
class Business:
    """The business behind an account, as analytics engines' registrations ask for it (and
    as a provider verifies it before signing A for it)."""

    legal_name: str
    ein: str = ""  # US Employer Identification Number, NN-NNNNNNN
    address: str = ""
    contact: str = ""
    dba: tuple[str, ...] = ()  # names it does business as
    call_purpose: str = "Telemarketing"  # one of policy.registration.CALL_PURPOSES

    def brand_problem(self, name: str) -> str | None:
        """Why ``name`` cannot be this business's brand: it must share a word (beyond
        legal suffixes) with the legal name or a DBA name."""
        want = set().union(*(_words(n) for n in (self.legal_name, *self.dba)))
        if want & _words(name):
            return None
        names = ", ".join(repr(n) for n in (self.legal_name, *self.dba))
        return f"brand name {name!r} does not match the business ({names})"


_SUFFIXES = {"inc", "llc", "ltd", "co", "corp", "corporation", "company", "lp", "llp", "plc",
             "the", "and", "of"}


def _words(name: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", name.lower()) if w not in _SUFFIXES}


@dataclass(frozen=True, kw_only=True)
class Account:
    name: str
    origid: str  # a UUID (RFC 8588 origid) identifying this origination point
    sources: tuple[str, ...]  # CIDRs
    signing: str = "default"  # the signing identity this account's calls are signed with
    gateway: bool = False  # traffic from a gateway: signed C (ATIS-1000074 §5.2.3)
    local_presence: LocalPresence = LocalPresence.OFF
    max_calls_per_hour: int | None = None  # this account's velocity limit per number
    tls_names: tuple[str, ...] = ()  # client certificate names (lower case) that identify it
    brand: str = ""  # the name its A-attested calls present (Rich Call Data), from the config
    business: Business | None = None

    def __post_init__(self) -> None:
        if str(uuid.UUID(self.origid)) != self.origid:  # signed as given: canonical only
            raise ValueError(f"origid {self.origid!r} is not a UUID in canonical form")


class AccountDirectory:
    """Source address -> account. Most specific CIDR wins; verdicts are cached (bounded)."""

    __slots__ = ("_cache", "_networks", "_tls_names", "accounts")

    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = {a.name: a for a in accounts}
        nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Account]] = []
        for a in accounts:
            for cidr in a.sources:
                nets.append((ipaddress.ip_network(cidr, strict=False), a))
        nets.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._networks = nets
        self._cache: dict[str, Account | None] = {}
        self._tls_names = {name: a for a in accounts for name in a.tls_names}

    def by_certificate(self, names: tuple[str, ...]) -> Account | None:
        """The account one of a verified client certificate's names identifies."""
        for name in names:
            account = self._tls_names.get(name)
            if account is not None:
                return account
        return None

    def by_peer(self, host: str, names: tuple[str, ...]) -> Account | None:
        """By source address first (a trunk), then by client certificate."""
        account = self.by_source(host)
        if account is None and names:
            account = self.by_certificate(names)
        return account

    def by_source(self, host: str) -> Account | None:
        try:
            return self._cache[host]
        except KeyError:
            pass
        found: Account | None = None
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr = None
        if addr is not None:
            for net, account in self._networks:
                if addr.version == net.version and addr in net:
                    found = account
                    break
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[host] = found
        return found

    def all_sources(self) -> tuple[str, ...]:
        return tuple(str(net) for net, _ in self._networks)
