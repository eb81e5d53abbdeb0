"""Property-based fuzzing (hypothesis) of the SIP and Identity/PASSporT parsers: no exception
escapes but the parsers' own, and valid messages survive parse -> serialise -> parse.

The budget is bounded for CI; FUZZ_EXAMPLES=100000 runs a longer session on demand."""

from __future__ import annotations

import os
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stirshaken_proxy.sip.errors import SipError
from stirshaken_proxy.sip.framing import StreamFramer
from stirshaken_proxy.sip.message import parse_message
from stirshaken_proxy.stir.credentials import CachePolicy, TrustStore
from stirshaken_proxy.stir.passport import PassportError, decode_passport
from stirshaken_proxy.stir.verification import VerificationService
from stirshaken_proxy.stir.verify import Checks, Verdict, parse_identity
from stirshaken_proxy.stir.x5u import UrlPolicy

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
CORPUS = [p.read_bytes() for p in sorted(
    (Path(__file__).resolve().parent.parent / "data" / "rfc4475").glob("*.dat"))]
VALID = []
for data in CORPUS:
    try:
        VALID.append(parse_message(data).serialize())
    except SipError:
        pass


def _parse(data: bytes) -> None:
    try:
        msg = parse_message(data, max_size=8192)
    except SipError:
        return
    out = msg.serialize()
    again = parse_message(out, max_size=len(out) + 1)
    assert again.serialize() == out  # stable after one round
    assert (again.method, again.status, again.call_id, again.cseq) == (
        msg.method, msg.status, msg.call_id, msg.cseq)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _parse(data)


@FUZZ
@given(st.sampled_from(CORPUS), st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=8),
                                                   st.integers(0, 8)), max_size=6))
def test_mutated_torture_messages(base: bytes, edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(base)
    for pos, insert, delete in edits:
        pos %= max(1, len(data))
        data[pos:pos + delete] = insert
    _parse(bytes(data))


@FUZZ
@given(st.sampled_from(VALID), st.integers(1, 97))
def test_stream_framing_any_chunking(message: bytes, seed: int) -> None:
    if b"content-length" not in message.lower() and b"\r\nl:" not in message.lower():
        return
    rnd = random.Random(seed)
    framer = StreamFramer(max_size=65536)
    got: list[bytes] = []
    stream = message * 2
    i = 0
    try:
        while i < len(stream):
            n = rnd.randint(1, 50)
            got.extend(framer.feed(stream[i:i + n]))
            i += n
    except SipError:
        return
    assert got == [message, message]


def core() -> VerificationService:
    return VerificationService(checks=Checks(url_policy=UrlPolicy()), trust=TrustStore([]),
                               cache_policy=CachePolicy())


@FUZZ
@given(st.text(max_size=600))
def test_identity_header_text(value: str) -> None:
    try:
        parse_identity(value)
    except ValueError:
        pass
    try:
        decode_passport(value.split(";")[0])
    except PassportError:
        pass
    verdict = core().verify([value], orig="12025550100", dest="12025550199", date=None,
                            now=1.79e9)
    assert not isinstance(verdict, Verdict) or verdict.code is not None


@FUZZ
@given(st.lists(st.sampled_from(["eyJhbGciOiJFUzI1NiJ9", "e30", "", "!!", "eyJ9", "AAAA",
                                 "eyJ0eXAiOiJwYXNzcG9ydCJ9", "bnVsbA", "WzFd"]),
                min_size=1, max_size=4),
       st.sampled_from([";info=<https://a.example/c.pem>", ";alg=none", "", ";ppt=shaken",
                        ";info=<>;ppt=\"\""]))
def test_identity_pieces(parts: list[str], params: str) -> None:
    value = ".".join(parts) + params
    verdict = core().verify([value], orig="12025550100", dest="12025550199", date=None,
                            now=1.79e9)
    assert not isinstance(verdict, Verdict) or verdict.code in (403, 436, 437, 438)
