"""The shell's datagram path on real loopback sockets, on both cores: the reference
(transports.UdpEndpoint, EngineShell.process and execute) and the compiled one (io/_cpump.c).
A datagram reaches the engine with its source's Peer, the engine's UDP datagrams leave from
the side they name, the other actions go to carry_out, the wake-up is armed as the engine's
timers need, and an engine that raises loses the datagram, not the service."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from stirshaken_proxy.engine.proxy import EngineConfig, ProxyEngine, SideConfig
from stirshaken_proxy.engine.services import Services
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.io import transports
from stirshaken_proxy.io.shell import EngineShell
from stirshaken_proxy.sip import message
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from tests.support import HOST, free_port

CORES = ["python", pytest.param("compiled", marks=pytest.mark.skipif(
    transports.CompiledUdpEndpoint is None or not message.compiled_available(),
    reason="the compiled core is not built in this install"))]


class FaultyEngine:
    """The proxy engine with a fault on demand: a message carrying X-Fault raises inside it,
    as a bug in the engine would. (It wraps the engine: a class of the compiled engine takes
    no interpreted subclass.)"""

    def __init__(self, engine: ProxyEngine) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def receive(self, data: bytes, source: Peer, now: float) -> list:  # type: ignore[type-arg]
        if b"X-Fault: raise" in data:
            raise RuntimeError("a fault in the engine")
        return self.engine.receive(data, source, now)


class Ends:
    """The proxy's two listening ports, a UAC socket on the dialer side and the carrier's
    next hop (a UAS socket), all on loopback."""

    def __init__(self) -> None:
        self.uac = self._socket()
        self.uas = self._socket()
        self.dialer_port, self.carrier_port = free_port(), free_port()

    @staticmethod
    def _socket() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        s.setblocking(False)
        return s

    def engine(self) -> FaultyEngine:
        uas_port = self.uas.getsockname()[1]
        d = SideConfig(name=Side.DIALER, host=HOST, port=self.dialer_port, advertise_host=HOST,
                       advertise_port=self.dialer_port, next_hop_host=HOST,
                       next_hop_port=self.uac.getsockname()[1], allow_any_source=True)
        c = SideConfig(name=Side.CARRIER, host=HOST, port=self.carrier_port,
                       advertise_host=HOST, advertise_port=self.carrier_port,
                       next_hop_host=HOST, next_hop_port=uas_port, allow_any_source=True)
        services = Services(dialer_sources=SourceFilter((), allow_any=True),
                            carrier_sources=SourceFilter((), allow_any=True))
        return FaultyEngine(ProxyEngine(EngineConfig(dialer=d, carrier=c), services,
                                        rng=random.Random(3).randbytes))

    def close(self) -> None:
        self.uac.close()
        self.uas.close()


@pytest.fixture
def ends() -> Iterator[Ends]:
    made = Ends()
    yield made
    made.close()


@pytest.fixture(params=CORES)
async def shell(request: pytest.FixtureRequest, ends: Ends) -> AsyncIterator[EngineShell]:
    before = message.core_in_use()
    message.use_core(request.param)
    try:
        made = EngineShell(ends.engine(), counters=Counter(), timer_resolution=0.01)
    finally:
        message.use_core(before)
    assert made.compiled == (request.param == "compiled")
    await made.listen([(Side.DIALER, HOST, ends.dialer_port),
                       (Side.CARRIER, HOST, ends.carrier_port)], tcp=False, shared=False,
                      max_message_size=65535, max_tcp_connections=8,
                      max_tcp_pending_bytes=1 << 16, tcp_connect_timeout=1.0)
    yield made
    await made.close()


def invite(ends: Ends, n: int, extra: bytes = b"") -> bytes:
    port = ends.uac.getsockname()[1]
    return (b"INVITE sip:+12025550199@127.0.0.1:%d SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-shell-%d;rport\r\n"
            b"From: <sip:+12025550100@127.0.0.1>;tag=a%d\r\nTo: <sip:+12025550199@127.0.0.1>\r\n"
            b"Call-ID: shell-%d\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n%s"
            b"Content-Length: 0\r\n\r\n" % (ends.dialer_port, port, n, n, n, extra))


async def read(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)


async def test_a_call_through_the_shell(shell: EngineShell, ends: Ends) -> None:
    ends.uac.sendto(invite(ends, 1), (HOST, ends.dialer_port))
    trying = await read(ends.uac)
    assert trying.startswith(b"SIP/2.0 100 Trying\r\n")
    forwarded = parse_message(await read(ends.uas))
    assert forwarded.method == "INVITE"
    top = forwarded.top_via()
    assert (top.host, top.port) == (HOST, ends.carrier_port)  # left from the carrier side
    # The UAS answers; the response goes back to the UAC without our Via.
    ringing = (b"SIP/2.0 180 Ringing\r\n" + b"".join(forwarded.raw_lines("via")) +
               b"".join(forwarded.raw_lines("record-route")) + forwarded.header_line(
                   forwarded.index["from"][0]) +
               b"To: <sip:+12025550199@127.0.0.1>;tag=b\r\nCall-ID: shell-1\r\n"
               b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    ends.uas.sendto(ringing, (HOST, ends.carrier_port))
    relayed = parse_message(await read(ends.uac))
    assert relayed.status == 180
    assert [v.port for v in relayed.vias()] == [ends.uac.getsockname()[1]]
    # The engine's transactions need their timers: a wake-up is armed, rounded up.
    wake = shell._wake
    deadline = shell.engine.earliest_deadline()
    assert wake.at is not None and deadline is not None
    assert wake.at == math.ceil(deadline / 0.01) * 0.01
    assert wake.cover == pytest.approx(wake.at - 0.01)
    assert shell.counters["internal_errors"] == 0


@pytest.mark.parametrize("core", CORES)
def test_every_source_address_is_one_peer(core: str) -> None:
    """A Peer per source address, made once; past the table's limit it starts again (the
    Peers handed out stay whole: the engine's transactions hold them)."""
    cls = transports.UdpEndpoint if core == "python" else transports.CompiledUdpEndpoint
    assert cls is not None
    small = type("Small", (cls,), {"PEERS_LIMIT": 3})
    seen: list[Peer] = []
    endpoint = small(Side.DIALER, lambda data, peer: seen.append(peer), Counter())
    a, b, c, d = ((HOST, port) for port in (5001, 5002, 5003, 5004))
    addresses = [a, b, a, b, c, d, a] + [(HOST, 6000 + n % 5) for n in range(300)]
    for addr in addresses:
        endpoint.datagram_received(b"x", addr)
    assert seen == [Peer(Side.DIALER, Transport.UDP, host, port) for host, port in addresses]
    assert seen[0] is seen[2] and seen[1] is seen[3] and seen[0] is not seen[1]
    assert seen[6] is not seen[0]  # the table was emptied at its limit (by d): made anew


async def test_an_engine_fault_loses_the_datagram_not_the_service(
        shell: EngineShell, ends: Ends, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="stirshaken_proxy.io.shell"):
        ends.uac.sendto(invite(ends, 2, b"X-Fault: raise\r\n"), (HOST, ends.dialer_port))
        ends.uac.sendto(invite(ends, 3), (HOST, ends.dialer_port))
        trying = await read(ends.uac)  # the next datagram is served
    assert b"z9hG4bK-shell-3" in trying
    assert shell.counters["internal_errors"] == 1
    (record,) = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert record.getMessage() == (
        f"internal error on a message from {HOST}:{ends.uac.getsockname()[1]}")
    assert record.exc_info is not None and str(record.exc_info[1]) == "a fault in the engine"


async def test_actions_other_than_udp_datagrams_go_to_carry_out(shell: EngineShell,
                                                                ends: Ends) -> None:
    carried: list[object] = []
    shell.carry_out = carried.append  # type: ignore[method-assign, assignment]
    if shell.compiled:  # the pump holds the bound method it was made with: make it anew
        pump_type: Any = type(shell._wake)
        shell._wake = pump = pump_type(
            shell.engine.receive, shell.engine.earliest_deadline, Send, Transport.UDP,
            shell.udp, carried.append, shell._arm, shell.failed)
        shell.execute = pump.execute  # type: ignore[method-assign]
    tcp_peer = Peer(Side.CARRIER, Transport.TCP, HOST, 1)
    uas = Peer(Side.CARRIER, Transport.UDP, HOST, ends.uas.getsockname()[1])
    actions: list[object] = [Send(b"over tcp", tcp_peer), "another action",
                             Send(b"over udp", uas)]
    shell.execute(actions)  # type: ignore[arg-type]
    assert carried == actions[:2]
    assert await read(ends.uas) == b"over udp"


async def test_no_datagram_leaves_on_a_closing_transport(shell: EngineShell,
                                                         ends: Ends) -> None:
    uas = Peer(Side.CARRIER, Transport.UDP, HOST, ends.uas.getsockname()[1])
    transport = shell.udp[Side.CARRIER].transport
    assert transport is not None
    transport.close()
    shell.execute([Send(b"late", uas)])
    await asyncio.sleep(0.05)
    with pytest.raises(BlockingIOError):
        ends.uas.recv(100)


def test_error_received_is_counted() -> None:
    classes: list[type[transports.UdpEndpoint]] = [transports.UdpEndpoint]
    if transports.CompiledUdpEndpoint is not None:
        classes.append(transports.CompiledUdpEndpoint)
    for cls in classes:
        counters: Counter[str] = Counter()
        endpoint = cls(Side.CARRIER, lambda data, peer: None, counters)
        endpoint.error_received(ConnectionRefusedError())
        endpoint.error_received(ConnectionRefusedError())
        assert counters["udp_errors"] == 2, cls


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("step", [3600.0, -3600.0], ids=["forward", "back"])
async def test_a_wall_clock_step_moves_no_timer(ends: Ends, core: str, step: float) -> None:
    """The wall clock steps an hour (NTP, an operator) while an INVITE waits for its answer:
    its Timer B still fires after 64*T1 on the monotonic clock, neither at once (forward) nor
    an hour late (back), and the call's record has the wall clock's times, before and after
    the step."""
    import time

    from stirshaken_proxy.transaction import TimerConfig

    t1 = 0.05
    base = ends.engine().engine
    engine = ProxyEngine(dataclasses.replace(base.config, timers=TimerConfig(t1=t1)),
                         base.services, rng=random.Random(5).randbytes)
    engine.record_calls(instance="t", worker=0)
    before = message.core_in_use()
    message.use_core(core)
    try:
        shell = EngineShell(engine, counters=Counter(), timer_resolution=0.01)
    finally:
        message.use_core(before)
    records: list[Any] = []
    shell.record = records.append
    await shell.listen([(Side.DIALER, HOST, ends.dialer_port),
                        (Side.CARRIER, HOST, ends.carrier_port)], tcp=False, shared=False,
                       max_message_size=65535, max_tcp_connections=8,
                       max_tcp_pending_bytes=1 << 16, tcp_connect_timeout=1.0)
    try:
        sent = time.monotonic()
        ends.uac.sendto(invite(ends, 7), (HOST, ends.dialer_port))
        assert (await read(ends.uac)).startswith(b"SIP/2.0 100 Trying")
        assert parse_message(await read(ends.uas)).method == "INVITE"  # then no answer
        engine.wall_clock = lambda: time.time() + step
        answer = b""
        while not answer.startswith(b"SIP/2.0 408"):
            answer = await read(ends.uac, timeout=64 * t1 * 4)
        waited = time.monotonic() - sent
    finally:
        await shell.close()
    assert 64 * t1 * 0.95 <= waited < 64 * t1 * 4, waited
    (record,) = records
    assert record.status == 408
    assert abs(record.started - time.time()) < 30  # before the step
    assert abs(record.ended - (time.time() + step)) < 30  # after it
