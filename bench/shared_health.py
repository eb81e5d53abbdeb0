"""Number health shared in Redis beside number health local to the instance: CPU per
local-presence call and Redis round trips per call, measured side by side in one run (the
signing path of the in-path proxy, with its caller-ID pick, on a real Redis of its own).

    .venv/bin/python -m bench.shared_health [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter

from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.engine.actions import PickNumber
from stirshaken_proxy.io.shared_health import SharedHealth
from stirshaken_proxy.policy.accounts import Account, LocalPresence
from stirshaken_proxy.policy.health import HealthLimits, NumberHealth
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.stir.passport import Signer, SigningIdentity
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy, CallFacts, NeedsNumber, Signed
from tests.servers import Redis

POOL = [f"1{a}555{n:04d}" for a in ("202", "310", "415", "212", "305") for n in range(100, 140)]
ORIGID = "5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01"


def authenticator(shared: bool) -> tuple[Authenticator, NumberHealth]:
    health = NumberHealth(HealthLimits(max_calls_per_hour=10**9))
    auth = Authenticator(
        signers={"s": Signer(SigningIdentity(name="s", key=ec.generate_private_key(
            ec.SECP256R1()), x5u="https://cr.example/c.pem"))},
        inventory=Inventory([NumberBlock(first=tn, last=tn, account="a") for tn in POOL]),
        policy=AuthPolicy(), health=health)
    auth.shared_picks = shared
    return auth, health


async def run(calls: int, redis: Redis | None) -> dict[str, float]:
    shared_on = redis is not None
    auth, health = authenticator(shared_on)
    account = Account(name="a", origid=ORIGID, sources=(), signing="s",
                      local_presence=LocalPresence.ALWAYS)
    shared = None
    if redis is not None:
        shared = SharedHealth(redis.url, instance="bench", worker=0, health=lambda: health,
                              counters=Counter())
        await shared.start()
        before = await shared.redis.info("stats")
    loop = asyncio.get_running_loop()
    cpu = time.process_time()
    wall = time.perf_counter()
    for i in range(calls):
        now = time.time()
        facts = CallFacts(account=account, orig="12025550100", dest=f"1202{2000000 + i:07d}")
        outcome = auth.sign(facts, now, defer=True)
        if isinstance(outcome, NeedsNumber):
            assert shared is not None
            future = loop.create_future()
            shared.pick(PickNumber(i, outcome.candidates, outcome.limit, now),
                        lambda token, picked, f=future: f.set_result(picked))
            outcome = auth.sign(facts, now, picked=await future, defer=True)
        assert isinstance(outcome, Signed), outcome
        for event in outcome.events:
            if shared is not None:
                shared.publish(event)
            else:
                health.apply(event)  # what another replica does with it
        if i % 100 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # the last batch of events
    result = {"cpu_us": (time.process_time() - cpu) / calls * 1e6,
              "wall_us": (time.perf_counter() - wall) / calls * 1e6}
    if shared is not None:
        after = await shared.redis.info("stats")
        result["commands"] = (after["total_commands_processed"]
                              - before["total_commands_processed"] - 1) / calls
        result["round_trips"] = (shared.counters["shared_health_picks"]
                                 + shared.counters["shared_health_flushes"]) / calls
        await shared.close()
    return result


async def main(calls: int) -> None:
    with Redis() as redis:
        rows = []
        for _ in range(2):  # interleaved, twice: the machine is shared and noisy
            rows.append(("local", await run(calls, None)))
            rows.append(("Redis", await run(calls, redis)))
    sys.stdout.write("| number health | CPU per call | wall per call | Redis commands per call | "
                     "round trips per call |\n|---|---|---|---|---|\n")
    for name, r in rows:
        sys.stdout.write(f"| {name} | {r['cpu_us']:.0f} µs | {r['wall_us']:.0f} µs | "
                         f"{r.get('commands', 0):.2f} | {r.get('round_trips', 0):.2f} |\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    asyncio.run(main(parser.parse_args().calls))
