"""The loop glue around one ProxyEngine: sockets feed it, its actions are carried out, one
timer wakes it. Everything here runs on the event loop thread; the engine does the thinking."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from ..engine.actions import Action, Fetch, PickNumber
from ..engine.records import CallRecord
from ..policy.health import HealthEvent
from ..sip import message
from ..sip.message import call_id_of
from ..sip.transport import Peer, Send, Side, Transport
from ..stir.signing import Picked
from ..stir.verification import FetchRequest
from .transports import (  # _cpump: the compiled datagram path, None where it was not built
    CompiledUdpEndpoint,
    SideTls,
    TcpConnection,
    TcpManager,
    UdpEndpoint,
    _cpump,
)
from .workers import WorkerLink

log = logging.getLogger(__name__)
_UDP = Transport.UDP  # bound once: through the class each lookup costs ~70 ns


class Engine(Protocol):
    """What the shell drives: the in-path proxy or the redirect server (both pure)."""

    def receive(self, data: bytes, source: Peer, now: float) -> list[Action]: ...

    def on_timers(self, now: float) -> list[Action]: ...

    def next_deadline(self) -> float | None: ...

    wall_clock: Callable[[], float] | None  # set by the shell: time.time

    # Asked after every message: the proxy's is its timer heap's own (C) method.
    @property
    def earliest_deadline(self) -> Callable[[], float | None]: ...

    def credentials_ready(self, urls: tuple[str, ...], now: float) -> list[Action]: ...

    def transport_failed(self, peer: Peer, now: float) -> list[Action]: ...

    def number_picked(self, token: int, picked: Picked, now: float) -> list[Action]: ...


class _Wake:
    """The armed wake-up: when (None: none armed), and the deadlines it serves (those above
    ``cover`` round up to ``at`` or later). The compiled core's Pump has the same two."""

    __slots__ = ("at", "cover")

    def __init__(self) -> None:
        self.at: float | None = None
        self.cover = 0.0


class EngineShell:
    """Runs one engine on real sockets."""

    def __init__(self, engine: Engine, *, counters: Counter[str],
                 timer_resolution: float, worker: WorkerLink | None = None) -> None:
        self.engine = engine
        # Timers on the monotonic clock (an NTP step neither fires them early nor stalls
        # them: every ``now`` given to the engine is time.monotonic(), as in the C pump);
        # what is signed and recorded on the wall clock, which the engine reads.
        engine.wall_clock = time.time
        self.counters = counters  # I/O events (the engine keeps its own)
        self.timer_resolution = timer_resolution
        self.worker = worker
        self.udp: dict[Side, UdpEndpoint] = {}
        self.tcp: dict[tuple[Side, Transport], TcpManager] = {}  # TCP and TLS
        self.tcp_home: dict[tuple[Side, str, int], int] = {}  # TCP peer -> worker holding it
        self.max_tcp_home = 4096
        # Set by the application: who fetches (None: nothing to fetch with) and who passes
        # number-health events to the other workers.
        self.fetch: Callable[[FetchRequest], None] | None = None
        self.publish: Callable[[HealthEvent], None] | None = None
        # Asks the shared number health for a caller ID and calls back number_picked.
        self.pick: Callable[[PickNumber, Callable[[int, Picked], None]], None] | None = None
        self.record: Callable[[CallRecord], None] | None = None  # call records written behind
        self._timer: asyncio.TimerHandle | None = None
        self._wake: _Wake | _cpump.Pump = _Wake()
        # The compiled core's datagram path: process and execute in C (io/_cpump.c), the
        # methods below their reference.
        self.compiled = _cpump is not None and message.compiled_core() is not None
        if self.compiled:
            pump = _cpump.Pump(engine.receive, engine.earliest_deadline, Send, _UDP, self.udp,
                               self.carry_out, self._arm, self.failed)
            self._wake = pump
            self.process = pump.process  # type: ignore[method-assign, assignment]
            self.execute = pump.execute  # type: ignore[method-assign, assignment]
        self._endpoints = 0

    # -- listeners ------------------------------------------------------------------------
    async def listen(self, endpoints: list[tuple[Side, str, int]], *, tcp: bool, shared: bool,
                     max_message_size: int, max_tcp_connections: int,
                     max_tcp_pending_bytes: int, tcp_connect_timeout: float,
                     max_tcp_per_source: int = 32, tcp_reserved_for_trusted: int = 0,
                     trusted: Callable[[Side, str], bool] | None = None,
                     tls: dict[Side, SideTls] | None = None,
                     udp_buffer: int = 0) -> None:
        """UDP (and TCP) on each (side, host, port), and TLS where ``tls`` says; ``shared``:
        every worker binds the same ports. ``udp_buffer``: the UDP sockets' buffer size."""
        loop = asyncio.get_running_loop()

        def manager(side: Side, host: str, transport: Transport,
                    side_tls: SideTls | None = None) -> TcpManager:
            made = TcpManager(
                side, self.feed, self.counters, max_message_size=max_message_size,
                max_connections=max_tcp_connections, max_pending_bytes=max_tcp_pending_bytes,
                connect_timeout=tcp_connect_timeout, local_host=host,
                max_per_source=max_tcp_per_source,
                reserved_for_trusted=tcp_reserved_for_trusted,
                trusted=(lambda h: trusted(side, h)) if trusted is not None else None,
                transport=transport,
                tls=side_tls,
                on_failure=lambda host, port: self.transport_failed(
                    Peer(side, transport, host, port)))
            self.tcp[(side, transport)] = made
            return made

        # One worker has no one to hand a message to: its datagrams go straight in.
        sink = self.feed if self.worker is not None else self.process
        endpoint = CompiledUdpEndpoint if self.compiled and CompiledUdpEndpoint else UdpEndpoint
        for side, host, port in endpoints:
            _, proto = await loop.create_datagram_endpoint(
                lambda side=side: endpoint(side, sink, self.counters),  # type: ignore[misc]
                local_addr=(host, port), reuse_port=shared)
            if udp_buffer and proto.transport is not None:
                _size_buffers(proto.transport.get_extra_info("socket"), udp_buffer, side)
            self.udp[side] = proto
            if tcp:
                made = manager(side, host, Transport.TCP)
                made.server = await loop.create_server(
                    lambda m=made: TcpConnection(m, m.side),  # type: ignore[misc]
                    host, port, reuse_address=True, reuse_port=shared)
            side_tls = (tls or {}).get(side)
            if side_tls is not None:
                made = manager(side, side_tls.host or host, Transport.TLS, side_tls)
                if side_tls.server is not None:
                    # Plain TCP first: the handshake is started by the connection itself
                    # once admitted (TcpConnection.connection_made).
                    made.server = await loop.create_server(
                        lambda m=made: TcpConnection(m, m.side),  # type: ignore[misc]
                        side_tls.host, side_tls.port, reuse_address=True, reuse_port=shared)
        self._endpoints = len(endpoints)

    @property
    def listening(self) -> bool:
        return bool(self.udp) and len(self.udp) == self._endpoints

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for manager in self.tcp.values():
            await manager.close()
        for endpoint in self.udp.values():
            if endpoint.transport is not None:
                endpoint.transport.close()

    # -- input ----------------------------------------------------------------------------
    def feed(self, data: bytes, peer: Peer) -> None:
        """A message from a socket: processed here, or handed to the worker owning its call."""
        worker = self.worker
        if worker is not None:
            owner = worker.owner(call_id_of(data))
            if owner != worker.index:
                worker.message(owner, peer, data)
                self.counters["worker_handoffs"] += 1
                return
        self.process(data, peer)

    def process(self, data: bytes, peer: Peer) -> None:
        try:
            actions = self.engine.receive(data, peer, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - reported by failed(); the service goes on
            self.failed(exc, peer)
            return
        self.execute(actions)
        # arm_timer's first test, here: after most messages the armed wake-up serves.
        deadline = self.engine.earliest_deadline()
        wake = self._wake
        if deadline is not None and (wake.at is None or deadline <= wake.cover):
            self._arm(deadline)

    def failed(self, exc: BaseException, peer: Peer) -> None:
        """The engine raised on a message: counted and logged; the service goes on."""
        self.counters["internal_errors"] += 1
        log.error("internal error on a message from %s:%d", peer.host, peer.port,
                  exc_info=exc)

    def credentials_ready(self, urls: tuple[str, ...]) -> None:
        """Fetched credentials are in (io.fetcher.CredentialFeed tells every front end)."""
        try:
            actions = self.engine.credentials_ready(urls, time.monotonic())
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("internal error resuming requests for %s", ", ".join(urls))
            return
        self.execute(actions)
        self.arm_timer()

    def transport_failed(self, peer: Peer) -> None:
        """An outbound connection failed: the requests waiting on it are answered now."""
        try:
            actions = self.engine.transport_failed(peer, time.monotonic())
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("internal error failing the requests toward %s:%d", peer.host,
                          peer.port)
            return
        self.execute(actions)
        self.arm_timer()

    def number_picked(self, token: int, picked: Picked) -> None:
        """The shared number health's answer to a PickNumber."""
        try:
            actions = self.engine.number_picked(token, picked, time.monotonic())
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("internal error resuming a request after its caller ID pick")
            return
        self.execute(actions)
        self.arm_timer()

    # -- output ---------------------------------------------------------------------------
    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if type(action) is Send and action.peer.transport is _UDP:
                data, peer = action
                transport = self.udp[peer.side].transport
                if transport is not None and not transport.is_closing():
                    transport.sendto(data, (peer.host, peer.port))
            else:
                self.carry_out(action)

    def carry_out(self, action: Action) -> None:
        """Any action but a UDP datagram to send (execute sends those itself)."""
        if type(action) is Send:
            self._send_stream(action.data, action.peer)
        elif type(action) is HealthEvent:
            if self.publish is not None:
                self.publish(action)
        elif type(action) is Fetch:
            if self.fetch is not None:
                self.fetch(action.request)
            else:  # verification turned off by a reload meanwhile: let them go on
                self.credentials_ready((action.request.url,))
        elif type(action) is CallRecord:
            if self.record is not None:
                self.record(action)
        elif type(action) is PickNumber:
            if self.pick is not None:
                self.pick(action, self.number_picked)
            else:  # no shared state (a reload turned it off): this replica decides
                self.number_picked(action.token, Picked(None, fallback=True))

    def _send_stream(self, data: bytes, peer: Peer) -> None:
        manager = self.tcp.get((peer.side, peer.transport))
        if manager is None:
            return
        home = self.tcp_home.get((peer.side, peer.host, peer.port))
        if (home is not None and self.worker is not None
                and (peer.host, peer.port) not in manager.connections):
            self.worker.tcp_send(home, peer, data)  # its connection is there
        else:
            manager.send(data, peer.host, peer.port)

    def remember_tcp_home(self, peer: Peer, worker: int) -> None:
        """A TCP message another worker received: responses go back through it."""
        home = self.tcp_home
        home[(peer.side, peer.host, peer.port)] = worker
        if len(home) > self.max_tcp_home:
            del home[next(iter(home))]

    def write_tcp(self, peer: Peer, data: bytes) -> None:
        """Bytes another worker asks us to write on a connection we hold."""
        manager = self.tcp.get((peer.side, peer.transport))
        conn = manager.connections.get((peer.host, peer.port)) if manager else None
        if conn is None or not conn.write(data):
            self.counters["tcp_send_failures"] += 1

    # -- the timer ------------------------------------------------------------------------
    def arm_timer(self, exact: bool = False) -> None:
        # After each message, the heap's first entry is enough: it may be a cancelled timer
        # (never later than the real next one), which costs at most an early wake-up that
        # finds nothing due; after the timers ran, the exact next deadline.
        engine = self.engine
        deadline = engine.next_deadline() if exact else engine.earliest_deadline()
        if deadline is None:
            return
        if self._wake.at is not None and deadline > self._wake.cover:
            return  # the wake-up armed serves it (the rounding below would not arm earlier)
        self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        """A wake-up at ``deadline`` (rounded up), unless one armed comes first."""
        # One wake-up serves every timer due within timer_resolution (RFC 3261 timers are
        # hundreds of milliseconds and up): far fewer loop callbacks under load.
        resolution = self.timer_resolution
        deadline = math.ceil(deadline / resolution) * resolution
        wake = self._wake
        if wake.at is not None and wake.at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        wake.at = deadline
        wake.cover = deadline - resolution
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake.at = None
        try:
            actions = self.engine.on_timers(time.monotonic())
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("internal error in timers")
            actions = []
        self.execute(actions)
        self.arm_timer(exact=True)


__all__ = ["Engine", "EngineShell", "SideTls"]


def _size_buffers(sock: socket.socket, size: int, side: Side) -> None:
    """Ask for ``size`` bytes of receive and send buffer; Linux caps the request at
    net.core.rmem_max/wmem_max (and reports double what it grants)."""
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if got < size:
        log.warning("%s UDP receive buffer: %d bytes granted of %d asked ([transport] "
                    "udp_buffer); raise net.core.rmem_max for more", side, got, size)
