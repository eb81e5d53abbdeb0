"""A day of power dialing through the number-health policy (pure, explicit clock).

One account owns 20 numbers in five area codes (capacity 20 x 50 = 1,000 calls an hour).
The dialer places 800 calls an hour for 8 hours, several times what one number may carry;
70% of callees are in the pool's area codes. Calls are answered 35% of the time and last a
log-normal 90 s on average; unanswered ones ring 20 s. Every call goes through `choose`, and
the outcomes feed the statistics that drive quarantine.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict

from stirshaken_proxy.policy.health import HealthLimits, NumberHealth
from stirshaken_proxy.policy.presence import Pool, choose

AREAS = ["202", "310", "415", "212", "305"]
OTHER_AREAS = ["617", "713", "206"]
POOL = [f"1{a}555{n:04d}" for a in AREAS for n in (100, 101, 102, 103)]
DAY_START = 1_790_000_000.0  # any instant
HOURS = 8
RATE = 800  # calls an hour


def busiest_hour(times: list[float]) -> int:
    """The most calls in any sliding hour, ``times`` in order."""
    most = j = 0
    for i, t in enumerate(times):
        while times[j] <= t - 3600.0:
            j += 1
        most = max(most, i - j + 1)
    return most


def simulate(seed: int = 7) -> dict[str, object]:
    rnd = random.Random(seed)
    health = NumberHealth(HealthLimits())
    pool = Pool(POOL)
    events: list[tuple[float, int, str, str, float]] = []  # (time, seq, kind, tn, value)
    seq = 0
    placed: dict[str, list[float]] = defaultdict(list)
    local_possible = local_done = refused = total = 0
    for i in range(HOURS * RATE):
        now = DAY_START + i * 3600.0 / RATE
        while events and events[0][0] <= now:  # outcomes of earlier calls, in time order
            t, _, kind, tn, value = heapq.heappop(events)
            if kind == "final":
                health.final(tn, int(value), t)
            else:
                health.ended(tn, value, t)
        in_pool = rnd.random() < 0.7
        callee = f"1{rnd.choice(AREAS if in_pool else OTHER_AREAS)}{rnd.randint(2000000, 9999999)}"
        total += 1
        pick = choose(pool, callee, health, now)
        if pick is None:
            refused += 1
            continue
        health.attempt(pick.tn, now)
        placed[pick.tn].append(now)
        if in_pool:
            local_possible += 1
            local_done += pick.local
        seq += 1
        if rnd.random() < 0.35:
            answer_at = now + rnd.uniform(3, 15)
            duration = rnd.lognormvariate(math.log(90) - 0.5, 1.0)
            heapq.heappush(events, (answer_at, seq, "final", pick.tn, 200.0))
            heapq.heappush(events, (answer_at + duration, seq, "end", pick.tn, duration))
        else:
            heapq.heappush(events, (now + 20.0, seq, "final", pick.tn,
                                    float(rnd.choice([480, 486, 487]))))
    return {"placed": placed, "total": total, "refused": refused,
            "local_share": local_done / local_possible, "health": health}


def test_a_day_of_power_dialing() -> None:
    result = simulate()
    placed: dict[str, list[float]] = result["placed"]  # type: ignore[assignment]
    # Every call was placed from a number the account owns.
    assert set(placed) <= set(POOL)
    # No number exceeds 50 calls in any sliding hour.
    for tn, times in placed.items():
        assert busiest_hour(times) <= 50, tn
    # The callee's area code whenever the pool allows it (20 calls/h per local number
    # is well under the limit, so it always does here).
    assert result["local_share"] >= 0.99, result["local_share"]
    assert result["refused"] == 0
    # The load is spread over every number that stayed healthy.
    health: NumberHealth = result["health"]  # type: ignore[assignment]
    quarantined = {tn for tn, s in health.numbers.items() if s.quarantine_reason}
    counts = sorted(len(v) for tn, v in placed.items() if tn not in quarantined)
    assert len(counts) >= len(POOL) - 2 and counts[0] >= 0.5 * counts[-1]
    print(f"calls {result['total']}, local share {result['local_share']:.3f}, "  # noqa: T201
          f"per healthy number {counts[0]}-{counts[-1]}, quarantined {sorted(quarantined)}")


def test_overload_is_refused_not_pushed_over_the_limit() -> None:
    """At 3x the pool's capacity the excess waits (refused) and nothing goes over 50/h."""
    health = NumberHealth(HealthLimits())
    pool = Pool(POOL[:4])  # 200 calls an hour of capacity
    placed: dict[str, int] = defaultdict(int)
    refused = 0
    for i in range(600):
        pick = choose(pool, "12025550000", health, DAY_START + i * 6.0)  # 600 in an hour
        if pick is None:
            refused += 1
            continue
        health.attempt(pick.tn, DAY_START + i * 6.0)
        placed[pick.tn] += 1
    assert max(placed.values()) == 50 and sum(placed.values()) == 200 and refused == 400
