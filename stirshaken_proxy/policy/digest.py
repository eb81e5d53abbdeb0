"""SIP digest authentication of dialers (RFC 3261 §22.3, RFC 8760: SHA-256 and MD5 with
qop=auth), pure: the engine hands in the request's facts and ``now``.

Nonces are stateless and bound to the Call-ID: ``<issued hex>.<HMAC(secret, issued, Call-ID)>``,
valid for ``nonce_lifetime``. A request's Call-ID decides the worker that handles it, so the
worker that issued a nonce is the one that sees its answer, and keeps the highest nonce count
(nc) it accepted for it: an answer with a count not above it is a replay. Failures are
counted per source address; past ``max_failures`` in ``failure_window`` the address is
refused for ``ban_seconds``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

ALGORITHMS = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]+)\s*(?:,|$)')
_MAX_VALUE = 1024  # a parameter longer than this is not a credential
_MAX_TRACKED = 100_000  # nonces, sources: past this the oldest are forgotten
_V = TypeVar("_V")


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), what the store keeps instead of the password."""
    return ALGORITHMS[algorithm](f"{username}:{realm}:{password}".encode()).hexdigest()


def response(algorithm: str, ha1_hex: str, *, nonce: str, nc: str, cnonce: str, method: str,
             uri: str) -> str:
    """request-digest with qop=auth (RFC 7616 §3.4.1, RFC 8760 §2.2)."""
    h = ALGORITHMS[algorithm]
    ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    return h(f"{ha1_hex}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Credential:
    """A dialer's credentials: HA1 digests only (per algorithm), and the account they sign
    as."""

    username: str
    account: str
    realm: str
    ha1_sha256: str
    ha1_md5: str

    @classmethod
    def from_password(cls, *, username: str, account: str, realm: str,
                      password: str) -> Credential:
        return cls(username=username, account=account, realm=realm,
                   ha1_sha256=ha1("SHA-256", username, realm, password),
                   ha1_md5=ha1("MD5", username, realm, password))

    def ha1(self, algorithm: str) -> str:
        return self.ha1_sha256 if algorithm == "SHA-256" else self.ha1_md5


@dataclass(frozen=True, kw_only=True)
class DigestConfig:
    realm: str = "stirshaken-proxy"
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")  # challenges in this order (RFC 8760)
    nonce_lifetime: float = 300.0
    max_failures: int = 10
    failure_window: float = 60.0
    ban_seconds: float = 300.0
    dialog_lifetime: float = 43_200.0  # in-dialog requests of an authenticated call


@dataclass(frozen=True, kw_only=True)
class Authorized:
    account: str
    username: str
    header: int  # index of the Proxy-Authorization header for our realm (removed on forward)


@dataclass(frozen=True, kw_only=True)
class Challenge:
    """Answer 407 with fresh challenges; ``reason`` is counted."""

    reason: str
    stale: bool = False


@dataclass(frozen=True, kw_only=True)
class Banned:
    """The source failed too often: answer 403."""

    reason: str = "banned"


def parse_digest(value: str) -> dict[str, str] | None:
    """The parameters of a `Digest ...` credentials value, or None if it is not one."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            return None
        name, raw = m.group(1).lower(), m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if len(raw) > _MAX_VALUE or name in params:
            return None
        params[name] = raw
        pos = m.end()
    return params


class DigestAuth:
    """Challenges and checks; keeps replay and failure state across reloads (the
    credentials are replaced by the store's sync)."""

    def __init__(self, config: DigestConfig, *, secret: bytes,
                 credentials: dict[str, Credential] | None = None) -> None:
        self.config = config
        self.secret = secret
        self.credentials = credentials or {}
        self._nc: OrderedDict[str, int] = OrderedDict()  # nonce -> highest count accepted
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._banned: dict[str, float] = {}
        self._calls: OrderedDict[str, float] = OrderedDict()  # Call-ID -> admitted until
        # Tells the other workers (and they this one) of each failure and success, so that
        # an address has max_failures tries against the whole service, not against each
        # worker its Call-IDs happen to land on: ("failed" | "passed", host, time).
        self.publish: Callable[[tuple[str, str, float]], None] | None = None

    def set_credentials(self, credentials: list[Credential]) -> None:
        self.credentials = {c.username: c for c in credentials}

    # -- nonces -----------------------------------------------------------------------------
    def _mac(self, issued: str, call_id: str) -> str:
        mac = hmac.new(self.secret, f"{issued}.{call_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def nonce(self, call_id: str, now: float) -> str:
        issued = f"{int(now * 1000):x}"
        return f"{issued}.{self._mac(issued, call_id)}"

    def challenge_headers(self, call_id: str, now: float, *, stale: bool = False
                          ) -> tuple[bytes, ...]:
        """One Proxy-Authenticate per algorithm, the preferred first (RFC 8760 §2.4)."""
        nonce = self.nonce(call_id, now)
        extra = ", stale=true" if stale else ""
        return tuple(
            (f'Proxy-Authenticate: Digest realm="{self.config.realm}", nonce="{nonce}", '
             f'algorithm={alg}, qop="auth"{extra}\r\n').encode()
            for alg in self.config.algorithms)

    # -- checking ---------------------------------------------------------------------------
    def banned(self, host: str, now: float) -> bool:
        until = self._banned.get(host)
        if until is None:
            return False
        if until <= now:
            del self._banned[host]
            return False
        return True

    def check(self, *, method: str, request_uri: str, call_id: str,
              authorizations: list[tuple[int, str]], host: str,
              now: float) -> Authorized | Challenge | Banned:
        """Check the request's Proxy-Authorization values (header index, value) meant for
        our realm."""
        if self.banned(host, now):
            return Banned()
        ours = None
        for index, value in authorizations:
            params = parse_digest(value)
            if params is not None and params.get("realm") == self.config.realm:
                ours = (index, params)
                break
        if ours is None:
            return Challenge(reason="no_credentials")
        index, p = ours
        algorithm = p.get("algorithm", "MD5")
        algorithm = next((a for a in self.config.algorithms if a.lower() == algorithm.lower()),
                         "")
        nonce = p.get("nonce", "")
        issued, _, mac = nonce.partition(".")
        if not algorithm or p.get("qop") != "auth" or not p.get("cnonce") \
                or not re.fullmatch(r"[0-9a-fA-F]{8}", p.get("nc", "")):
            return self._failed(host, now, "malformed")
        if not re.fullmatch(r"[0-9a-f]{1,16}", issued) or not hmac.compare_digest(
                mac, self._mac(issued, call_id)):
            return self._failed(host, now, "bad_nonce")  # forged, or another call's
        age = now - int(issued, 16) / 1000
        if age > self.config.nonce_lifetime or age < -5.0:
            return Challenge(reason="stale", stale=True)
        if p.get("uri") != request_uri:
            return self._failed(host, now, "uri_mismatch")
        cred = self.credentials.get(p.get("username", ""))
        if cred is None or cred.realm != self.config.realm:
            return self._failed(host, now, "unknown_user")
        expected = response(algorithm, cred.ha1(algorithm), nonce=nonce, nc=p["nc"],
                            cnonce=p["cnonce"], method=method, uri=p["uri"])
        if not hmac.compare_digest(expected, p.get("response", "").lower()):
            return self._failed(host, now, "wrong_password")
        nc = int(p["nc"], 16)
        if nc <= self._nc.get(nonce, 0):
            return self._failed(host, now, "replay")
        self._remember(self._nc, nonce, nc)
        if self._failures.pop(host, None) is not None and self.publish is not None:
            self.publish(("passed", host, now))
        return Authorized(account=cred.account, username=cred.username, header=index)

    def _failed(self, host: str, now: float, reason: str) -> Challenge | Banned:
        if self.publish is not None:
            self.publish(("failed", host, now))
        if self._count_failure(host, now):
            return Banned(reason=reason)
        return Challenge(reason=reason)

    def shared(self, event: tuple[str, str, float]) -> None:
        """A failure or success another worker saw (``publish`` there)."""
        kind, host, when = event
        if kind == "failed":
            self._count_failure(host, when)
        elif kind == "passed":
            self._failures.pop(host, None)

    def _count_failure(self, host: str, now: float) -> bool:
        """Counts a failure; True when it bans the address."""
        if self.banned(host, now):
            return True
        count, since = self._failures.get(host, (0, now))
        if now - since > self.config.failure_window:
            count, since = 0, now
        count += 1
        self._remember(self._failures, host, (count, since))
        if count >= self.config.max_failures:
            self._failures.pop(host, None)
            if len(self._banned) >= _MAX_TRACKED:
                self._banned.clear()
            self._banned[host] = now + self.config.ban_seconds
            return True
        return False

    # -- calls admitted by credentials ------------------------------------------------------
    def admit_call(self, call_id: str, now: float) -> None:
        self._remember(self._calls, call_id, now + self.config.dialog_lifetime)

    def call_admitted(self, call_id: str, now: float) -> bool:
        until = self._calls.get(call_id)
        return until is not None and until > now

    def call_ended(self, call_id: str, now: float) -> None:
        """A BYE: the call's requests are admitted a little longer (retransmissions, the
        BYE crossing another request), not for the rest of the dialog lifetime."""
        if call_id in self._calls:
            self._calls[call_id] = min(self._calls[call_id], now + 32.0)

    @staticmethod
    def _remember(table: OrderedDict[str, _V], key: str, value: _V) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _MAX_TRACKED:
            table.popitem(last=False)


__all__ = ["ALGORITHMS", "Authorized", "Banned", "Challenge", "Credential", "DigestAuth",
           "DigestConfig", "ha1", "parse_digest", "response"]
