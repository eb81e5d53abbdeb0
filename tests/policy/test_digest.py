"""Digest authentication, pure: RFC 7616's worked example, nonces bound to the call and to
time, replays, failures and bans (clock passed in)."""

from __future__ import annotations

import pytest

from stirshaken_proxy.policy.digest import (
    Authorized,
    Banned,
    Challenge,
    Credential,
    DigestAuth,
    DigestConfig,
    ha1,
    parse_digest,
    response,
)


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_example(algorithm: str, expected: str) -> None:
    """RFC 7616 §3.9.1 (the same computation as SIP's, RFC 8760 §2.2)."""
    got = response(algorithm, ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life"),
                   nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc="00000001",
                   cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", method="GET",
                   uri="/dir/index.html")
    assert got == expected


@pytest.mark.parametrize(("value", "parsed"), [
    ('Digest username="a", realm="r", nonce="n,1", qop=auth, nc=00000001',
     {"username": "a", "realm": "r", "nonce": "n,1", "qop": "auth", "nc": "00000001"}),
    ('digest username="a\\"b"', {"username": 'a"b'}),
    ('Basic YWxhZGRpbjpvcGVuc2VzYW1l', None),
    ('Digest username="a", username="b"', None),  # a parameter twice
    ('Digest username="unterminated', None),
    ('Digest username="' + "x" * 2000 + '"', None),
])
def test_parse_digest(value: str, parsed: dict[str, str] | None) -> None:
    assert parse_digest(value) == parsed


REALM = "proxy.test"
URI = "sip:+12025550199@127.0.0.1"
CALL = "call-1@dialer"


def auth(**kw: object) -> DigestAuth:
    config = DigestConfig(realm=REALM, **kw)  # type: ignore[arg-type]
    cred = Credential.from_password(username="dialer1", account="demo", realm=REALM,
                                    password="s3cret-pass")
    return DigestAuth(config, secret=b"k" * 32, credentials={"dialer1": cred})


def answer(nonce: str, *, password: str = "s3cret-pass", algorithm: str = "SHA-256",
           nc: str = "00000001", uri: str = URI, method: str = "INVITE",
           realm: str = REALM) -> str:
    digest = response(algorithm, ha1(algorithm, "dialer1", realm, password), nonce=nonce,
                      nc=nc, cnonce="c0ffee", method=method, uri=uri)
    return (f'Digest username="dialer1", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{digest}", algorithm={algorithm}, cnonce="c0ffee", qop=auth, nc={nc}')


def nonce_of(d: DigestAuth, now: float, call: str = CALL) -> str:
    header = d.challenge_headers(call, now)[0].decode()
    return header.split('nonce="')[1].split('"')[0]


def check(d: DigestAuth, value: str | None, now: float, *, call: str = CALL,
          host: str = "127.0.0.1", method: str = "INVITE") -> object:
    values = [] if value is None else [(3, value)]
    return d.check(method=method, request_uri=URI, call_id=call, authorizations=values,
                   host=host, now=now)


def test_challenges_name_sha256_first_then_md5() -> None:
    headers = [h.decode() for h in auth().challenge_headers(CALL, 100.0)]
    assert [h.split("algorithm=")[1].split(",")[0] for h in headers] == ["SHA-256", "MD5"]
    assert all(h.startswith(f'Proxy-Authenticate: Digest realm="{REALM}", nonce="') and
               'qop="auth"' in h and h.endswith("\r\n") for h in headers)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_right_password_is_authorized_for_its_account(algorithm: str) -> None:
    d = auth()
    got = check(d, answer(nonce_of(d, 100.0), algorithm=algorithm), 101.0)
    assert got == Authorized(account="demo", username="dialer1", header=3)


@pytest.mark.parametrize(("value", "reason"), [
    (None, "no_credentials"),
    ("wrong", "wrong_password"),
    ("other-call", "bad_nonce"),  # a nonce issued for another Call-ID
    ("forged", "bad_nonce"),
    ("other-uri", "uri_mismatch"),
    ("other-realm", "no_credentials"),  # credentials for someone else's realm
    ("no-qop", "malformed"),
])
def test_refused_answers_are_challenged_again(value: str | None, reason: str) -> None:
    d = auth()
    nonce = nonce_of(d, 100.0)
    text = {None: None, "wrong": answer(nonce, password="guess-guess"),
            "other-call": answer(nonce_of(d, 100.0, call="another")),
            "forged": answer(nonce.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAAAA"),
            "other-uri": answer(nonce, uri="sip:+12025550100@127.0.0.1"),
            "other-realm": answer(nonce, realm="elsewhere"),
            "no-qop": answer(nonce).replace(", qop=auth", "")}[value]
    assert check(d, text, 101.0) == Challenge(reason=reason)


def test_expired_nonce_is_stale() -> None:
    d = auth(nonce_lifetime=300.0)
    nonce = nonce_of(d, 100.0)
    assert check(d, answer(nonce), 400.5) == Challenge(reason="stale", stale=True)
    assert 'stale=true' in d.challenge_headers(CALL, 400.5, stale=True)[0].decode()


def test_replayed_answer_is_refused_a_higher_count_accepted() -> None:
    d = auth()
    nonce = nonce_of(d, 100.0)
    assert isinstance(check(d, answer(nonce), 101.0), Authorized)
    assert check(d, answer(nonce), 102.0) == Challenge(reason="replay")
    assert isinstance(check(d, answer(nonce, nc="00000002"), 103.0), Authorized)
    assert check(d, answer(nonce, nc="00000002"), 104.0) == Challenge(reason="replay")


def test_repeated_failures_ban_the_source_for_a_while() -> None:
    d = auth(max_failures=3, failure_window=60.0, ban_seconds=300.0)
    nonce = nonce_of(d, 100.0)
    bad = answer(nonce, password="guess-guess")
    assert check(d, bad, 101.0) == Challenge(reason="wrong_password")
    assert check(d, bad, 102.0) == Challenge(reason="wrong_password")
    assert check(d, bad, 103.0) == Banned(reason="wrong_password")
    # Banned: even the right password is refused, from that address only, until it lapses.
    assert check(d, answer(nonce), 104.0) == Banned()
    assert isinstance(check(d, answer(nonce), 104.0, host="127.0.0.3"), Authorized)
    good = answer(nonce_of(d, 403.5), nc="00000001")
    assert isinstance(check(d, good, 403.5), Authorized)


def test_failures_outside_the_window_do_not_add_up() -> None:
    d = auth(max_failures=2, failure_window=10.0)
    bad = answer(nonce_of(d, 100.0), password="guess-guess")
    assert check(d, bad, 101.0) == Challenge(reason="wrong_password")
    assert check(d, bad, 112.0) == Challenge(reason="wrong_password")


def test_admitted_calls_expire_and_end_shortly_after_bye() -> None:
    d = auth(dialog_lifetime=3600.0)
    d.admit_call(CALL, 100.0)
    assert d.call_admitted(CALL, 3699.0) and not d.call_admitted(CALL, 3701.0)
    d.call_ended(CALL, 200.0)
    assert d.call_admitted(CALL, 231.0) and not d.call_admitted(CALL, 233.0)
    assert not d.call_admitted("never", 100.0)
