"""UDP and TCP transports. Each hands received bytes to a sink and sends what it is told."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from ..sip.errors import SipError
from ..sip.framing import PING, PONG, StreamFramer
from ..sip.transport import Peer, Side, Transport

log = logging.getLogger(__name__)

Sink = Callable[[bytes, Peer], None]


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, side: Side, sink: Sink, counters: Counter[str]) -> None:
        self.side = side
        self.sink = sink
        self.counters = counters
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.sink(data, Peer(self.side, Transport.UDP, addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: UDP is best effort, retransmission timers cover it.
        self.counters["udp_errors"] += 1

    def send(self, data: bytes, host: str, port: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, (host, port))


class TcpConnection(asyncio.Protocol):
    """One SIP-over-TCP connection, inbound or outbound."""

    def __init__(self, manager: TcpManager, side: Side, *, outbound_key: tuple[str, int] | None
                 = None) -> None:
        self.manager = manager
        self.side = side
        self.framer = StreamFramer(max_size=manager.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.outbound_key = outbound_key
        self.last_activity = 0.0
        self.opened = 0.0
        self.messages = 0  # complete SIP messages received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.side, Transport.TCP, host, port)
        self.last_activity = self.opened = asyncio.get_running_loop().time()
        if not self.manager.register(self):
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        self.last_activity = asyncio.get_running_loop().time()
        try:
            items = self.framer.feed(data)
        except SipError as exc:
            self.manager.counters["tcp_framing_errors"] += 1
            log.debug("closing TCP connection from %s: %s", self.peer, exc.detail)
            self.transport.close()
            return
        for item in items:
            if item is PING or item == PING:
                self.transport.write(PONG)
            else:
                self.messages += 1
                self.manager.sink(item, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.manager.unregister(self)

    def write(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        if t.get_write_buffer_size() > self.manager.max_pending_bytes:
            self.manager.counters["tcp_overflow_drops"] += 1
            return False
        t.write(data)
        return True


class TcpManager:
    """Connections of one side by peer address; opens outbound connections on demand."""

    def __init__(self, side: Side, sink: Sink, counters: Counter[str], *,
                 max_message_size: int, max_connections: int, max_pending_bytes: int,
                 connect_timeout: float, local_host: str, max_per_source: int = 32,
                 reserved_for_trusted: int = 0,
                 trusted: Callable[[str], bool] | None = None) -> None:
        self.side = side
        self.sink = sink
        self.counters = counters
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.max_pending_bytes = max_pending_bytes
        self.connect_timeout = connect_timeout
        self.local_host = local_host
        self.max_per_source = max_per_source
        self.reserved_for_trusted = reserved_for_trusted
        self.trusted = trusted  # a source the configuration lists (dialer trunks, carriers)
        self.per_source: Counter[str] = Counter()  # inbound connections by address
        self.connections: dict[tuple[str, int], TcpConnection] = {}
        self._connecting: dict[tuple[str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    def register(self, conn: TcpConnection) -> bool:
        """Admit a connection: an inbound one within its source's share, and, from a source
        the configuration does not list, outside the room kept for the listed ones."""
        assert conn.peer is not None
        host = conn.peer.host
        if conn.outbound_key is None:
            if self.per_source[host] >= self.max_per_source:
                self.counters["tcp_refused_per_source"] += 1
                return False
            trusted = self.trusted is not None and self.trusted(host)
            limit = self.max_connections - (0 if trusted else self.reserved_for_trusted)
            if len(self.connections) >= limit:
                self.counters["tcp_refused"] += 1
                return False
            self.per_source[host] += 1
        elif len(self.connections) >= self.max_connections:
            self.counters["tcp_refused"] += 1
            return False
        key = conn.outbound_key or (conn.peer.host, conn.peer.port)
        self.connections[key] = conn
        return True

    def unregister(self, conn: TcpConnection) -> None:
        for key, value in list(self.connections.items()):
            if value is conn:
                del self.connections[key]
                if conn.outbound_key is None and conn.peer is not None:
                    host = conn.peer.host
                    self.per_source[host] -= 1
                    if self.per_source[host] <= 0:
                        del self.per_source[host]

    def send(self, data: bytes, host: str, port: int) -> None:
        conn = self.connections.get((host, port))
        if conn is not None:
            conn.write(data)
            return
        pending = self._connecting.get((host, port))
        if pending is not None:
            if sum(map(len, pending)) + len(data) <= self.max_pending_bytes:
                pending.append(data)
            return
        self._connecting[(host, port)] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(host, port))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: TcpConnection(self, self.side, outbound_key=(host, port)),
                    host, port, local_addr=(self.local_host, 0))
        except (OSError, TimeoutError) as exc:
            self.counters["tcp_connect_failures"] += 1
            log.warning("TCP connect to %s:%d failed: %s", host, port, exc)
            self._connecting.pop((host, port), None)
            return
        for data in self._connecting.pop((host, port), []):
            conn.write(data)

    def close_idle(self, now: float, idle: float, first_message: float = math.inf) -> None:
        """Close connections idle for ``idle`` seconds, and inbound ones that sent no SIP
        message within ``first_message`` seconds of opening."""
        for conn in list(self.connections.values()):
            if conn.transport is None:
                continue
            if now - conn.last_activity > idle:
                conn.transport.close()
            elif conn.outbound_key is None and not conn.messages and \
                    now - conn.opened > first_message:
                self.counters["tcp_silent_closed"] += 1
                conn.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
