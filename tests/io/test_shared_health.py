"""Number health shared in Redis (a real server of the tests' own): picks are atomic across
instances, events reach every replica, a day of dialing over three instances keeps every
number under its hourly limit, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.engine.actions import PickNumber
from stirshaken_proxy.io.shared_health import SharedHealth
from stirshaken_proxy.policy.accounts import Account, LocalPresence
from stirshaken_proxy.policy.health import HealthEvent, HealthLimits, NumberHealth
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.policy.presence import Selection
from stirshaken_proxy.stir.passport import Attestation, Signer, SigningIdentity
from stirshaken_proxy.stir.signing import (
    Authenticator,
    AuthPolicy,
    CallFacts,
    NeedsNumber,
    Picked,
    Signed,
)
from tests.policy.test_simulation import busiest_hour
from tests.servers import Redis

pytestmark = pytest.mark.skipif(__import__("shutil").which("redis-server") is None,
                                reason="redis-server not installed")
ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"


@pytest.fixture
def redis() -> Iterator[Redis]:
    with Redis() as server:
        yield server


async def pick(shared: SharedHealth, action: PickNumber) -> Picked:
    future: asyncio.Future[Picked] = asyncio.get_running_loop().create_future()
    shared.pick(action, lambda token, picked: future.set_result(picked))
    return await future


def replica(redis: Redis, name: str, health: NumberHealth,
            fallback: list[HealthEvent] | None = None) -> SharedHealth:
    return SharedHealth(redis.url, instance=name, worker=0, health=lambda: health,
                        counters=Counter(),
                        fallback=fallback.append if fallback is not None else None)


async def test_picks_are_atomic_across_instances(redis: Redis) -> None:
    instances = [replica(redis, f"i{n}", NumberHealth(HealthLimits())) for n in range(3)]
    for shared in instances:
        assert await shared.start()
    candidates = tuple(Selection(tn=f"1202555010{n}", local=True) for n in range(3))
    now = time.time()
    picks = [pick(instances[i % 3], PickNumber(i, candidates, 50, now)) for i in range(400)]
    results = await asyncio.gather(*picks)
    taken = Counter(r.selection.tn for r in results if r.selection is not None)
    assert taken == {c.tn: 50 for c in candidates}  # 150 calls, not one more
    assert sum(1 for r in results if r.selection is None and not r.fallback) == 250
    for shared in instances:
        await shared.close()


async def test_events_reach_the_other_replicas(redis: Redis) -> None:
    a_health, b_health = NumberHealth(HealthLimits()), NumberHealth(HealthLimits())
    a, b = replica(redis, "a", a_health), replica(redis, "b", b_health)
    await a.start()
    await b.start()
    now = time.time()
    a.publish(a_health.attempt("12025550100", now))
    a.publish(a_health.quarantine("12025550101", "flagged", now, 600))
    for _ in range(100):
        if b_health.state("12025550101", now).value == "quarantined":
            break
        await asyncio.sleep(0.01)
    assert b_health.numbers["12025550100"].calls_last_hour(now) == 1
    assert b_health.state("12025550101", now).value == "quarantined"
    # a quarantine also keeps the number from being picked by any instance
    got = await pick(b, PickNumber(1, (Selection(tn="12025550101", local=True),), 50, now))
    assert got == Picked(None)
    # a new instance rebuilds its replica from the stream
    c_health = NumberHealth(HealthLimits())
    c = replica(redis, "c", c_health)
    await c.start()
    assert c_health.numbers["12025550100"].calls_last_hour(now) == 1
    for shared in (a, b, c):
        await shared.close()


async def test_redis_away_and_back(redis: Redis) -> None:
    a_health, b_health = NumberHealth(HealthLimits()), NumberHealth(HealthLimits())
    link: list[HealthEvent] = []
    a, b = replica(redis, "a", a_health, fallback=link), replica(redis, "b", b_health)
    await a.start()
    await b.start()
    redis.stop()
    now = time.time()
    started = time.monotonic()
    got = await pick(a, PickNumber(1, (Selection(tn="12025550100", local=True),), 50, now))
    assert got.fallback and time.monotonic() - started < 1.0  # never held for long
    assert not a.up and a.counters["shared_health_errors"] >= 1
    a.publish(a_health.attempt("12025550100", now))
    assert len(link) == 1  # the instance's other workers still hear it
    redis.start_on_same_port()
    for _ in range(100):
        if b_health.numbers.get("12025550100") is not None and a.up:
            break
        await asyncio.sleep(0.05)
    assert a.up and b_health.numbers["12025550100"].calls_last_hour(now) == 1
    for shared in (a, b):
        await shared.close()


AREAS = ["202", "310", "415", "212", "305"]
POOL = [f"1{a}555{n:04d}" for a in AREAS for n in (100, 101, 102, 103)]
DAY_START = time.time() - 7 * 3600  # the Redis stream keeps real time ids: a recent day


async def test_a_day_of_dialing_over_three_instances(redis: Redis) -> None:
    """The power-dialing day of tests/policy/test_simulation.py, at 1,500 calls an hour for 6
    hours (capacity 20 x 50 = 1,000): the calls are spread over three instances, each with its
    own replica, all taking caller IDs through Redis."""
    rnd = random.Random(11)
    key = ec.generate_private_key(ec.SECP256R1())
    account = Account(name="acme", origid=ORIGID, sources=(), signing="s",
                      local_presence=LocalPresence.ALWAYS)
    inventory = Inventory([NumberBlock(first=tn, last=tn, account="acme") for tn in POOL])
    instances = []
    for n in range(3):
        health = NumberHealth(HealthLimits())
        auth = Authenticator(signers={"s": Signer(SigningIdentity(
            name="s", key=key, x5u="https://cr.example/c.pem"))}, inventory=inventory,
            policy=AuthPolicy(), health=health)
        auth.shared_picks = True
        shared = replica(redis, f"i{n}", health)
        await shared.start()
        instances.append((auth, health, shared))
    placed: dict[str, list[float]] = defaultdict(list)
    outcomes: list[tuple[float, int, int, str, float]] = []
    refused = signed_a = 0
    rate, hours = 1500, 6
    for i in range(rate * hours):
        now = DAY_START + i * 3600.0 / rate
        while outcomes and outcomes[0][0] <= now:
            t, _, n, tn, value = heapq.heappop(outcomes)
            _, health, shared = instances[n]
            shared.publish(health.final(tn, int(value), t) if value >= 100
                           else health.ended(tn, value, t))
        n = i % 3
        auth, health, shared = instances[n]
        callee = f"1{rnd.choice(AREAS)}{rnd.randint(2000000, 9999999)}"
        facts = CallFacts(account=account, orig="12025550100", dest=callee)
        asked = auth.sign(facts, now, defer=True)
        if not isinstance(asked, NeedsNumber):
            refused += 1
            continue
        got = await pick(shared, PickNumber(i, asked.candidates, asked.limit, now))
        outcome = auth.sign(facts, now, picked=got, defer=True)
        if not isinstance(outcome, Signed):
            refused += 1
            continue
        signed_a += outcome.attest is Attestation.A
        for event in outcome.events:
            shared.publish(event)
        placed[outcome.orig].append(now)
        if rnd.random() < 0.35:
            answer = now + rnd.uniform(3, 15)
            duration = rnd.lognormvariate(math.log(90) - 0.5, 1.0)
            heapq.heappush(outcomes, (answer, i, n, outcome.orig, 200.0))
            heapq.heappush(outcomes, (answer + duration, i, n, outcome.orig, duration))
        else:
            heapq.heappush(outcomes, (now + 20.0, i, n, outcome.orig, 486.0))
        if i % 20 == 0:
            await asyncio.sleep(0.005)  # the replicas read each other's events meanwhile
    total = sum(len(v) for v in placed.values())
    assert set(placed) <= set(POOL) and signed_a == total
    for tn, times in placed.items():
        assert busiest_hour(times) <= 50, tn
    assert refused > 0 and total > 0.9 * 1000 * hours * 0.9, (total, refused)
    for _, _, shared in instances:
        await shared.close()
