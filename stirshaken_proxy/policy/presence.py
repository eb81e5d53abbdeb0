"""Local presence: pick, for each call, one of the account's own registered numbers, and guard
against neighbour spoofing (pure).

A number is only ever taken from the account's inventory (never built), and never when it is
quarantined or at its velocity limit. Numbers with the callee's area code (NPA) come first,
then numbers in the callee's state, then any; among equals the least used in the last hour,
then the least recently used, so calls spread over the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .health import NumberHealth, State


def npa(tn: str) -> str | None:
    """Area code of a canonical NANP number (``1NPANXXXXXX``), else None."""
    return tn[1:4] if len(tn) == 11 and tn[0] == "1" else None


def npa_nxx(tn: str) -> str | None:
    return tn[1:7] if len(tn) == 11 and tn[0] == "1" else None


def is_neighbour(caller: str, callee: str) -> bool:
    """The caller ID shares the callee's NPA-NXX: the "neighbour spoofing" pattern."""
    a = npa_nxx(caller)
    return a is not None and a == npa_nxx(callee)


@dataclass(frozen=True, kw_only=True, slots=True)
class Selection:
    tn: str
    local: bool  # has the callee's area code
    same_state: bool = False  # not local, but in the callee's state

    @property
    def match(self) -> str:
        """How near the number is to the callee (a metric label)."""
        return "local" if self.local else "same_state" if self.same_state else "other_area"


class Pool:
    """An account's own numbers, indexed by area code."""

    __slots__ = ("by_npa", "by_state", "numbers", "state_of")

    def __init__(self, numbers: list[str],
                 state_of: Callable[[str], str | None] | None = None) -> None:
        self.numbers = numbers
        self.state_of = state_of
        self.by_npa: dict[str | None, list[str]] = {}
        self.by_state: dict[str, list[str]] = {}
        for tn in numbers:
            area = npa(tn)
            self.by_npa.setdefault(area, []).append(tn)
            state = state_of(area) if state_of is not None and area is not None else None
            if state is not None:
                self.by_state.setdefault(state, []).append(tn)


def choose(pool: Pool, callee: str, health: NumberHealth, now: float, *,
           max_per_hour: int | None = None) -> Selection | None:
    """The number to present for a call to ``callee``, or None when every number is
    quarantined or at its limit (the call must then wait: never a number over its limits).
    ``max_per_hour`` is the account's own velocity limit, when it has one."""
    found = ranked(pool, callee, health, now, max_per_hour=max_per_hour, limit=1)
    return found[0] if found else None


def ranked(pool: Pool, callee: str, health: NumberHealth, now: float, *,
           max_per_hour: int | None = None, limit: int = 16) -> list[Selection]:
    """Up to ``limit`` healthy numbers in the order ``choose`` prefers them: the callee's area
    code, then its state, then any; least used first. Number health shared by several
    instances takes the first of these that is still under its limit there."""
    out: list[Selection] = []
    seen: set[str] = set()
    area = npa(callee)
    groups: list[tuple[list[str], bool, bool]] = []
    if area is not None:
        groups.append((pool.by_npa.get(area, []), True, False))
        state = pool.state_of(area) if pool.state_of is not None else None
        if state is not None:
            groups.append((pool.by_state.get(state, []), False, True))
    groups.append((pool.numbers, False, False))
    for candidates, local, same_state in groups:
        for tn in _healthiest(candidates, health, now, max_per_hour, limit - len(out), seen):
            seen.add(tn)
            out.append(Selection(tn=tn, local=local, same_state=same_state))
        if len(out) >= limit:
            break
    return out


def _healthiest(candidates: list[str], health: NumberHealth, now: float,
                max_per_hour: int | None, count: int, skip: set[str]) -> list[str]:
    if count <= 0:
        return []
    keyed: list[tuple[tuple[int, float], str]] = []
    for tn in candidates:
        if tn in skip or health.state(tn, now, max_per_hour) is not State.HEALTHY:
            continue
        s = health.numbers.get(tn)
        keyed.append(((s.calls_last_hour(now), s.last_used) if s is not None else (0, 0.0),
                      tn))
    if count == 1:
        return [min(keyed)[1]] if keyed else []
    keyed.sort()
    return [tn for _, tn in keyed[:count]]
