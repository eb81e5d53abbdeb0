"""Number health shared by several instances in Redis (``[health] redis``).

Every replica (each worker of each instance) stays in memory and is what the hot path reads;
Redis carries what keeps them one:

- a stream of every health event (``XADD``, capped), which every replica applies, so answer
  ratio, durations, quarantines and the sliding-hour velocity agree everywhere, and from which
  a starting instance rebuilds its replica;
- per number, the attempts of the last hour (a sorted set) and an operator's quarantine (a key
  with its expiry), against which one Lua script takes a local-presence caller ID: the first
  candidate under its hourly limit, counted in the same atomic step, so no number goes over
  its limit however many instances pick at once.

Attestation never waits on Redis: only local-presence calls ask it, with a short timeout.
When Redis cannot be reached, the replicas decide alone (events go to the instance's other
workers as without Redis), one log line and a metric say so, the events made meanwhile are
kept (bounded) and sent when Redis is back, so the other instances catch up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ..engine.actions import PickNumber
from ..policy.health import HealthEvent, HealthEventKind, NumberHealth
from ..stir.signing import Picked
from ..store.base import redact_url

log = logging.getLogger(__name__)

# KEYS: none (built from the prefix: one Redis, not a cluster). ARGV: prefix, now, limit,
# window, member, then the candidates in order. Returns the index (1-based) taken, or 0.
PICK = """
local prefix, now, limit, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 6, #ARGV do
  local tn = ARGV[i]
  if redis.call('EXISTS', prefix .. 'q:' .. tn) == 0 then
    local key = prefix .. 'v:' .. tn
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    if redis.call('ZCARD', key) < limit then
      redis.call('ZADD', key, now, ARGV[5])
      redis.call('EXPIRE', key, math.ceil(window) + 60)
      return i - 5
    end
  end
end
return 0
"""
HOUR = 3600.0


# One event is one stream field "e": kind, number, time, code, duration, seconds, reason,
# tab-separated (a reason has no tab: the admin API cuts it to printable text).
def _encode(event: HealthEvent) -> str:
    seconds = "" if event.seconds is None else repr(event.seconds)
    return "\t".join((event.kind.value, event.tn, repr(event.now), str(event.code),
                      repr(event.duration), seconds, event.reason.replace("\t", " ")))


def _decode(text: str) -> HealthEvent:
    kind, tn, now, code, duration, seconds, reason = text.split("\t", 6)
    return HealthEvent(HealthEventKind(kind), tn, float(now), code=int(code),
                       duration=float(duration), reason=reason,
                       seconds=float(seconds) if seconds else None)


# The events of one flush in one call: ARGV prefix, stream, cap, origin, window, default
# quarantine seconds, then per event: its encoding, "1" when resent, "1" when a pick already
# counted its attempt.
FLUSH = """
local prefix, stream, cap, origin = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local window, quarantine = tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 7, #ARGV, 3 do
  local e, resent, counted = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if resent == '1' then
    redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', 'o', origin, 'e', e, 'x', '1')
  else
    redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', 'o', origin, 'e', e)
  end
  local kind, tn, now = string.match(e, '^([^\t]*)\t([^\t]*)\t([^\t]*)')
  if kind == 'attempt' and counted ~= '1' then
    local key = prefix .. 'v:' .. tn
    redis.call('ZADD', key, tonumber(now), origin .. ':' .. now .. ':' .. i)
    redis.call('EXPIRE', key, math.ceil(window) + 60)
  elseif kind == 'quarantine' then
    local seconds = string.match(e, '^[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)')
    local ttl = tonumber(seconds) or quarantine
    redis.call('SET', prefix .. 'q:' .. tn, '1', 'EX', math.max(1, math.ceil(ttl)))
  elseif kind == 'release' then
    redis.call('DEL', prefix .. 'q:' .. tn)
  end
end
return 1
"""


class SharedHealth:
    def __init__(self, url: str, *, instance: str, worker: int,
                 health: Callable[[], NumberHealth | None], counters: Counter[str],
                 fallback: Callable[[HealthEvent], None] | None = None,
                 prefix: str = "stirshaken:", timeout: float = 0.25,
                 stream_max: int = 1_000_000, backlog: int = 100_000) -> None:
        import redis.asyncio as aioredis

        # A bounded pool: a burst of picks waits its turn (within the timeout), never opens a
        # connection per call.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=16, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, decode_responses=True)
        self.redis: Any = aioredis.Redis(connection_pool=pool)
        # Flushes and the replay move batches: their own client, with a longer timeout.
        self.bulk: Any = aioredis.from_url(url, socket_timeout=5.0, socket_connect_timeout=1.0,
                                           decode_responses=True)
        self.url = url
        self.instance = instance
        self.origin = f"{instance}/{worker}"
        self.health = health
        self.counters = counters
        self.fallback = fallback  # the instance's worker link, used while Redis is away
        self.prefix = prefix
        self.timeout = timeout
        self.stream = prefix + "events"
        self.stream_max = stream_max
        self.up = False
        self._outbox: deque[tuple[HealthEvent, bool]] = deque(maxlen=backlog)
        self._picked: Counter[str] = Counter()  # numbers a pick already counted in Redis
        self._last_id = "$"
        self._tasks: list[asyncio.Task[None]] = []
        self._script: Any = None
        self._flusher: Any = None
        self._pending: set[asyncio.Task[None]] = set()
        self._said_down = False  # one log line per outage
        self._stopping = False

    # -- start and stop -------------------------------------------------------------------
    async def start(self) -> bool:
        """Connect and rebuild the replica from the stream; False when Redis is away (the
        replica then starts from the store, and this keeps trying)."""
        self._script = self.redis.register_script(PICK)
        self._flusher = self.bulk.register_script(FLUSH)
        started = f"{int(time.time() * 1000)}-0"
        try:
            await self._replay()
            self._mark_up()
        except Exception as exc:  # noqa: BLE001 - redis-py raises several kinds
            self._last_id = started  # when it is back: what the others sent since we started
            self._mark_down(exc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flush_loop()), loop.create_task(self._consume()),
                       loop.create_task(self._reconnect())]
        return self.up

    async def close(self) -> None:
        # The reader is not cancelled in its blocking read (redis-py may hold on to a
        # cancellation there): it sees the flag within one short block and returns.
        self._stopping = True
        consumer, others = self._tasks[1:2], [self._tasks[0], *self._tasks[2:], *self._pending]
        for task in others:
            task.cancel()
        if others or consumer:
            await asyncio.wait([*others, *consumer], timeout=2.0)  # bounded, whatever redis-py does
        for task in consumer:
            task.cancel()
        await _close(self.redis)
        await _close(self.bulk)

    async def _replay(self) -> None:
        """Rebuild the replica from the events of the last hours (bounded by the stream's
        cap): every instance's, this one's included, so it replaces what the store gave."""
        health = self.health()
        window = health.limits.window_hours if health is not None else 24
        start = f"{int((time.time() - window * HOUR) * 1000)}-0"
        entries: list[tuple[str, dict[str, str]]] = []
        while True:
            chunk = await self.bulk.xrange(self.stream, min=start, count=10_000)
            entries.extend(chunk)
            if len(chunk) < 10_000:
                break
            start = "(" + chunk[-1][0]
        self._last_id = entries[-1][0] if entries else "0-0"
        if health is not None and entries:
            health.numbers.clear()
            for _, fields in entries:
                health.apply(_decode(fields["e"]))
            health.dirty.clear()
        self.counters["shared_health_events_replayed"] += len(entries)

    def _mark_down(self, exc: BaseException) -> None:
        self.counters["shared_health_errors"] += 1
        if not self._said_down:
            log.warning("number health: Redis %s unreachable (%s); this instance's replicas "
                        "decide alone until it is back", redact_url(self.url),
                        str(exc) or type(exc).__name__)
            self._said_down = True
        self.up = False

    def _mark_up(self) -> None:
        if self._said_down:
            log.warning("number health: Redis %s is back; sending %d events made meanwhile",
                        redact_url(self.url), len(self._outbox))
        self._said_down = False
        self.up = True

    # -- what the engine hands out --------------------------------------------------------
    def publish(self, event: HealthEvent) -> None:
        """An event of this replica: to Redis (the other replicas read it there); while Redis
        is away, to this instance's other workers, and kept for Redis."""
        if self.up:
            self._outbox.append((event, False))
        else:
            if self.fallback is not None:
                self.fallback(event)
            self._outbox.append((event, True))

    def pick(self, action: PickNumber, done: Callable[[int, Picked], None]) -> None:
        if not self.up:
            self.counters["shared_health_local_picks"] += 1
            done(action.token, Picked(None, fallback=True))
            return
        task = asyncio.get_running_loop().create_task(self._pick(action, done))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _pick(self, action: PickNumber, done: Callable[[int, Picked], None]) -> None:
        member = f"{self.origin}:{action.token}:{action.now!r}"
        args = [self.prefix, repr(action.now), action.limit, HOUR, member,
                *(c.tn for c in action.candidates)]
        try:
            index = int(await asyncio.wait_for(self._script(args=args), self.timeout))
        except Exception as exc:  # noqa: BLE001 - any failure: this replica decides
            self._mark_down(exc)
            done(action.token, Picked(None, fallback=True))
            return
        self.counters["shared_health_picks"] += 1
        if index == 0:
            done(action.token, Picked(None))
            return
        chosen = action.candidates[index - 1]
        self._picked[chosen.tn] += 1
        done(action.token, Picked(chosen))

    # -- the background -------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            if self.up and self._outbox:
                await self._flush()

    async def _flush(self) -> None:
        batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 2000))]
        health = self.health()
        args: list[str] = [self.prefix, self.stream, str(self.stream_max), self.origin,
                           repr(HOUR), repr(health.limits.quarantine_seconds
                                             if health is not None else 86400.0)]
        picked = self._picked
        for event, resent in batch:
            counted = "0"
            if event.kind is HealthEventKind.ATTEMPT and picked[event.tn] > 0:
                picked[event.tn] -= 1  # the pick counted it already
                if not picked[event.tn]:
                    del picked[event.tn]
                counted = "1"
            args += (_encode(event), "1" if resent else "0", counted)
        try:
            await self._flusher(args=args)
            self.counters["shared_health_events_sent"] += len(batch)
            self.counters["shared_health_flushes"] += 1
        except Exception as exc:  # noqa: BLE001 - keep them for when it is back
            self._outbox.extendleft(reversed(batch))
            self._mark_down(exc)

    async def _consume(self) -> None:
        """Apply the other replicas' events as they arrive."""
        import redis.asyncio as aioredis

        reader: Any = aioredis.from_url(self.url, socket_timeout=5, socket_connect_timeout=1,
                                   decode_responses=True)
        try:
            while not self._stopping:
                if not self.up:
                    await asyncio.sleep(0.2)
                    continue
                try:
                    found = await reader.xread({self.stream: self._last_id}, block=200,
                                               count=5000)
                except Exception as exc:  # noqa: BLE001
                    self._mark_down(exc)
                    continue
                health = self.health()
                for _, entries in found or ():
                    for entry_id, fields in entries:
                        self._last_id = entry_id
                        if health is None or fields.get("o") == self.origin:
                            continue
                        if fields.get("x") and fields["o"].startswith(self.instance + "/"):
                            continue  # this instance's workers had it by their link
                        health.apply(_decode(fields["e"]))
                        self.counters["shared_health_events_applied"] += 1
        finally:
            await _close(reader)

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.up:
                continue
            try:
                await asyncio.wait_for(self.redis.ping(), self.timeout * 4)
            except Exception:  # noqa: BLE001 - still away
                continue
            self._mark_up()


async def _close(client: Any) -> None:
    """Close a client without waiting on a connection a cancelled call left half-used."""
    try:
        await asyncio.wait_for(client.aclose(), 1.0)
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing: nothing to keep
        pass
