"""The SIP redirect front end: the STI service for an SBC that already routes the calls (pure).

The SBC sends us the INVITE and we answer it, as a redirect server (RFC 3261 §8.3): a
``302 Moved Temporarily`` whose Contact is where the call goes (its Request-URI, or the
configured route) and which carries what the SBC copies into the INVITE it sends on:

- signing (an INVITE from an account's source): the ``Identity`` header, a ``Date`` when the
  INVITE had none (``iat`` carries it), and with local presence the chosen caller ID as
  ``P-Asserted-Identity``;
- verification (an INVITE from a source marked for it): ``P-Asserted-Identity`` with
  ``verstat`` and ``P-Attestation-Indicator``, or the RFC 8224 code when policy rejects.

Same accounts, inventory, attestation, number health and local presence as the in-path proxy:
the ``Services`` bundle. There is no dialog state: the INVITE server transaction is reduced
to what a redirect server needs (§17.2.1): a retransmitted INVITE gets the same answer from a
short cache, the ACK for a 302 is absorbed, and an INVITE waiting for a certificate fetch gets
a 100 Trying once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..policy.accounts import Account
from ..sip.errors import SipError
from ..sip.message import ParseCache, SipMessage, make_response, parse_message
from ..sip.numbers import TnMemo
from ..sip.transport import Peer, Send
from ..sip.uri import parse_uri
from ..stats import Stats
from ..stir.signing import Picked, Refusal, Signed
from ..stir.verification import NeedsCredentials
from .actions import Action, Fetch
from .flood import FloodConfig, FloodGuard
from .services import Services
from .sip_sti import (
    BadDate,
    BadReason,
    DateLines,
    call_facts,
    identity_line,
    is_initial_invite,
    refusal_headers,
    rejection,
    strip_untrusted,
    verdict_lines,
    verify_message,
    with_verstat,
)
from .sources import SourceFilter

log = logging.getLogger(__name__)

ALLOW = b"Allow: INVITE, ACK, CANCEL, OPTIONS\r\n"


@dataclass(frozen=True, kw_only=True)
class RedirectConfig:
    host: str
    port: int
    route: str = ""  # host:port the Contact points to instead of the Request-URI's
    verify_sources: tuple[str, ...] = ()  # CIDRs whose INVITEs are verified
    max_message_size: int = 65535
    max_parked: int = 10_000  # INVITEs waiting for a certificate fetch; past this, 503
    answer_cache_seconds: float = 32.0  # 64*T1: how long a retransmission gets the same answer
    answer_cache_entries: int = 100_000
    retry_after: int = 5
    server_name: str = "stirshaken-proxy"
    flood: FloodConfig = field(default_factory=FloodConfig)


class _Waiting:
    """An INVITE waiting for credentials to be fetched."""

    __slots__ = ("key", "msg", "source", "urls")

    def __init__(self, msg: SipMessage, source: Peer, key: tuple[object, ...],
                 urls: tuple[str, ...]) -> None:
        self.msg = msg
        self.source = source
        self.key = key
        self.urls = set(urls)


class RedirectEngine:
    """``receive(data, peer, now)`` and ``credentials_ready(urls, now)`` return actions."""

    def __init__(self, config: RedirectConfig, services: Services, *,
                 rng: Callable[[int], bytes], stats: Stats | None = None) -> None:
        self.config = config
        self.services = services
        self.stats: Stats = stats if stats is not None else Stats()
        self.flood = FloodGuard(config.flood)
        # The wall clock for what is signed (iat, the Date check, freshness): as ProxyEngine's.
        self.wall_clock: Callable[[], float] | None = None
        self.draining = False
        self._verify_sources = SourceFilter(config.verify_sources)
        self._tag = rng(4).hex()
        self._server = b"Server: " + config.server_name.encode() + b"\r\n"
        self._cache = ParseCache()
        self._dates = DateLines()
        self._tns = TnMemo()  # calling numbers of the From/PAI values seen
        # (branch, sent-by, source) of each INVITE answered lately -> (expiry, the answer)
        self._answers: OrderedDict[tuple[object, ...], tuple[float, bytes]] = OrderedDict()
        self._pending: dict[tuple[object, ...], _Waiting] = {}  # INVITEs waiting, by key
        self._waiting: dict[str, list[_Waiting]] = {}  # x5u URL -> INVITEs waiting for it

    def replace(self, *, services: Services, config: RedirectConfig | None = None) -> None:
        """A reload: new INVITEs meet the new bundle (the listen address stays)."""
        if config is not None:
            self.config = dataclasses.replace(config, host=self.config.host,
                                              port=self.config.port)
            self.flood.config = config.flood
            self._verify_sources = SourceFilter(config.verify_sources)
        self.services = services

    @property
    def parked(self) -> int:
        return len(self._pending)

    # A redirect server keeps no transaction timers (its answers expire from the cache).
    def on_timers(self, now: float) -> list[Action]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def earliest_deadline(self) -> float | None:
        return None

    # -- input --------------------------------------------------------------------------
    def receive(self, data: bytes, source: Peer, now: float) -> list[Action]:
        out: list[Action] = []
        try:
            msg = parse_message(data, max_size=self.config.max_message_size,
                                stream=source.reliable, cache=self._cache)
        except SipError as exc:
            self._bad(exc, source, out)
            return out
        if not msg.is_request:
            self.stats[("sip_dropped", "response_to_redirect")] += 1
            return out
        self.stats[("sip_requests", source.side, msg.method)] += 1
        try:
            self._request(msg, source, now, out)
        except SipError as exc:
            exc.message = msg
            self._bad(exc, source, out)
        return out

    def number_picked(self, token: int, picked: Picked, now: float) -> list[Action]:
        """Never asked for: the redirect server picks caller IDs from its replica."""
        return []

    def transport_failed(self, peer: Peer, now: float) -> list[Action]:
        """Nothing to do: the redirect server opens no connections of its own."""
        return []

    def credentials_ready(self, urls: tuple[str, ...], now: float) -> list[Action]:
        """Fetches ended (the verification service has their outcome): answer the INVITEs
        that waited for them."""
        out: list[Action] = []
        for url in urls:
            for waiting in self._waiting.pop(url, ()):
                waiting.urls.discard(url)
                if waiting.urls or self._pending.get(waiting.key) is not waiting:
                    continue  # still waiting for another, or cancelled meanwhile
                del self._pending[waiting.key]
                self._invite(waiting.msg, waiting.source, waiting.key, now, out,
                             self.services.accounts.by_source(waiting.source.host))
        return out

    def _bad(self, exc: SipError, source: Peer, out: list[Action]) -> None:
        self.stats[("sip_malformed",)] += 1
        msg = exc.message
        if exc.status is None or msg is None or not msg.is_request or msg.method == "ACK" \
                or not msg.has("via") or not msg.has("cseq"):
            self.stats[("sip_dropped", "unanswerable")] += 1
            return
        out.append(Send(make_response(msg, exc.status, to_tag=self._tag,
                                      extra=(self._server,)), source))

    # -- requests ---------------------------------------------------------------------------
    def _key(self, msg: SipMessage, source: Peer) -> tuple[object, ...]:
        via = msg.top_via()
        if via.rfc3261_branch:
            return (via.branch, via.host, via.port, source)
        return ("2543", msg.call_id, msg.cseq, via.text, source)

    def _request(self, msg: SipMessage, source: Peer, now: float, out: list[Action]) -> None:
        method = msg.method
        account = self.services.accounts.by_source(source.host)
        trusted = account is not None or self._verify_sources.allows(source.host)
        if not trusted and not self.flood.allow(source.host, now):
            self.stats[("sip_dropped", "flood")] += 1
            return
        if method == "ACK":
            self.stats[("redirect_acks_absorbed",)] += 1  # for our final answer: hop by hop
            return
        if not trusted:
            self.stats[("sip_refused_sources", source.side)] += 1
            out.append(Send(self._respond(msg, 403, "Forbidden"), source))
            return
        if method == "OPTIONS":  # keepalive probes (a dispatcher's)
            out.append(Send(self._respond(msg, 200, extra=(ALLOW,)), source))
            return
        if method == "CANCEL":
            self._cancel(msg, source, out)
            return
        if method != "INVITE":
            out.append(Send(self._respond(msg, 405, extra=(ALLOW,)), source))
            return
        key = self._key(msg, source)
        answer = self._answered(key, now)
        if answer is not None:
            self.stats[("sip_retransmissions_absorbed",)] += 1
            out.append(Send(answer, source))
            return
        if key in self._pending:
            self.stats[("sip_retransmissions_absorbed",)] += 1
            out.append(Send(self._respond(msg, 100), source))
            return
        if self.draining:
            self.stats[("sip_overload_responses",)] += 1
            out.append(Send(self._respond(msg, 503, extra=(
                b"Retry-After: %d\r\n" % self.config.retry_after,)), source))
            return
        mf = msg.get("max-forwards")
        if mf is not None and int(mf) == 0:
            self._answer(msg, source, key, 483, None, (), now, out)
            return
        scheme = msg.uri.partition(":")[0].lower()
        if scheme not in ("sip", "sips", "tel"):
            self._answer(msg, source, key, 416, None, (), now, out)
            return
        self._invite(msg, source, key, now, out, account)

    def _invite(self, msg: SipMessage, source: Peer, key: tuple[object, ...], now: float,
                out: list[Action], account: Account | None) -> None:
        services = self.services
        verify = self._verify_sources.allows(source.host) and (
            account is None or msg.has("identity"))
        if verify and services.verification is not None and is_initial_invite(msg):
            self._verify(msg, source, key, now, out)
        else:
            self._sign(msg, source, key, now, out, account)

    def _sign(self, msg: SipMessage, source: Peer, key: tuple[object, ...], now: float,
              out: list[Action], account: Account | None) -> None:
        auth = self.services.authenticator
        strip_untrusted(msg, account, self.stats)
        contact = self._contact(msg)
        if auth is None or not is_initial_invite(msg):
            self._answer(msg, source, key, 302, None, (contact,), now, out)
            return
        facts = call_facts(msg, account, auth.policy, self._tns)
        if isinstance(facts, BadDate):
            self.stats[("sign_refused", "bad_date")] += 1
            self._answer(msg, source, key, 400, "Bad Request (Date)", (), now, out)
            return
        if isinstance(facts, BadReason):
            self.stats[("sign_refused", "bad_call_reason")] += 1
            self._answer(msg, source, key, 400, "Bad Call Reason", (), now, out)
            return
        outcome = auth.sign(facts, now if self.wall_clock is None else self.wall_clock())
        if isinstance(outcome, Refusal):
            self._answer(msg, source, key, outcome.status, outcome.phrase,
                         refusal_headers(outcome), now, out)
            return
        headers = [contact]
        if isinstance(outcome, Signed):
            headers.append(identity_line(outcome))
            headers.extend(b"Identity: " + v.encode() + b"\r\n" for v in outcome.more)
            if facts.date is None:
                headers.append(self._dates.line(outcome.iat))
            if outcome.substitution is not None:
                host = parse_uri(msg.uri).host or self.config.host
                headers.append(b"P-Asserted-Identity: <sip:+" + outcome.orig.encode()
                               + b"@" + host.encode("latin-1") + b";user=phone>\r\n")
            out.extend(outcome.events)
            self.stats[("redirect_answers", "signed")] += 1
        else:
            self.stats[("redirect_answers", "unsigned")] += 1
        self._answer(msg, source, key, 302, None, tuple(headers), now, out)

    def _verify(self, msg: SipMessage, source: Peer, key: tuple[object, ...], now: float,
                out: list[Action]) -> None:
        services = self.services
        verification = services.verification
        assert verification is not None
        policy = services.verify_policy
        verdict = verify_message(msg, verification, policy,
                                 now if self.wall_clock is None else self.wall_clock())
        if isinstance(verdict, NeedsCredentials):
            if len(self._pending) >= self.config.max_parked:
                self.stats[("sip_overload_responses",)] += 1
                self._answer(msg, source, key, 503, None, (
                    b"Retry-After: %d\r\n" % self.config.retry_after,), now, out)
                return
            waiting = _Waiting(msg, source, key, verdict.urls)
            self._pending[key] = waiting
            for url in verdict.urls:
                self._waiting.setdefault(url, []).append(waiting)
            out.extend(Fetch(r) for r in verdict.fetch)
            out.append(Send(self._respond(msg, 100), source))
            return
        if policy.rejects(verdict):
            code, phrase, reason = rejection(verdict)
            self._answer(msg, source, key, code, phrase, (reason,), now, out)
            self.stats[("redirect_answers", "rejected")] += 1
            return
        identity = msg.get("p-asserted-identity") or msg.get("from") or ""
        headers = [self._contact(msg), b"P-Asserted-Identity: "
                   + with_verstat(identity.split(";tag=")[0], verdict.verstat.value)
                   .encode("latin-1") + b"\r\n",
                   *verdict_lines(verdict, attestation_header=policy.attestation_header)]
        self.stats[("redirect_answers", "verified")] += 1
        self._answer(msg, source, key, 302, None, tuple(headers), now, out)

    def _cancel(self, msg: SipMessage, source: Peer, out: list[Action]) -> None:
        """CANCEL (§9.2): an INVITE still waiting ends with 487; one already answered has
        nothing left to cancel."""
        key = self._key(msg, source)
        waiting = self._pending.pop(key, None)
        if waiting is None:
            status = 200 if key in self._answers else 481
            out.append(Send(self._respond(msg, status), source))
            return
        out.append(Send(self._respond(msg, 200), source))
        out.append(Send(self._respond(waiting.msg, 487), source))

    # -- answers ----------------------------------------------------------------------------
    def _contact(self, msg: SipMessage) -> bytes:
        """Where the call goes: the Request-URI, or the same URI at the configured route."""
        uri = msg.uri
        route = self.config.route
        if route and parse_uri(uri).is_sip:
            scheme, _, rest = uri.partition(":")
            user, at, hostport = rest.rpartition("@")
            ends = [i for i in (hostport.find(";"), hostport.find("?")) if i >= 0]
            tail = hostport[min(ends):] if ends else ""
            uri = f"{scheme}:{user}{at}{route}{tail}"
        return b"Contact: <" + uri.encode("latin-1") + b">\r\n"

    def _respond(self, msg: SipMessage, status: int, reason: str | None = None,
                 extra: tuple[bytes, ...] = ()) -> bytes:
        return make_response(msg, status, reason, to_tag=self._tag, extra=(*extra, self._server))

    def _answer(self, msg: SipMessage, source: Peer, key: tuple[object, ...], status: int,
                reason: str | None, headers: tuple[bytes, ...], now: float,
                out: list[Action]) -> None:
        """A final answer, kept for the INVITE's retransmissions."""
        data = self._respond(msg, status, reason, headers)
        if status != 302:
            self.stats[("sip_rejected", str(status))] += 1
        answers = self._answers
        answers[key] = (now + self.config.answer_cache_seconds, data)
        while answers:
            first = next(iter(answers.values()))
            if first[0] > now and len(answers) <= self.config.answer_cache_entries:
                break
            answers.popitem(last=False)
        out.append(Send(data, source))

    def _answered(self, key: tuple[object, ...], now: float) -> bytes | None:
        entry = self._answers.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]
