"""The flood guard (pike-like): a bucket per source, bans, bounded memory, trusted peers."""

from __future__ import annotations

from stirshaken_proxy.engine.flood import FloodConfig, FloodGuard
from stirshaken_proxy.sip.transport import Peer, Side, Transport
from tests.engine.test_proxy import engine, invite


def test_rate_burst_and_ban() -> None:
    g = FloodGuard(FloodConfig(requests_per_second=10, burst=5, ban_seconds=30))
    assert [g.allow("127.0.0.2", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not g.allow("127.0.0.2", 29.9)  # banned, even though tokens refilled
    assert g.allow("127.0.0.2", 30.1)
    assert g.banned_total == 1 and g.dropped == 2
    # Another source is not affected; sustained 10/s is allowed.
    assert all(g.allow("127.0.0.3", t / 10) for t in range(100))


def test_memory_is_bounded() -> None:
    g = FloodGuard(FloodConfig(max_sources=100))
    for i in range(10_000):
        g.allow(f"127.0.{i // 250}.{i % 250}", 0.0)
    assert len(g) == 100


def test_engine_drops_flood_from_untrusted_but_not_trusted() -> None:
    e = engine(flood=FloodConfig(requests_per_second=1, burst=3, ban_seconds=60))
    untrusted = Peer(Side.CARRIER, Transport.UDP, "127.0.0.9", 6000)
    trusted = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)  # the dialer trunk (allowed source)
    outs = [e.receive(invite(f"z9hG4bKu{i}", call_id=b"u%d" % i), untrusted, 0.0)
            for i in range(10)]
    assert sum(1 for o in outs if o) == 3
    assert e.stats[("sip_dropped", "flood")] == 7
    outs = [e.receive(invite(f"z9hG4bKt{i}", call_id=b"t%d" % i), trusted, 0.0)
            for i in range(10)]
    assert all(outs)
