"""The Trust Center's credential (pure parts): sessions, CSRF tokens, login throttling."""

from __future__ import annotations

from stirshaken_proxy.io.trust_center import (
    LOGIN_WINDOW,
    MAX_LOGIN_FAILURES,
    AdminAuth,
    AdminCredential,
)

CRED = AdminCredential(user="admin", password="right-password")


def test_login_gives_a_session_wrong_credentials_none() -> None:
    auth = AdminAuth(CRED)
    assert auth.login("admin", "wrong", 0.0, "a") is None
    assert auth.login("root", "right-password", 0.0, "a") is None
    token = auth.login("admin", "right-password", 0.0, "a")
    assert token is not None and len(token) >= 40
    assert AdminAuth(None).login("admin", "right-password", 0.0) is None  # none configured


def test_failed_logins_from_one_address_wait_a_while() -> None:
    auth = AdminAuth(CRED)
    for i in range(MAX_LOGIN_FAILURES):
        assert auth.login("admin", f"guess-{i}", 10.0 + i, "127.0.0.9") is None
    assert auth.throttled("127.0.0.9", 20.0)
    # Even the right password waits, from that address only, until the window passes.
    assert auth.login("admin", "right-password", 20.0, "127.0.0.9") is None
    assert auth.login("admin", "right-password", 20.0, "127.0.0.8") is not None
    later = 20.0 + LOGIN_WINDOW + 1
    assert not auth.throttled("127.0.0.9", later)
    assert auth.login("admin", "right-password", later, "127.0.0.9") is not None
