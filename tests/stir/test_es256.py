"""The compiled ES256 signer (stir/_es256.c): signatures that `cryptography` verifies, a
nonce drawn for each signature, a forked child and its parent never signing with one nonce,
and the same PASSporTs as the reference signer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stirshaken_proxy.sip import message
from stirshaken_proxy.stir import passport
from stirshaken_proxy.stir.passport import (
    Attestation,
    Signer,
    SigningIdentity,
    b64url,
    b64url_decode,
    decode_passport,
    jws_signer,
    raw_to_der,
)

compiled = pytest.mark.skipif(not passport.compiled_signer_available(),
                              reason="the compiled ES256 signer is not built in this install")
ES256 = ec.ECDSA(hashes.SHA256())
ROOT = Path(__file__).resolve().parents[2]


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _verifies(key: ec.EllipticCurvePrivateKey, data: bytes, raw: bytes) -> bool:
    try:
        key.public_key().verify(raw_to_der(raw), data, ES256)
    except InvalidSignature:
        return False
    return True


def test_the_compiled_signer_is_built_where_the_compiled_core_is() -> None:
    # scripts/setup.sh installs OpenSSL's headers (libssl-dev) beside gcc.
    if os.environ.get("STIRSHAKEN_CORE") == "python" or not message.compiled_available():
        pytest.skip("a run without the compiled core")
    assert passport.compiled_signer_available()


@compiled
@pytest.mark.parametrize("data", [b"", b"a", b"x" * 300, bytes(range(256)) * 40])
def test_signatures_verify_with_cryptography(data: bytes) -> None:
    from stirshaken_proxy.stir import _es256

    key = ec.generate_private_key(ec.SECP256R1())
    raw = _es256.Signer(_der(key)).sign(data)
    assert len(raw) == 64
    assert _verifies(key, data, raw)
    assert not _verifies(key, data + b"!", raw)
    assert not _verifies(ec.generate_private_key(ec.SECP256R1()), data, raw)


@compiled
def test_each_signature_draws_its_own_nonce() -> None:
    """The same message signed 400 times: 400 different r = (k*G).x (a nonce is drawn as
    the signature is made, never taken from a pool), each signature valid."""
    from stirshaken_proxy.stir import _es256

    key = ec.generate_private_key(ec.SECP256R1())
    signer = _es256.Signer(_der(key))
    seen = set()
    for _ in range(400):
        raw = signer.sign(b"the same INVITE")
        assert _verifies(key, b"the same INVITE", raw)
        seen.add(raw[:32])
    assert len(seen) == 400


@compiled
def test_a_forked_child_and_its_parent_never_share_a_nonce() -> None:
    """A signer used before a fork: the child's signatures and the parent's after the fork
    (the same messages on both sides, and others) have no r in common, and all verify. The
    nonces mix the digest and the key with the DRBG's output, and none is drawn ahead for
    the child to inherit."""
    from stirshaken_proxy.stir import _es256

    key = ec.generate_private_key(ec.SECP256R1())
    signer = _es256.Signer(_der(key))
    signer.sign(b"before the fork")
    messages = [b"call %d" % n for n in range(50)] + [b"child %d" % n for n in range(50)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its signatures to the parent, then leave at once
        try:
            os.write(write, b"".join(signer.sign(m) for m in messages))
        finally:
            os._exit(0)
    os.close(write)
    report = b""
    while chunk := os.read(read, 65536):
        report += chunk
    os.close(read)
    os.waitpid(pid, 0)
    children = [report[i:i + 64] for i in range(0, len(report), 64)]
    assert len(children) == len(messages)
    assert all(_verifies(key, m, raw) for m, raw in zip(messages, children, strict=True))
    parents = [signer.sign(m) for m in messages[:50]] + [signer.sign(b"parent %d" % n)
                                                         for n in range(50)]
    assert not {raw[:32] for raw in children} & {raw[:32] for raw in parents}


@compiled
@pytest.mark.parametrize("der", [
    b"",
    b"not a key",
    _der(ec.generate_private_key(ec.SECP384R1())),  # ES256 is P-256 only
])
def test_what_is_not_a_p256_key_is_refused(der: bytes) -> None:
    from stirshaken_proxy.stir import _es256

    with pytest.raises(ValueError, match="P-256"):
        _es256.Signer(der)


@pytest.mark.parametrize("use_compiled", [
    False, pytest.param(True, marks=compiled)])
def test_both_signers_make_passports_that_verify(use_compiled: bool) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = Signer(SigningIdentity(name="t", key=key, x5u="https://cert.example.org/a.pem"))
    signer._sign_jws = jws_signer(key, compiled=use_compiled)
    token = signer.sign(attest=Attestation.A, orig="12025550100", dest=["12025550199"],
                        iat=1_700_000_000, origid="5f3f3f7a-4c1b-4d1e-9a37-0d2c9b6a1e01")
    decoded = decode_passport(token)
    assert decoded.claims["orig"] == {"tn": "12025550100"}
    assert decoded.verify(key.public_key())
    assert not decoded.verify(ec.generate_private_key(ec.SECP256R1()).public_key())


@pytest.mark.parametrize("header", ["", "eyJhbGciOiJFUzI1NiJ9"])
@pytest.mark.parametrize("payload", ["", "a", "ab", "abc", "abcd", '{"nam":"Caf\u00e9 \u2603"}',
                                     "x" * 5000])
@pytest.mark.parametrize("use_compiled", [False, pytest.param(True, marks=compiled)])
def test_compact_jws_as_rfc_7515_writes_it(header: str, payload: str, use_compiled: bool) -> None:
    """header.payload.signature, each base64url without padding, the payload UTF-8; the
    signature over the first two parts."""
    key = ec.generate_private_key(ec.SECP256R1())
    token = jws_signer(key, compiled=use_compiled)(header, payload)
    head, body, signature = token.split(".")
    assert head == header
    assert body == b64url(payload.encode())
    assert "=" not in token
    assert _verifies(key, f"{head}.{body}".encode(), b64url_decode(signature))


@compiled
def test_a_header_that_is_not_ascii_is_refused() -> None:
    from stirshaken_proxy.stir import _es256

    signer = _es256.Signer(_der(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValueError, match="ASCII"):
        signer.sign_jws("h\u00e9", "{}")
    with pytest.raises(TypeError):
        signer.sign_jws(b"h", "{}")  # type: ignore[arg-type]


def test_the_signer_follows_the_core_in_use() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    before = message.core_in_use()
    try:
        message.use_core("python")
        assert not hasattr(jws_signer(key), "__self__")  # the reference, on cryptography
        if passport.compiled_signer_available() and message.compiled_available():
            from stirshaken_proxy.stir import _es256

            message.use_core("compiled")
            assert isinstance(getattr(jws_signer(key), "__self__", None), _es256.Signer)
    finally:
        message.use_core(before)


ASAN_RUN = """
import importlib.machinery, importlib.util, random, sys
spec = importlib.util.spec_from_file_location(
    "_es256", sys.argv[1], loader=importlib.machinery.ExtensionFileLoader("_es256", sys.argv[1]))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from stirshaken_proxy.stir.passport import b64url, b64url_decode, raw_to_der
key = ec.generate_private_key(ec.SECP256R1())
der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption())
rnd = random.Random(7)
for bad in (b"", der[:40], der[:-1] + b"x", bytes(rnd.randrange(256) for _ in range(200))):
    try:
        module.Signer(bad)
    except ValueError:
        pass
alphabet = "abc{}\\":,0123456789\\u00e9\\u2603\\U0001f600"
verify = key.public_key().verify

def run(signer):
    seen = set()
    for n in range(int(sys.argv[2])):
        payload = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 300)))
        header = b64url(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40))))
        token = signer.sign_jws(header, payload)
        head, body, signature = token.split(".")
        assert head == header and body == b64url(payload.encode())
        raw = b64url_decode(signature)
        verify(raw_to_der(raw), (head + "." + body).encode(), ec.ECDSA(hashes.SHA256()))
        data = payload.encode()
        raw2 = signer.sign(data)
        verify(raw_to_der(raw2), data, ec.ECDSA(hashes.SHA256()))
        seen.update((raw[:32], raw2[:32]))
    return len(seen)

signer = module.Signer(der)
signer.sign(b"x")
signer.__init__(der)  # initialised again: the first key and context go
print("distinct", run(signer))
del signer
"""


@pytest.mark.skipif(not shutil.which("gcc") or not os.path.exists("/usr/include/openssl/ecdsa.h"),
                    reason="gcc or OpenSSL's headers are not installed")
def test_the_compiled_signer_under_address_sanitizer(tmp_path: Path) -> None:
    from tests.sip.test_cores_asan import _libasan, build_sanitized, sanitizer_env

    if _libasan() is None:
        pytest.skip("gcc with libasan is not installed")
    so = tmp_path / "_es256_asan.so"
    build_sanitized(ROOT / "stirshaken_proxy/stir/_es256.c", so, "-lcrypto")
    done = subprocess.run([sys.executable, "-c", ASAN_RUN, str(so), "400"],
                          env=sanitizer_env(own_malloc=True), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "distinct 800"  # every nonce once
