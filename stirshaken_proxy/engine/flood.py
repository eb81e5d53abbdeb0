"""Flood protection in the spirit of Kamailio's pike: a request-rate limit per source address,
with a temporary ban for sources that exceed it (pure: ``now`` comes in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class FloodConfig:
    requests_per_second: float = 50.0  # sustained rate allowed per untrusted source address
    burst: float = 100.0  # requests such a source may send at once
    ban_seconds: float = 60.0  # how long an offender is ignored
    max_sources: int = 100_000  # tracked addresses (the oldest are forgotten first)
    exempt: tuple[str, ...] = ()  # CIDRs never limited, besides the trusted peers
    enabled: bool = True


class FloodGuard:
    """Token bucket per source; over the limit the source is banned and its requests are
    dropped unanswered (answering a flood feeds it). Responses are never limited, and the
    caller exempts trusted peers (accounts' trunks, next hops)."""

    __slots__ = ("_buckets", "banned_total", "config", "dropped")

    def __init__(self, config: FloodConfig) -> None:
        self.config = config
        # host -> [tokens, last update, banned until]
        self._buckets: dict[str, list[float]] = {}
        self.dropped = 0
        self.banned_total = 0

    def allow(self, host: str, now: float) -> bool:
        if not self.config.enabled:
            return True
        cfg = self.config
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= cfg.max_sources:
                # Bounded memory: forget the entry inserted first (dicts keep order).
                del self._buckets[next(iter(self._buckets))]
            bucket = [cfg.burst, now, 0.0]
            self._buckets[host] = bucket
        if bucket[2] > now:
            self.dropped += 1
            return False
        tokens = min(cfg.burst, bucket[0] + (now - bucket[1]) * cfg.requests_per_second)
        bucket[1] = now
        if tokens < 1.0:
            bucket[2] = now + cfg.ban_seconds
            bucket[0] = 0.0
            self.banned_total += 1
            self.dropped += 1
            return False
        bucket[0] = tokens - 1.0
        return True

    def banned(self, now: float) -> list[str]:
        return [h for h, b in self._buckets.items() if b[2] > now]

    def __len__(self) -> int:
        return len(self._buckets)
