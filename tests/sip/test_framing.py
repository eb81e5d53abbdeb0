"""TCP framing by Content-Length, in any chunking, with keep-alives and fatal errors."""

from __future__ import annotations

import random

import pytest

from stirshaken_proxy.sip.errors import SipError
from stirshaken_proxy.sip.framing import PING, StreamFramer

MSG = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 4\r\n\r\nbody")


@pytest.mark.parametrize("seed", range(5))
def test_random_chunks(seed: int) -> None:
    stream = b"\r\n\r\n" + MSG + MSG + b"\r\n\r\n" + MSG
    rnd = random.Random(seed)
    framer = StreamFramer(max_size=4096)
    out: list[bytes] = []
    i = 0
    while i < len(stream):
        n = rnd.randint(1, 17)
        out.extend(framer.feed(stream[i:i + n]))
        i += n
    assert out == [PING, MSG, MSG, PING, MSG]
    assert framer.buffered == 0


@pytest.mark.parametrize(("data", "status"), [
    (MSG.replace(b"l: 4", b"l: -4"), 400),
    (MSG.replace(b"l: 4", b"l: 4\r\nContent-Length: 4"), 400),
    (MSG.replace(b"l: 4\r\n", b""), 400),
    (MSG.replace(b"l: 4", b"l: 999999"), 513),
    (b"X" * 5000, 513),
])
def test_unframeable_streams(data: bytes, status: int) -> None:
    with pytest.raises(SipError) as info:
        StreamFramer(max_size=4096).feed(data)
    assert info.value.fatal_stream and info.value.status == status


def test_waits_for_the_body() -> None:
    framer = StreamFramer(max_size=4096)
    assert framer.feed(MSG[:-1]) == []
    assert framer.feed(MSG[-1:]) == [MSG]
