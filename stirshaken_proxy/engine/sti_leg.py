"""The in-path proxy's STI leg: what the proxy engine asks of the STI core for a request it is
about to forward (pure). A dialer-side request is cleaned and, if it is an initial INVITE,
signed; a carrier-side initial INVITE is verified and marked, or answered with the RFC code.
It also keeps the calls it signed (``calls.py``): their health events follow the call's
final response and BYE, and a replaced caller ID is mapped on every message of the call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..sip.message import SipMessage, untracked
from ..sip.numbers import TnMemo
from ..sip.transport import Peer, Side
from ..stats import Stats
from ..stir.signing import CallFacts, NeedsNumber, Picked, Refusal, Signed, Unsigned
from ..stir.verification import NeedsCredentials
from .actions import Action, Fetch, PickNumber
from .calls import CallTable, IdentityMap, TrackedCall, identity_map, map_identities
from .records import RecordFacts
from .services import Services
from .sip_sti import (
    BadDate,
    DateLines,
    call_facts,
    mark_verdict,
    refusal_headers,
    rejection,
    strip_untrusted,
    verify_input,
    verify_message,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """A decision not to forward a request: the response to send instead."""

    status: int
    reason: str | None = None
    headers: tuple[bytes, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Defer:
    """The verification service needs these credentials fetched before it can decide; the
    request waits (parked) and is decided again when they are in."""

    urls: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class DeferPick:
    """The caller ID comes from the shared number health: the request waits for its answer
    (``token``) and is decided again with it."""

    token: int



class StiLeg:
    """Signing and verification as the in-path proxy applies them to a request it forwards."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        # Signed calls: health tracking, replaced caller IDs.
        self.calls: CallTable[TrackedCall] = CallTable()
        # The calls among them whose caller ID was replaced: their messages are mapped. A
        # table of its own so that the test on every message (any such call?) is one check.
        self.replaced: CallTable[IdentityMap] = CallTable()
        self._dates = DateLines()
        self._tns = TnMemo()  # calling numbers of the From/PAI values seen
        self.picked: Picked | None = None  # the shared pick a resumed request decides with
        self._tokens = 0
        # What the last decided initial INVITE was found to be, for its call record (kept
        # only while ``recording``: the application turns call records on).
        self.recording = False
        self.learned: RecordFacts | None = None

    def authenticate(self, services: Services, msg: SipMessage, source: Peer, now: float,
                     out: list[Action], *, named: str | None = None
                     ) -> Rejection | DeferPick | None:
        """The authentication service (RFC 8224 §6.1) for a request from the dialer side.
        ``named``: the account its digest credentials named (else its address or client
        certificate names one)."""
        auth = services.authenticator
        if auth is None:
            return None
        account = (services.accounts.accounts.get(named) if named is not None
                   else services.accounts.by_peer(source.host, source.names))
        index = msg.index  # (a dict lookup each: this runs for every dialer-side request)
        if account is None or "identity" in index or "identity-info" in index:
            strip_untrusted(msg, account, self.stats)
        if msg.method != "INVITE" or "tag=" in (msg.get("to") or ""):
            return None  # SHAKEN signs initial INVITEs only
        facts = call_facts(msg, account, auth.policy, self._tns)
        if type(facts) is not CallFacts:
            if isinstance(facts, BadDate):
                self.stats[("sign_refused", "bad_date")] += 1
                return Rejection(status=400, reason="Bad Request (Date)")
            self.stats[("sign_refused", "bad_call_reason")] += 1
            return Rejection(status=400, reason="Bad Call Reason")
        picked, self.picked = self.picked, None
        outcome = auth.sign(facts, now, picked=picked, defer=True)
        if self.recording:  # (only made when call records are on)
            # (out of the cyclic GC, as the call's other objects that hold no cycle)
            self.learned = learned = untracked(RecordFacts(
                account=account.name if account is not None else None, orig=facts.orig,
                presented=facts.orig, dest=facts.dest))
            if type(outcome) is Signed:
                learned.presented = outcome.orig
                learned.attest = outcome.attest._value_  # (not .value: a Python property)
                learned.attest_reason = outcome.reason._value_
            elif type(outcome) is Refusal:
                learned.attest_reason = outcome.cause
            elif isinstance(outcome, Unsigned):
                learned.attest_reason = outcome.reason  # why it went unsigned
        if type(outcome) is NeedsNumber:
            self._tokens += 1
            out.append(PickNumber(self._tokens, outcome.candidates, outcome.limit, now))
            return DeferPick(token=self._tokens)
        if type(outcome) is Signed:
            identities = None
            if outcome.substitution is not None:
                identities = identity_map(msg, outcome.orig)
                if log.isEnabledFor(logging.DEBUG):  # no per-call logging at info
                    log.debug("call %s: caller ID %s presented as %s", msg.call_id,
                              facts.orig, outcome.orig, extra={
                                  "call_id": msg.call_id, "account": outcome.account})
            msg.append_header(b"Identity: " + outcome.identity.encode() + b"\r\n")
            for value in outcome.more:  # a div PASSporT beside the shaken one
                msg.append_header(b"Identity: " + value.encode() + b"\r\n")
            if facts.date is None:
                msg.append_header(self._dates.line(outcome.iat))
            if outcome.events or identities is not None:
                out.extend(outcome.events)
                self.calls.add(msg.call_id, untracked(TrackedCall(tn=outcome.orig,
                                                                  identities=identities)))
                if identities is not None:
                    self.replaced.add(msg.call_id, identities)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("signed %s %s->%s attest %s (%s)", msg.call_id, outcome.orig,
                          outcome.dest, outcome.attest.value, outcome.reason.value, extra={
                              "call_id": msg.call_id, "account": outcome.account,
                              "attest": outcome.attest.value, "reason": outcome.reason.value})
            return None
        if type(outcome) is Refusal:
            return Rejection(status=outcome.status, reason=outcome.phrase,
                             headers=refusal_headers(outcome))
        return None  # Unsigned: policy forwards it as it is

    def verify(self, services: Services, msg: SipMessage, now: float,
               out: list[Action]) -> Rejection | Defer | None:
        """The verification service (RFC 8224 §6.2) for an initial INVITE from the carrier."""
        verification = services.verification
        assert verification is not None
        policy = services.verify_policy
        facts = verify_input(msg, policy.country_code)
        verdict = verify_message(msg, verification, policy, now, facts)
        if isinstance(verdict, NeedsCredentials):
            out.extend(Fetch(r) for r in verdict.fetch)
            return Defer(urls=verdict.urls)
        if verdict.code is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("verification %s: %s", verdict.verstat.value, verdict.reason,
                      extra={"call_id": msg.call_id, "verdict": verdict.verstat.value,
                             "reason": verdict.reason})
        if self.recording:
            self.learned = untracked(RecordFacts(
                orig=facts.orig, presented=facts.orig, dest=facts.dest, attest=verdict.attest,
                verstat=verdict.verstat.value, verify_code=verdict.code))
        if policy.rejects(verdict):
            code, phrase, reason = rejection(verdict)
            return Rejection(status=code, reason=phrase, headers=(reason,))
        mark_verdict(msg, verdict, attestation_header=policy.attestation_header)
        return None

    # -- the calls we signed ---------------------------------------------------------------
    def map_identities(self, msg: SipMessage, out_side: Side) -> None:
        """The caller ID of a call whose number was replaced, mapped for ``out_side`` (the
        proxy asks only while ``replaced`` holds a call)."""
        entry = self.replaced.get(msg.call_id)
        if entry is not None:
            map_identities(msg, entry, out_side)

    def call_final(self, services: Services, call_id: str, status: int, now: float,
                   out: list[Action]) -> None:
        """The final response to a signed INVITE: counted in the number's health."""
        call = self.calls.get(call_id) if self.calls else None
        health = services.health
        if call is None or call.done:
            return
        if health is not None:
            out.append(health.final(call.tn, status, now))
        if 200 <= status < 300:
            call.answered_at = now
        else:
            self._call_done(call_id, call)

    def call_ended(self, services: Services, call_id: str, now: float,
                   out: list[Action]) -> None:
        """A BYE: the answered call's duration counts in the number's health."""
        call = self.calls.get(call_id) if self.calls else None
        if call is None or call.done:
            return
        health = services.health
        if call.answered_at and health is not None:
            out.append(health.ended(call.tn, now - call.answered_at, now))
        self._call_done(call_id, call)

    def _call_done(self, call_id: str, call: TrackedCall) -> None:
        # A replaced caller ID is still mapped for what follows (the BYE itself, its 200,
        # retransmissions); the table's bound retires it.
        if call.identities is None:
            self.calls.pop(call_id, None)
        else:
            call.done = True
