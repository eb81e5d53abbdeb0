"""x5u URL policy (ATIS-1000074 §5.3.1) and the address guard against server-side request
forgery. Pure: the fetcher resolves names and asks ``address_allowed`` about each address."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True, kw_only=True)
class FetchLimits:
    """Bounds on one fetch (ATIS-1000074 §5.3.1: a verifier must bound it)."""

    timeout: float = 2.0
    max_bytes: int = 64 * 1024
    max_in_flight: int = 64
    max_per_host: int = 4  # in flight to one host; hosts take turns for the free slots
    host_failures: int = 5  # failures in a row after which a host is not asked for a while
    host_backoff: float = 30.0  # seconds a failing host is not asked


@dataclass(frozen=True, kw_only=True)
class UrlPolicy:
    ports: tuple[int, ...] = (443, 8443)  # ATIS-1000074 (AT&T serves on 8443)
    # Networks a fetch may reach although they are loopback/private/special. Production: empty.
    allow_networks: tuple[str, ...] = ()
    allow_http: bool = False  # development only
    _nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_nets", tuple(ipaddress.ip_network(n, strict=False)
                                                 for n in self.allow_networks))

    def check_url(self, url: str) -> str | None:
        """None when the URL may be fetched, else the reason it may not (a 436 reason)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "malformed URL"
        if parts.scheme != "https" and not (self.allow_http and parts.scheme == "http"):
            return f"scheme {parts.scheme or '(none)'} is not https"
        if not parts.hostname:
            return "no host"
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            return "userinfo in URL"
        if parts.query or url.endswith("?"):
            return "query in URL"
        if parts.fragment or "#" in url:
            return "fragment in URL"
        effective = port if port is not None else (443 if parts.scheme == "https" else 80)
        if effective not in self.ports:
            return f"port {effective} is not allowed"
        return None

    def address_allowed(self, address: str) -> bool:
        """A resolved address may be connected to: global unicast, or named by the allow-list."""
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = self._nets
        if any(ip.version == n.version and ip in n for n in nets):
            return True
        return ip.is_global and not ip.is_multicast
