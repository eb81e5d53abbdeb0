"""Number health: what carriers' analytics act on, per calling number (pure: ``now`` comes in).

Velocity is kept exactly over a sliding hour (the attempt times themselves, bounded); answer
ratio, durations, short calls and the final-response mix over a day in hourly buckets. A
number at its velocity limit is not chosen until calls age out of the hour; a number whose
answer ratio or average duration falls under its limits (once it has enough calls to judge)
is quarantined for a cool-down, and so is a number the operator flags.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True, kw_only=True)
class HealthLimits:
    """Defaults from what carriers are known to act on."""

    max_calls_per_hour: int = 50
    min_average_duration: float = 30.0  # seconds, answered calls
    min_answer_ratio: float = 0.2
    short_call_seconds: float = 6.0  # an answered call shorter than this is "short"
    min_samples: int = 50  # calls in the window before ASR/ACD are judged (noise)
    quarantine_seconds: float = 24 * 3600.0
    window_hours: int = 24  # ASR/ACD window


class State(enum.Enum):
    HEALTHY = "healthy"
    AT_LIMIT = "at_velocity_limit"
    QUARANTINED = "quarantined"


HOUR = 3600.0


class HealthEventKind(enum.Enum):
    ATTEMPT = "attempt"  # a signed INVITE from this number
    FINAL = "final"  # the INVITE's final response (code)
    ENDED = "ended"  # an answered call ended (duration)
    QUARANTINE = "quarantine"  # the operator took it out of rotation (reason, seconds)
    RELEASE = "release"  # the operator put it back


class HealthEvent(NamedTuple):
    """One change to a number's statistics or state. Every replica applies the same events
    (each worker keeps one; worker 0 writes it to the store). A NamedTuple: one is made for
    every call event."""

    kind: HealthEventKind
    tn: str
    now: float
    code: int = 0
    duration: float = 0.0
    reason: str = ""
    seconds: float | None = None


def _event(kind: HealthEventKind, tn: str, now: float, code: int, duration: float
           ) -> HealthEvent:
    """A call's HealthEvent (reason "", seconds None) by tuple.__new__: a NamedTuple's own
    __new__ is interpreted Python, and every signed call makes three."""
    return tuple.__new__(HealthEvent, (kind, tn, now, code, duration, "", None))


@dataclass
class _Bucket:
    hour: int
    attempts: int = 0
    answered: int = 0
    duration: float = 0.0  # of answered calls that ended
    ended: int = 0
    short: int = 0
    finals: Counter[int] = field(default_factory=Counter)


@dataclass
class NumberStats:
    tn: str
    recent: deque[float] = field(default_factory=deque)  # attempt times, last hour
    buckets: deque[_Bucket] = field(default_factory=deque)
    quarantined_until: float = 0.0
    quarantine_reason: str = ""
    last_used: float = 0.0

    def bucket(self, now: float, window_hours: int) -> _Bucket:
        hour = int(now // HOUR)
        if not self.buckets or self.buckets[-1].hour != hour:
            self.buckets.append(_Bucket(hour=hour))
        while self.buckets and self.buckets[0].hour <= hour - window_hours:
            self.buckets.popleft()
        return self.buckets[-1]

    def calls_last_hour(self, now: float) -> int:
        recent = self.recent
        while recent and recent[0] <= now - HOUR:
            recent.popleft()
        return len(recent)

    def sums(self, now: float, window_hours: int) -> tuple[int, int, int, float]:
        """Attempts, answered, ended and their duration over the window: what the automatic
        quarantine judges, twice a call (without totals()'s per-code counts)."""
        first = int(now // HOUR) - window_hours
        attempts = answered = ended = 0
        duration = 0.0
        for b in self.buckets:
            if b.hour > first:
                attempts += b.attempts
                answered += b.answered
                ended += b.ended
                duration += b.duration
        return attempts, answered, ended, duration

    def totals(self, now: float, window_hours: int) -> dict[str, float]:
        attempts, answered, ended, duration = self.sums(now, window_hours)
        hour = int(now // HOUR)
        live = [b for b in self.buckets if b.hour > hour - window_hours]
        finals: Counter[int] = Counter()
        for b in live:
            finals.update(b.finals)
        return {
            "attempts": attempts, "answered": answered,
            "answer_ratio": answered / attempts if attempts else 0.0,
            "average_duration": duration / ended if ended else 0.0,
            "short_calls": sum(b.short for b in live), "ended": ended,
            "finals": dict(finals),  # type: ignore[dict-item]
        }


class NumberHealth:
    """Statistics and state of every calling number the proxy has seen."""

    def __init__(self, limits: HealthLimits, *, max_numbers: int = 1_000_000) -> None:
        self.limits = limits
        self.max_numbers = max_numbers
        self.numbers: dict[str, NumberStats] = {}
        self.quarantines = 0  # quarantines started, for metrics
        self.dirty: set[str] = set()  # changed since the last flush to the store

    def stats(self, tn: str) -> NumberStats:
        s = self.numbers.get(tn)
        if s is None:
            if len(self.numbers) >= self.max_numbers:
                del self.numbers[next(iter(self.numbers))]  # bounded: oldest first
            s = self.numbers[tn] = NumberStats(tn=tn)
        return s

    # -- what the signalling tells -----------------------------------------------------
    # Each returns the event, for the caller to pass on to the other replicas.
    def attempt(self, tn: str, now: float) -> HealthEvent:
        self.dirty.add(tn)
        s = self.stats(tn)
        s.recent.append(now)
        cap = self.limits.max_calls_per_hour * 20  # bounded even when nothing enforces it
        while len(s.recent) > cap:
            s.recent.popleft()
        s.bucket(now, self.limits.window_hours).attempts += 1
        s.last_used = now
        return _event(HealthEventKind.ATTEMPT, tn, now, 0, 0.0)

    def final(self, tn: str, code: int, now: float) -> HealthEvent:
        self.dirty.add(tn)
        s = self.stats(tn)
        b = s.bucket(now, self.limits.window_hours)
        b.finals[code] += 1
        if 200 <= code < 300:
            b.answered += 1
        self._judge(s, now)
        return _event(HealthEventKind.FINAL, tn, now, code, 0.0)

    def ended(self, tn: str, duration: float, now: float) -> HealthEvent:
        self.dirty.add(tn)
        s = self.stats(tn)
        b = s.bucket(now, self.limits.window_hours)
        b.ended += 1
        b.duration += duration
        if duration < self.limits.short_call_seconds:
            b.short += 1
        self._judge(s, now)
        return _event(HealthEventKind.ENDED, tn, now, 0, duration)

    # -- state ----------------------------------------------------------------------------
    def state(self, tn: str, now: float, max_per_hour: int | None = None) -> State:
        """``max_per_hour`` overrides the velocity limit (an account's own)."""
        s = self.numbers.get(tn)
        if s is None:
            return State.HEALTHY
        if s.quarantined_until > now:
            return State.QUARANTINED
        limit = max_per_hour if max_per_hour is not None else self.limits.max_calls_per_hour
        if s.calls_last_hour(now) >= limit:
            return State.AT_LIMIT
        return State.HEALTHY

    def quarantine(self, tn: str, reason: str, now: float,
                   seconds: float | None = None) -> HealthEvent:
        """By the operator (automatic quarantines follow from the statistics, in each
        replica alike, and are not events)."""
        self._quarantine(tn, reason, now, seconds)
        return HealthEvent(HealthEventKind.QUARANTINE, tn, now, reason=reason, seconds=seconds)

    def _quarantine(self, tn: str, reason: str, now: float, seconds: float | None) -> None:
        s = self.stats(tn)
        s.quarantined_until = now + (seconds if seconds is not None
                                     else self.limits.quarantine_seconds)
        s.quarantine_reason = reason
        self.quarantines += 1
        self.dirty.add(tn)

    def release(self, tn: str, now: float = 0.0) -> HealthEvent:
        s = self.numbers.get(tn)
        if s is not None:
            s.quarantined_until = 0.0
            s.quarantine_reason = ""
            self.dirty.add(tn)
        return HealthEvent(HealthEventKind.RELEASE, tn, now)

    def apply(self, event: HealthEvent) -> None:
        """An event another replica made."""
        kind = event.kind
        if kind is HealthEventKind.ATTEMPT:
            self.attempt(event.tn, event.now)
        elif kind is HealthEventKind.FINAL:
            self.final(event.tn, event.code, event.now)
        elif kind is HealthEventKind.ENDED:
            self.ended(event.tn, event.duration, event.now)
        elif kind is HealthEventKind.QUARANTINE:
            self._quarantine(event.tn, event.reason, event.now, event.seconds)
        else:
            self.release(event.tn, event.now)

    def _judge(self, s: NumberStats, now: float) -> None:
        if s.quarantined_until > now:
            return
        lim = self.limits
        attempts, answered, ended, duration = s.sums(now, lim.window_hours)
        if attempts >= lim.min_samples and answered / attempts < lim.min_answer_ratio:
            self._quarantine(s.tn, f"answer ratio {answered / attempts:.2f} under "
                             f"{lim.min_answer_ratio}", now, None)
        elif ended >= lim.min_samples and duration / ended < lim.min_average_duration:
            self._quarantine(s.tn, f"average duration {duration / ended:.0f} s under "
                             f"{lim.min_average_duration:.0f} s", now, None)

    def report(self, tn: str, now: float) -> dict[str, object]:
        s = self.stats(tn)
        t = s.totals(now, self.limits.window_hours)
        state = self.state(tn, now)
        return {"tn": tn, "state": state.value, "calls_last_hour": s.calls_last_hour(now),
                **t, "quarantine_reason": s.quarantine_reason if state is State.QUARANTINED
                else "", "quarantined_until": s.quarantined_until
                if state is State.QUARANTINED else 0.0}

    # -- persistence (the store writes these behind, in batches) -------------------------
    def export(self, tn: str) -> dict[str, object]:
        s = self.stats(tn)
        return {"recent": list(s.recent), "last_used": s.last_used,
                "quarantined_until": s.quarantined_until, "reason": s.quarantine_reason,
                "buckets": [[b.hour, b.attempts, b.answered, b.duration, b.ended, b.short,
                             {str(k): v for k, v in b.finals.items()}] for b in s.buckets]}

    def restore(self, tn: str, data: dict[str, object]) -> None:
        s = self.stats(tn)
        s.recent = deque(float(t) for t in data.get("recent", []))  # type: ignore[attr-defined]
        s.last_used = float(data.get("last_used", 0.0))  # type: ignore[arg-type]
        s.quarantined_until = float(data.get("quarantined_until", 0.0))  # type: ignore[arg-type]
        s.quarantine_reason = str(data.get("reason", ""))
        s.buckets = deque(
            _Bucket(hour=int(h), attempts=int(a), answered=int(an), duration=float(d),
                    ended=int(e), short=int(sh), finals=Counter({int(k): int(v)
                                                                 for k, v in f.items()}))
            for h, a, an, d, e, sh, f in data.get("buckets", []))  # type: ignore[attr-defined]

    def take_dirty(self) -> list[tuple[str, dict[str, object]]]:
        rows = [(tn, self.export(tn)) for tn in self.dirty if tn in self.numbers]
        self.dirty.clear()
        return rows
