"""In-process benchmark of the hot path: µs per message, best of several rounds.

    .venv/bin/python -m bench.inprocess

Measures parse alone, parse + proxy edits + serialise of a typical INVITE, and the whole engine
handling an INVITE (parse, checks, transaction, edits, serialise). Numbers vary with the machine;
compare ratios taken in one run.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.engine.proxy import EngineConfig, ProxyEngine, SideConfig
from stirshaken_proxy.engine.services import Services
from stirshaken_proxy.engine.sources import SourceFilter
from stirshaken_proxy.io.keys import init_dev_pki, load_private_key
from stirshaken_proxy.policy.accounts import Account, AccountDirectory
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.sip.message import ParseCache, parse_message
from stirshaken_proxy.sip.transport import Peer, Side, Transport
from stirshaken_proxy.stir.credentials import CachePolicy, TrustStore
from stirshaken_proxy.stir.passport import (
    Signer,
    SigningIdentity,
    compiled_signer_available,
    jws_signer,
)
from stirshaken_proxy.stir.signing import Authenticator, AuthPolicy
from stirshaken_proxy.stir.verification import (
    FetchKind,
    FetchRequest,
    FetchResponse,
    VerificationService,
)
from stirshaken_proxy.stir.verify import Checks
from stirshaken_proxy.stir.x5u import UrlPolicy

INVITE = (
    b"INVITE sip:+12025550199@127.0.0.1:5060;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-3131-1-0;rport\r\n"
    b"From: \"Sales\" <sip:+12025550100@127.0.0.1:5070;user=phone>;tag=3131SIPpTag001\r\n"
    b"To: <sip:+12025550199@127.0.0.1:5060;user=phone>\r\n"
    b"Call-ID: 1-3131@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:sipp@127.0.0.1:5070;transport=udp>\r\n"
    b"P-Asserted-Identity: <sip:+12025550100@127.0.0.1;user=phone>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Supported: timer\r\n"
    b"User-Agent: dialer/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 129\r\n\r\n"
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def timeit(prepare: Callable[[int], Callable[[], None]], n: int, rounds: int = 5) -> float:
    """Best µs per item over ``rounds`` runs of what ``prepare(n)`` returns (set-up untimed)."""
    best = float("inf")
    for _ in range(rounds):
        run = prepare(n)
        gc.collect()
        t0 = time.perf_counter_ns()
        run()
        best = min(best, (time.perf_counter_ns() - t0) / n / 1000)
    return best


def engine() -> ProxyEngine:
    d = SideConfig(name=Side.DIALER, host="127.0.0.1", port=5060, advertise_host="127.0.0.1",
                   advertise_port=5060, next_hop_host="127.0.0.1", next_hop_port=5082,
                   allow_any_source=True)
    c = SideConfig(name=Side.CARRIER, host="127.0.0.1", port=5062, advertise_host="127.0.0.1",
                   advertise_port=5062, next_hop_host="127.0.0.1", next_hop_port=5080,
                   allow_any_source=True)
    services = Services(dialer_sources=SourceFilter((), allow_any=True),
                        carrier_sources=SourceFilter((), allow_any=True))
    return ProxyEngine(EngineConfig(dialer=d, carrier=c, max_transactions=10**7), services,
                       rng=os.urandom)


def bench_parse(n: int) -> Callable[[], None]:
    cache = ParseCache()  # as the engine holds one

    def run() -> None:
        for _ in range(n):
            parse_message(INVITE, cache=cache)
    return run


def bench_parse_edit_serialise(n: int) -> Callable[[], None]:
    cache = ParseCache()

    def run() -> None:
        for _ in range(n):
            msg = parse_message(INVITE, cache=cache)
            msg.replace_header(msg.index["max-forwards"][0], b"Max-Forwards: 69\r\n")
            msg.prepend_header(b"Record-Route: <sip:127.0.0.1:5060;lr>\r\n")
            msg.prepend_header(b"Record-Route: <sip:127.0.0.1:5062;lr>\r\n")
            msg.prepend_header(b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKabcdef.1\r\n")
            msg.serialize()
    return run


def _engine_run(e: ProxyEngine, n: int) -> Callable[[], None]:
    peer = Peer(Side.DIALER, Transport.UDP, "127.0.0.1", 5070)
    datagrams = [INVITE.replace(b"-3131-1-0", b"-3131-%d-0" % i) for i in range(n)]

    def run() -> None:
        for d in datagrams:
            e.receive(d, peer, 1_790_000_000.0)
    return run


def bench_engine_invite(n: int) -> Callable[[], None]:
    return _engine_run(engine(), n)


def signing_engine(tmp: Path) -> ProxyEngine:
    init_dev_pki(tmp, spc="123A")
    e = engine()
    account = Account(name="demo", origid="5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01",
                      sources=("127.0.0.1/32",))
    signer = Signer(SigningIdentity(name="default", key=load_private_key(tmp / "key.pem"),
                                    x5u="https://certs.example/shaken.pem"))
    auth = Authenticator(
        signers={"default": signer},
        inventory=Inventory([NumberBlock(first="12025550100", last="12025550199",
                                         account="demo")]),
        policy=AuthPolicy(), stats=e.stats)
    e.replace(services=dataclasses.replace(e.services, accounts=AccountDirectory([account]),
                                           authenticator=auth))
    return e


def bench_engine_signed_invite(n: int) -> Callable[[], None]:
    return _engine_run(signing_engine(Path(tempfile.mkdtemp())), n)


def bench_raw_es256(n: int) -> Callable[[], None]:
    key = ec.generate_private_key(ec.SECP256R1())
    algorithm = ec.ECDSA(hashes.SHA256())

    def run() -> None:
        for _ in range(n):
            key.sign(b"x" * 300, algorithm)
    return run


def _verifier_with_warm_cache() -> tuple[VerificationService, str, float]:
    from tests.stir_pki import NOW, identity, make_pki, token

    pki = make_pki()
    url = "https://cert.example.org/good.pem"
    t = NOW.timestamp()
    service = VerificationService(checks=Checks(url_policy=UrlPolicy()),
                                  trust=TrustStore([pki.root]), cache_policy=CachePolicy())
    service.fetched(FetchRequest(url=url, kind=FetchKind.X5U),
                    FetchResponse(body=pki.leaves["good"].chain_pem, headers={}), t)
    value = identity(token(pki.leaves["good"], url, iat=int(t)), url)
    return service, value, t


def bench_verify_warm(n: int) -> Callable[[], None]:
    verifier, value, t = _verifier_with_warm_cache()

    def run() -> None:
        for _ in range(n):
            verifier.verify([value], orig="12025550100", dest="12025550199", date=None, now=t)
    return run


def bench_compiled_es256(n: int) -> Callable[[], None]:
    """The compiled core's signer (stir/_es256.c): the whole JWS, each nonce drawn as it signs."""
    sign = jws_signer(ec.generate_private_key(ec.SECP256R1()), compiled=True)
    payload = "x" * 200

    def run() -> None:
        for _ in range(n):
            sign("eyJhbGciOiJFUzI1NiJ9", payload)
    return run


def bench_raw_es256_verify(n: int) -> Callable[[], None]:
    key = ec.generate_private_key(ec.SECP256R1())
    algorithm = ec.ECDSA(hashes.SHA256())
    signature = key.sign(b"x" * 300, algorithm)
    public = key.public_key()

    def run() -> None:
        for _ in range(n):
            public.verify(signature, b"x" * 300, algorithm)
    return run


def openssl_speed() -> tuple[float, float] | None:
    """Signs and verifies per second of `openssl speed ecdsap256` on one core (the physical
    limit beside which ours is read), or None without openssl."""
    try:
        out = subprocess.run(["openssl", "speed", "-seconds", "3", "ecdsap256"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "nistp256" in line:
            fields = line.split()
            return float(fields[-2]), float(fields[-1])
    return None


def main() -> None:
    gc.set_threshold(50_000, 20, 100)  # as the service runs (transport.gc_threshold)
    rows = [
        ("parse INVITE", timeit(bench_parse, 20000)),
        ("parse + edit + serialise INVITE", timeit(bench_parse_edit_serialise, 20000)),
        ("engine: INVITE in -> 100 + forward out", timeit(bench_engine_invite, 20000)),
        ("engine: signed INVITE (parse+attest+sign+edit)",
         timeit(bench_engine_signed_invite, 20000)),
        ("raw ES256 sign (cryptography)", timeit(bench_raw_es256, 20000)),
        *([("ES256 JWS, compiled signer", timeit(bench_compiled_es256, 20000))]
          if compiled_signer_available() else []),
        ("verify Identity, warm cache (all checks)", timeit(bench_verify_warm, 5000)),
        ("raw ES256 verify (cryptography)", timeit(bench_raw_es256_verify, 5000)),
    ]
    speed = openssl_speed()
    if speed is not None:
        rows += [("openssl speed ecdsap256: sign", 1e6 / speed[0]),
                 ("openssl speed ecdsap256: verify", 1e6 / speed[1])]
    for name, us in rows:
        print(f"{name:45s} {us:8.2f} µs/message   {1e6 / us:10.0f} /s")  # noqa: T201


if __name__ == "__main__":
    main()
