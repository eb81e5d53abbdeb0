"""UDP, TCP and TLS transports. Each hands received bytes to a sink and sends what it is
told."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from ..sip.errors import SipError
from ..sip.framing import PING, PONG, StreamFramer
from ..sip.transport import Peer, Side, Transport
from .tls import certificate_names, matches_name

try:
    # The compiled datagram path (setup.py builds it); the shell takes its Pump from here.
    from . import _cpump as _cpump
except ImportError:  # an install without a compiler: UdpEndpoint and the shell's process
    _cpump = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Sink = Callable[[bytes, Peer], None]


class UdpEndpoint(asyncio.DatagramProtocol):
    """A UDP listener: datagrams to the sink. (The shell sends on its transport itself.)"""

    PEERS_LIMIT = 4096  # source addresses whose Peer is kept (a dialer's trunks, next hops)

    def __init__(self, side: Side, sink: Sink, counters: Counter[str]) -> None:
        self.side = side
        self.sink = sink
        self.counters = counters
        self.transport: asyncio.DatagramTransport | None = None
        # A Peer (a NamedTuple: ~10x a dict lookup to make) per source address, made once:
        # a call's datagrams come from a handful of addresses.
        self._peers: dict[tuple[Any, ...], Peer] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        peer = self._peers.get(addr)
        if peer is None:
            peers = self._peers
            if len(peers) >= self.PEERS_LIMIT:
                peers.clear()
            peer = peers[addr] = Peer(self.side, Transport.UDP, addr[0], addr[1])
        self.sink(data, peer)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: UDP is best effort, retransmission timers cover it.
        self.counters["udp_errors"] += 1


CompiledUdpEndpoint: type[UdpEndpoint] | None = None
if _cpump is not None:

    class _CompiledUdpEndpoint(_cpump.Endpoint, asyncio.DatagramProtocol):
        """UdpEndpoint with its methods in C (io/_cpump.c): the compiled core's."""

        PEERS_LIMIT = UdpEndpoint.PEERS_LIMIT

        def __init__(self, side: Side, sink: Sink, counters: Counter[str]) -> None:
            super().__init__(side, sink, counters, Peer, Transport.UDP, self.PEERS_LIMIT)

    CompiledUdpEndpoint = cast(type[UdpEndpoint], _CompiledUdpEndpoint)


@dataclass(frozen=True, kw_only=True)
class SideTls:
    """TLS on one side: a listener (``host``/``port``, with ``server``'s context) and/or
    connections we open to the next hop (``client``), whose certificate must carry
    ``names[(host, port)]`` (RFC 5922)."""

    host: str = ""
    port: int = 0
    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None
    names: dict[tuple[str, int], str] = field(default_factory=dict)
    handshake_timeout: float = 5.0


_NO_TLS = SideTls()


class TlsLayer:
    """TLS over a connection's bytes with memory BIOs (ssl.SSLObject): the connection stays
    one asyncio.Protocol from accept to close, so admission limits apply before any
    handshake work, the handshake is bounded by our own timer, and its failures are
    counted. (asyncio's start_tls loses a ClientHello that arrives with the accept under
    uvloop.)"""

    __slots__ = ("established", "incoming", "obj", "outgoing")

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)
        self.established = False

    def handshake(self) -> bytes:
        """Advance the handshake; returns the bytes to send. Raises ssl.SSLError."""
        try:
            self.obj.do_handshake()
            self.established = True
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def feed(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """Received bytes in: (plaintext, bytes to send, the peer closed TLS)."""
        self.incoming.write(data)
        out = b""
        if not self.established:
            out = self.handshake()
            if not self.established:
                return b"", out, False
        chunks = []
        closed = False
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), out + self.outgoing.read(), closed

    def encrypt(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.outgoing.read()

    def peer_der(self) -> bytes | None:
        return self.obj.getpeercert(binary_form=True) or None


class TcpConnection(asyncio.Protocol):
    """One SIP-over-TCP (or TLS) connection, inbound or outbound. A TLS connection is
    admitted as TCP first (the per-source limits apply before any handshake work); its
    handshake must complete within the handshake timeout."""

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
        self.tls: TlsLayer | None = None
        self._early: list[bytes] = []  # written before the handshake completed
        self.ready = False  # TLS: handshake done and the peer's certificate accepted
        self._handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        manager = self.manager
        self.peer = Peer(self.side, manager.transport, host, port)
        loop = asyncio.get_running_loop()
        self.last_activity = self.opened = loop.time()
        if not manager.register(self):
            self.transport.abort()
            return
        ctx = manager.side_tls.client if self.outbound_key is not None else manager.side_tls.server
        if ctx is not None:
            self.tls = tls = TlsLayer(ctx, server_side=self.outbound_key is None)
            self._handshake_timer = loop.call_later(manager.side_tls.handshake_timeout,
                                                    self._handshake_expired)
            if self.outbound_key is not None:  # we speak first
                try:
                    out = tls.handshake()
                except ssl.SSLError as exc:
                    self._tls_failed(exc)
                    return
                self._tls_sent(out)

    def _handshake_expired(self) -> None:
        if self.tls is not None and not self.tls.established and self.transport is not None:
            self.manager.counters["tls_handshake_timeouts"] += 1
            log.debug("TLS handshake with %s did not complete in time", self.peer)
            self.transport.abort()

    def _tls_failed(self, exc: ssl.SSLError) -> None:
        assert self.transport is not None
        if isinstance(exc, ssl.SSLCertVerificationError):
            self.manager.counters["tls_verify_failures"] += 1
            # Our next hop's certificate is the operator's concern; a client's is counted
            # (anyone can open a connection: no log line per attempt).
            log.log(logging.WARNING if self.outbound_key is not None else logging.DEBUG,
                    "TLS with %s refused: %s", _where(self.peer), exc.verify_message)
        else:
            self.manager.counters["tls_handshake_failures"] += 1
            log.debug("TLS handshake with %s failed: %s", _where(self.peer), exc)
        self.transport.abort()

    def _tls_sent(self, out: bytes) -> bool:
        """Send what a TLS step produced; when the handshake just completed, check the peer
        (False: the connection is refused)."""
        assert self.transport is not None and self.tls is not None
        if out:
            self.transport.write(out)
        if self.tls.established and self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
            return self._established()
        return True

    def _established(self) -> bool:
        """The handshake completed: the next hop's certificate must name it (RFC 5922
        §7.3); a verified client certificate names the peer (an account may own it)."""
        assert self.tls is not None and self.transport is not None and self.peer is not None
        der = self.tls.peer_der()
        if self.outbound_key is not None:
            name = self.manager.side_tls.names.get(self.outbound_key, self.outbound_key[0])
            if der is None or not matches_name(der, name):
                self.manager.counters["tls_name_mismatch"] += 1
                log.warning("TLS peer %s does not present a certificate for %s; connection "
                            "refused", _where(self.peer), name)
                self.transport.abort()
                return False
        elif der is not None:
            self.peer = self.peer._replace(names=certificate_names(der))
        self.ready = True
        early, self._early = self._early, []
        for data in early:
            self.write(data)
        return True

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        self.last_activity = asyncio.get_running_loop().time()
        tls = self.tls
        if tls is not None:
            try:
                plain, out, closed = tls.feed(data)
            except ssl.SSLError as exc:
                self._tls_failed(exc)
                return
            if not self._tls_sent(out):
                return
            if closed:
                self.transport.close()
            if not plain:
                return
            data = plain
        try:
            items = self.framer.feed(data)
        except SipError as exc:
            self.manager.counters["tcp_framing_errors"] += 1
            log.debug("closing TCP connection from %s: %s", self.peer, exc.detail)
            self.transport.close()
            return
        for item in items:
            if item is PING or item == PING:
                self.write(PONG)
            else:
                self.messages += 1
                self.manager.sink(item, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.manager.unregister(self)
        if self.outbound_key is not None and self.tls is not None and not self.ready:
            self.manager.failed(*self.outbound_key)  # certificate, name or handshake

    def write(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        if t.get_write_buffer_size() > self.manager.max_pending_bytes:
            self.manager.counters["tcp_overflow_drops"] += 1
            return False
        tls = self.tls
        if tls is not None:
            if not tls.established:
                if sum(map(len, self._early)) + len(data) > self.manager.max_pending_bytes:
                    self.manager.counters["tcp_overflow_drops"] += 1
                    return False
                self._early.append(data)
                return True
            data = tls.encrypt(data)
        t.write(data)
        return True


def _where(peer: Peer | None) -> str:
    return f"{peer.host}:{peer.port}" if peer is not None else "?"


class TcpManager:
    """Connections of one side and one stream transport (TCP or TLS) by peer address; opens
    outbound connections on demand."""

    def __init__(self, side: Side, sink: Sink, counters: Counter[str], *,
                 max_message_size: int, max_connections: int, max_pending_bytes: int,
                 connect_timeout: float, local_host: str, max_per_source: int = 32,
                 reserved_for_trusted: int = 0,
                 trusted: Callable[[str], bool] | None = None,
                 transport: Transport = Transport.TCP,
                 tls: SideTls | None = None,
                 on_failure: Callable[[str, int], None] | None = None) -> None:
        self.side = side
        self.on_failure = on_failure  # an outbound connection failed (host, port)
        self.transport = transport
        self.side_tls = tls or _NO_TLS  # inbound (a listener) and outbound TLS, if any
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

    def failed(self, host: str, port: int) -> None:
        if self.on_failure is not None:
            self.on_failure(host, port)

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
            self.counters[f"{self.transport}_connect_failures"] += 1
            log.warning("%s connect to %s:%d failed: %s", self.transport.upper(), host, port,
                        exc)
            self._connecting.pop((host, port), None)
            self.failed(host, port)
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

