"""Which source addresses a side accepts requests from."""

from __future__ import annotations

import ipaddress

_CACHE_LIMIT = 65536


class SourceFilter:
    """Address allow-list by CIDR, with a bounded cache of verdicts per source address."""

    __slots__ = ("_cache", "_networks", "allow_any")

    def __init__(self, cidrs: tuple[str, ...] | list[str], *, allow_any: bool = False) -> None:
        self._networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self.allow_any = allow_any
        self._cache: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        if self.allow_any:
            return True
        verdict = self._cache.get(host)  # (lists' first step, without its call: every request)
        return verdict if verdict is not None else self.lists(host)

    def lists(self, host: str) -> bool:
        """The address is in one of the networks (whatever allow_any says)."""
        verdict = self._cache.get(host)
        if verdict is None:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                verdict = False
            else:
                verdict = any(addr in net for net in self._networks)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[host] = verdict
        return verdict
