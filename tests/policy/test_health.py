"""Number-health limits and the neighbour-spoofing guard, as tables."""

from __future__ import annotations

import pytest

from stirshaken_proxy.policy.health import HealthLimits, NumberHealth, State
from stirshaken_proxy.policy.presence import Pool, choose, is_neighbour
from stirshaken_proxy.policy.regions import Regions, state_of_description

state_of_npa = Regions().state_of_npa

T0 = 1_790_000_000.0
TN = "12025550100"
LIMITS = HealthLimits(max_calls_per_hour=5, min_samples=4, min_answer_ratio=0.25,
                      min_average_duration=30, quarantine_seconds=600, short_call_seconds=6)


def feed(events: list[tuple[str, float, float]]) -> NumberHealth:
    h = NumberHealth(LIMITS)
    for kind, t, value in events:
        if kind == "attempt":
            h.attempt(TN, T0 + t)
        elif kind == "final":
            h.final(TN, int(value), T0 + t)
        else:
            h.ended(TN, value, T0 + t)
    return h


def calls(n: int, *, answered: int, duration: float, spacing: float = 60.0
          ) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    for i in range(n):
        t = i * spacing
        out.append(("attempt", t, 0))
        if i < answered:
            out += [("final", t + 5, 200), ("end", t + 5 + duration, duration)]
        else:
            out.append(("final", t + 20, 486))
    return out


@pytest.mark.parametrize(("name", "events", "at", "state", "reason"), [
    ("fresh number", [], 0, State.HEALTHY, ""),
    ("4 calls in the hour", calls(4, answered=4, duration=60), 300, State.HEALTHY, ""),
    ("5 calls: at the velocity limit", calls(5, answered=5, duration=60), 300,
     State.AT_LIMIT, ""),
    ("limit lifts after an hour", calls(5, answered=5, duration=60), 3601, State.HEALTHY, ""),
    ("answer ratio 0/4", calls(4, answered=0, duration=0), 300, State.QUARANTINED,
     "answer ratio 0.00 under 0.25"),
    ("answer ratio 1/4 is at the limit, not under", calls(4, answered=1, duration=60), 300,
     State.HEALTHY, ""),
    ("average duration 10 s", calls(4, answered=4, duration=10), 500, State.QUARANTINED,
     "average duration 10 s under 30 s"),
    ("too few calls to judge", calls(3, answered=0, duration=0), 300, State.HEALTHY, ""),
    ("cool-down over", calls(4, answered=0, duration=0), 300 + 620, State.HEALTHY, ""),
])
def test_limits(name: str, events: list[tuple[str, float, float]], at: float, state: State,
                reason: str) -> None:
    h = feed(events)
    assert h.state(TN, T0 + at) is state
    report = h.report(TN, T0 + at)
    assert report["quarantine_reason"] == reason


def test_short_calls_and_response_mix_are_counted() -> None:
    h = feed(calls(4, answered=2, duration=3))
    r = h.report(TN, T0 + 400)
    assert r["short_calls"] == 2 and r["finals"] == {200: 2, 486: 2}
    assert r["answer_ratio"] == 0.5


def test_operator_quarantine_and_release() -> None:
    h = NumberHealth(LIMITS)
    h.quarantine(TN, "flagged by operator", T0)
    assert h.state(TN, T0 + 1) is State.QUARANTINED
    pool = Pool([TN, "12025550101"])
    pick = choose(pool, "12025559999", h, T0 + 1)
    assert pick is not None and pick.tn == "12025550101"  # out of rotation
    h.release(TN)
    assert h.state(TN, T0 + 2) is State.HEALTHY


@pytest.mark.parametrize(("caller", "callee", "neighbour"), [
    ("12025550100", "12025559999", True),  # same NPA-NXX
    ("12025560100", "12025559999", False),  # same NPA, other NXX
    ("13105550100", "12025550100", False),
    ("442071838750", "442071838751", False),  # not NANP: no NPA-NXX pattern
])
def test_neighbour(caller: str, callee: str, neighbour: bool) -> None:
    assert is_neighbour(caller, callee) is neighbour


def test_choose_prefers_local_then_spreads() -> None:
    h = NumberHealth(HealthLimits())
    pool = Pool(["12025550100", "12025550101", "13105550100"])
    picks = []
    for i in range(4):
        p = choose(pool, "12025559999", h, T0 + i)
        assert p is not None
        h.attempt(p.tn, T0 + i)
        picks.append((p.tn, p.local))
    assert picks[:2] == [("12025550100", True), ("12025550101", True)]
    assert {p[0] for p in picks} == {"12025550100", "12025550101"}
    other = choose(pool, "16175550000", h, T0 + 10)
    assert other is not None and other.local is False and other.tn == "13105550100"


@pytest.mark.parametrize(("description", "state"), [
    ("San Francisco, CA", "CA"), ("California", "CA"), ("Washington D.C.", "DC"),
    ("Washington State", "WA"), ("New York, NY", "NY"), ("Ontario", None), ("", None),
])
def test_state_of_description(description: str, state: str | None) -> None:
    assert state_of_description(description) == state


@pytest.mark.parametrize(("npa", "state"), [
    ("202", "DC"), ("310", "CA"), ("415", "CA"), ("510", "CA"), ("212", "NY"), ("718", "NY"),
    ("617", "MA"), ("713", "TX"),
])
def test_state_of_npa(npa: str, state: str) -> None:
    assert state_of_npa(npa) == state


def test_choose_prefers_area_then_state_then_any() -> None:
    h = NumberHealth(HealthLimits())
    pool = Pool(["14155550100", "13105550100", "12125550100"], state_of_npa)
    # A callee in 510 (California): no 510 number, so a California one.
    pick = choose(pool, "15105550000", h, T0)
    assert pick is not None and pick.tn in ("14155550100", "13105550100") and pick.same_state
    # A callee in Texas: no number there, any number.
    other = choose(pool, "17135550000", h, T0)
    assert other is not None and not other.local and not other.same_state


def test_account_velocity_limit_overrides_the_default() -> None:
    h = NumberHealth(HealthLimits(max_calls_per_hour=50))
    pool = Pool(["12025550100"])
    picks = 0
    for i in range(10):
        pick = choose(pool, "12025559999", h, T0 + i, max_per_hour=3)
        if pick is not None:
            h.attempt(pick.tn, T0 + i)
            picks += 1
    assert picks == 3


def test_quarantine_decisions_match_the_totals_the_report_shows() -> None:
    """The automatic quarantine (judged on every final and BYE) decides on the sums that
    totals() reports, across hours that leave the window: a random mix of calls, checked
    against a judge written on totals()."""
    import random

    rng = random.Random(7)
    for trial in range(40):
        limits = HealthLimits(min_samples=rng.choice([1, 5, 20]),
                              min_answer_ratio=rng.choice([0.1, 0.3, 0.6]),
                              min_average_duration=rng.choice([5.0, 20.0]),
                              window_hours=rng.choice([1, 3]))
        health = NumberHealth(limits)
        tn = "12025550100"
        now = 1_000_000.0
        for _ in range(rng.randrange(1, 120)):
            now += rng.choice([1.0, 60.0, 1800.0])
            health.attempt(tn, now)
            s = health.numbers[tn]
            was = s.quarantined_until > now
            t = s.totals(now, limits.window_hours)
            code = rng.choice([200, 200, 486, 503])
            # What the judge must decide after this final, from the report's own totals.
            t_after = dict(t)
            if code == 200:
                t_after["answered"] += 1
                t_after["answer_ratio"] = t_after["answered"] / t_after["attempts"]
            expect = (not was and t_after["attempts"] >= limits.min_samples
                      and t_after["answer_ratio"] < limits.min_answer_ratio) or (
                not was and t_after["ended"] >= limits.min_samples
                and t_after["average_duration"] < limits.min_average_duration)
            health.final(tn, code, now)
            assert (s.quarantined_until > now and not was) == expect, (trial, now)
            if code == 200 and rng.random() < 0.8:
                health.ended(tn, rng.choice([1.0, 10.0, 60.0]), now)
