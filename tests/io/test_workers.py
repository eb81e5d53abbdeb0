"""The links between worker processes: what crosses them comes out whole and in order, a full
link queues instead of losing datagrams, and every worker agrees on who owns a call."""

from __future__ import annotations

import asyncio
import zlib

from stirshaken_proxy.io.workers import (
    BATCH,
    MESSAGE,
    SEND,
    STATS,
    WorkerLink,
    decode_peer,
    encode_peer,
    owner_of,
)
from stirshaken_proxy.sip.transport import Peer, Side, Transport


def test_peer_and_bytes_round_trip() -> None:
    for peer in (Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5060),
                 Peer(Side.CARRIER, Transport.TCP, "::1", 65535),
                 Peer(Side.CARRIER, Transport.UDP, "2001:db8::1:2:3:4", 1),
                 Peer(Side.DIALER, Transport.TLS, "127.0.0.1", 5061,
                      ("dialer.test", "dialer-2.test"))):
        data = b"INVITE sip:x SIP/2.0\r\n\r\n" + bytes(range(256))
        datagram = encode_peer(MESSAGE, 3, peer, data)
        assert datagram[:1] == MESSAGE and datagram[1] == 3
        assert decode_peer(datagram) == (peer, data)


def test_owner_is_the_same_in_every_process() -> None:
    """crc32, not hash(): Python randomises str/bytes hashes per process."""
    assert owner_of(b"1-3131@127.0.0.1", 2) == zlib.crc32(b"1-3131@127.0.0.1") % 2
    owners = {owner_of(b"%d-3131@127.0.0.1" % i, 4) for i in range(200)}
    assert owners == {0, 1, 2, 3}  # spread over every worker


def test_every_worker_reaches_every_other_and_a_full_link_queues() -> None:
    links = WorkerLink.mesh(3)
    received: dict[int, list[tuple[bytes, int, bytes]]] = {0: [], 1: [], 2: []}

    async def main() -> None:
        # Worker 1 sends before worker 2 reads anything: far more than a socket buffer holds.
        big = b"x" * 60_000
        for i in range(400):
            links[1].send(2, MESSAGE + bytes((1,)) + i.to_bytes(4, "big") + big)
        assert links[1]._queues.get(2), "the link should have queued past the socket buffer"
        links[1].send(2, SEND + bytes((1,)) + b"last")  # behind the queue, not before it
        for i, link in enumerate(links):
            link.start(lambda kind, origin, d, i=i: received[i].append((kind, origin, d)))
        links[0].event(STATS, 7)  # to both others
        links[2].tcp_send(0, Peer(Side.DIALER, Transport.TCP, "127.0.0.1", 5060), b"bytes")
        for _ in range(400):
            await asyncio.sleep(0.005)
            if len(received[2]) == 402 and received[0] and received[1]:
                break

    asyncio.run(main())
    numbers = [int.from_bytes(d[2:6], "big") for kind, _, d in received[2] if kind == MESSAGE]
    assert numbers == list(range(400))  # whole and in order
    assert [r for r in received[2] if r[1] == 1][-1] == (SEND, 1, SEND + b"\x01last")
    assert [(k, o, WorkerLink.value(d)) for k, o, d in received[1]] == [(STATS, 0, 7)]
    assert [(k, o) for k, o, _ in received[0]] == [(SEND, 2)]
    assert decode_peer(received[0][0][2]) == (Peer(Side.DIALER, Transport.TCP, "127.0.0.1", 5060), b"bytes")
    assert links[1].dropped == 0
    for link in links:
        link.close()


def test_messages_handed_over_in_one_loop_turn_travel_together() -> None:
    links = WorkerLink.mesh(2)
    peer = Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 5080)

    async def main() -> None:
        links[0].start(lambda *a: None)
        for i in range(300):  # ~300 KB in one turn: a few datagrams of at most 64 KB
            links[0].message(1, peer, b"%04d" % i + b"y" * 1000)
        await asyncio.sleep(0.05)

    asyncio.run(main())
    datagrams: list[bytes] = []
    while True:
        try:
            datagrams.append(links[1].sockets[0].recv(1 << 17))
        except BlockingIOError:
            break
    assert 5 <= len(datagrams) <= 6 and all(d[:1] == BATCH for d in datagrams)
    got: list[tuple[Peer, bytes]] = []
    for d in datagrams:
        WorkerLink._unbatch(d, lambda kind, origin, item: got.append(decode_peer(item)))
    assert [d[:4] for _, d in got] == [b"%04d" % i for i in range(300)]
    assert all(p == peer for p, _ in got)
    for link in links:
        link.close()


def test_log_lines_name_their_worker() -> None:
    import io
    import json
    import logging

    from stirshaken_proxy.io.logs import JsonFormatter, tag_worker

    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        text, js = io.StringIO(), io.StringIO()
        plain = logging.StreamHandler(text)
        plain.setFormatter(logging.Formatter("%(message)s"))
        structured = logging.StreamHandler(js)
        structured.setFormatter(JsonFormatter())
        root.handlers[:] = [plain, structured]
        tag_worker(3)
        logging.getLogger("stirshaken_proxy.test").warning("hello")
    finally:
        root.handlers[:] = saved
    assert "WARNING [worker 3] stirshaken_proxy.test: hello" in text.getvalue()
    assert json.loads(js.getvalue())["worker"] == 3
