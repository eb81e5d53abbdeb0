"""Worker processes, one per core, and the links between them.

Every worker binds the same SIP ports (SO_REUSEPORT), so the kernel spreads what arrives by
source address. A call's state (its transactions, its caller-ID mapping, the time it was
answered) must live in one place, so each call has an owner: the worker chosen by its Call-ID,
which every message of the call carries, on both sides. A worker that receives a message of
a call it does not own hands the datagram to the owner over a Unix datagram socket, with the
address it came from; the owner processes it as if it had received it, and sends from its own
socket on the same port. A response to a request that came over TCP goes back through the
worker that holds the connection.

The links also carry what must be the same in every worker: number-health events (each worker
keeps a full replica; worker 0 writes it to the store) and metric snapshots (worker 0 serves
the admin API and sums them).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import pickle
import signal
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Any

from ..sip.transport import Peer, Side, Transport

log = logging.getLogger(__name__)

MESSAGE = b"M"  # a SIP message another worker received: process it as received
SEND = b"O"  # bytes for a TCP connection the receiving worker holds
HEALTH = b"H"  # a number-health event for the replica
DIGEST = b"D"  # a digest authentication failure or success of an address (policy.digest)
STATS = b"S"  # asks for a metrics snapshot
STATS_REPLY = b"R"
READY = b"Y"  # a worker is listening (worker 0 is ready when all are)
BATCH = b"B"  # several of the above, each preceded by its length (4 octets)

# kind, origin worker, side, transport, port, length of the host (and, for a TLS peer, the
# names of its client certificate, each after a line feed)
_HEAD = struct.Struct("!cBBBHH")
_SIDES = (Side.DIALER, Side.CARRIER, Side.REDIRECT)
_TRANSPORTS = (Transport.UDP, Transport.TCP, Transport.TLS)
_BUFFER = 4 << 20
_MAX_QUEUED = 20_000  # datagrams waiting for a full link to drain, past this they are dropped
_MAX_BATCH = 64 * 1024  # octets of messages gathered into one datagram

Handler = Callable[[bytes, int, bytes], None]  # kind, origin worker, payload


def owner_of(call_id: bytes, count: int) -> int:
    """The worker that owns a call (the same in every worker, unlike hash())."""
    return zlib.crc32(call_id) % count


def encode_peer(kind: bytes, origin: int, peer: Peer, data: bytes) -> bytes:
    host = peer.host.encode("ascii")
    if peer.names:
        host += b"".join(b"\n" + name.encode() for name in peer.names)
    return _HEAD.pack(kind, origin, _SIDES.index(peer.side), _TRANSPORTS.index(peer.transport),
                      peer.port, len(host)) + host + data


def decode_peer(datagram: bytes) -> tuple[Peer, bytes]:
    _, _, side, transport, port, length = _HEAD.unpack_from(datagram)
    start = _HEAD.size
    host, *names = datagram[start:start + length].decode().split("\n")
    return (Peer(_SIDES[side], _TRANSPORTS[transport], host, port, tuple(names)),
            datagram[start + length:])


class WorkerLink:
    """One worker's end of the mesh: a Unix datagram socket to each other worker."""

    def __init__(self, index: int, count: int, sockets: dict[int, socket.socket]) -> None:
        self.index = index
        self.count = count
        self.sockets = sockets
        self._queues: dict[int, collections.deque[bytes]] = {}
        self._handler: Handler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        # Messages handed over during one turn of the event loop leave together at its end:
        # one datagram and one wake-up of the other worker instead of one per message.
        self._batches: dict[int, list[bytes]] = {}
        self._batch_size: dict[int, int] = {}

    @staticmethod
    def mesh(count: int) -> list[WorkerLink]:
        """Links for ``count`` workers, made before they are forked."""
        ends: list[dict[int, socket.socket]] = [{} for _ in range(count)]
        for i in range(count):
            for j in range(i + 1, count):
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                for s in (a, b):
                    s.setblocking(False)
                    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                        s.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)
                ends[i][j], ends[j][i] = a, b
        return [WorkerLink(i, count, ends[i]) for i in range(count)]

    def owner(self, call_id: bytes) -> int:
        return owner_of(call_id, self.count)

    def start(self, handler: Handler) -> None:
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        for s in self.sockets.values():
            self._loop.add_reader(s.fileno(), self._readable, s)
        for to, queue in self._queues.items():  # queued before the loop ran
            if queue:
                self._loop.add_writer(self.sockets[to].fileno(), self._writable, to)

    def _readable(self, s: socket.socket) -> None:
        handler = self._handler
        assert handler is not None
        for _ in range(256):  # then let the loop serve the SIP sockets too
            try:
                datagram = s.recv(1 << 17)
            except BlockingIOError:
                return
            if datagram[:1] == BATCH:
                self._unbatch(datagram, handler)
            else:
                handler(datagram[:1], datagram[1], datagram)

    @staticmethod
    def _unbatch(datagram: bytes, handler: Handler) -> None:
        view = memoryview(datagram)
        pos, end = 2, len(datagram)
        while pos + 4 <= end:
            length = int.from_bytes(view[pos:pos + 4], "big")
            item = bytes(view[pos + 4:pos + 4 + length])
            pos += 4 + length
            handler(item[:1], item[1], item)

    def drain(self) -> None:
        """Process whatever is waiting (at shutdown, after the other workers stopped)."""
        for s in self.sockets.values():
            self._readable(s)

    def send(self, to: int, datagram: bytes) -> None:
        queue = self._queues.get(to)
        if queue:
            self._enqueue(to, datagram)
            return
        try:
            self.sockets[to].send(datagram)
        except BlockingIOError:
            self._enqueue(to, datagram)
        except OSError as exc:
            self.dropped += 1
            log.debug("link to worker %d: %s", to, exc)

    def message(self, to: int, peer: Peer, data: bytes) -> None:
        """Hand a received message to its owner (sent at the end of this loop turn)."""
        self._batched(to, encode_peer(MESSAGE, self.index, peer, data))

    def _batched(self, to: int, item: bytes) -> None:
        batch = self._batches.get(to)
        if batch is None:
            if self._loop is None:
                self.send(to, item)
                return
            if not self._batches:
                self._loop.call_soon(self._send_batches)
            self._batches[to] = [item]
            self._batch_size[to] = len(item) + 4
            return
        if self._batch_size[to] + len(item) > _MAX_BATCH:
            self._send_batch(to, batch)
            batch.clear()
            self._batch_size[to] = 0
        batch.append(item)
        self._batch_size[to] += len(item) + 4

    def _send_batches(self) -> None:
        batches, self._batches = self._batches, {}
        for to, batch in batches.items():
            self._send_batch(to, batch)

    def _send_batch(self, to: int, batch: list[bytes]) -> None:
        if len(batch) == 1:
            self.send(to, batch[0])
        elif batch:
            self.send(to, BATCH + bytes((self.index,)) + b"".join(
                len(item).to_bytes(4, "big") + item for item in batch))

    def tcp_send(self, to: int, peer: Peer, data: bytes) -> None:
        self.send(to, encode_peer(SEND, self.index, peer, data))

    def event(self, kind: bytes, value: Any, to: int | None = None) -> None:
        """A value for one other worker or all of them (batched like messages)."""
        datagram = kind + bytes((self.index,)) + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        for other in self.sockets if to is None else (to,):
            self._batched(other, datagram)

    @staticmethod
    def value(datagram: bytes) -> Any:
        return pickle.loads(datagram[2:])  # from our own forked workers only

    def _enqueue(self, to: int, datagram: bytes) -> None:
        queue = self._queues.setdefault(to, collections.deque())
        if len(queue) >= _MAX_QUEUED:
            self.dropped += 1
            return
        if not queue and self._loop is not None:
            self._loop.add_writer(self.sockets[to].fileno(), self._writable, to)
        queue.append(datagram)

    def _writable(self, to: int) -> None:
        queue = self._queues[to]
        s = self.sockets[to]
        while queue:
            try:
                s.send(queue[0])
            except BlockingIOError:
                return
            except OSError:
                self.dropped += 1
            queue.popleft()
        assert self._loop is not None
        self._loop.remove_writer(s.fileno())

    def flush(self, timeout: float = 2.0) -> None:
        """Send what is queued, waiting for the others to read it (at shutdown)."""
        self._send_batches()
        for to, queue in self._queues.items():
            s = self.sockets[to]
            s.settimeout(timeout)
            try:
                while queue:
                    s.send(queue.popleft())
            except OSError as exc:
                self.dropped += len(queue) + 1
                log.warning("link to worker %d: %d datagrams not sent: %s", to,
                            len(queue) + 1, exc)
                queue.clear()
            finally:
                s.setblocking(False)

    def close(self) -> None:
        for s in self.sockets.values():
            if self._loop is not None:
                self._loop.remove_reader(s.fileno())
                self._loop.remove_writer(s.fileno())
            s.close()


def die_with_parent(parent: int) -> None:
    """A worker gets SIGTERM when worker 0 dies, so none is left holding the ports."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)
