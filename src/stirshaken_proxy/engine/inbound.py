"""The verification service on the carrier side (RFC 8224 §6.2, ATIS-1000074 §5.3).

For each initial INVITE from the carrier: verify every Identity header; then either reject
with the RFC's code and a RFC 9410 Reason, or pass the call on with the verdict as a 3GPP
``verstat`` parameter on P-Asserted-Identity (else From) and the attestation level.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..sip.message import SipMessage
from ..sip.numbers import called_tn, calling_tn
from ..sip.transport import Peer
from ..stir.verify import Verdict, Verifier, Verstat
from .outbound import parse_date
from .proxy import CARRIER, Defer, Rejection
from .stats import LatencyHistogram, Stats

log = logging.getLogger(__name__)

_VERSTAT_PARAM = re.compile(r";verstat=[^;>]*", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class VerifyPolicy:
    on_failure: str = "mark"  # "mark": forward with TN-Validation-Failed; "reject": answer
    on_missing: str = "mark"  # no Identity: "mark" (No-TN-Validation) or "reject" (428)
    attestation_header: bool = True  # add P-Attestation-Indicator on a passed call
    country_code: str = "1"


def reason_header(code: int, phrase: str) -> bytes:
    """RFC 9410 §3: ``Reason: STIR ;cause=<code> ;text="<phrase>"``."""
    return f'Reason: STIR ;cause={code} ;text="{phrase}"\r\n'.encode()


class InboundVerifier:
    """A RequestHook (see engine.proxy) that verifies initial INVITEs from the carrier."""

    def __init__(self, *, verifier: Verifier, policy: VerifyPolicy, stats: Stats,
                 clock: Callable[[], float] | None = None) -> None:
        self.verifier = verifier
        self.clock = clock  # a performance clock for the verify-latency histogram
        self.verify_latency = LatencyHistogram()
        self.policy = policy
        self.stats = stats


    def carry_over(self, old: InboundVerifier) -> None:
        """Keep the latency counts of the one this replaces (a reload)."""
        self.verify_latency = old.verify_latency
    def __call__(self, msg: SipMessage, source: Peer, now: float) -> Rejection | Defer | None:
        if source.side != CARRIER or msg.method != "INVITE" or "tag=" in (msg.get("to") or ""):
            return None
        cc = self.policy.country_code
        date_text = msg.get("date")
        started = self.clock() if self.clock is not None else 0.0
        verdict = self.verifier.verify(
            msg.get_all("identity"),
            orig=calling_tn(msg.values("p-asserted-identity"), msg.get("from"), country_code=cc),
            dest=called_tn(msg.uri, msg.get("to"), country_code=cc),
            date=parse_date(date_text) if date_text else None, now=now)
        if verdict.pending:
            self.stats[("verify_waits",)] += 1
            return Defer(urls=verdict.pending)
        if self.clock is not None:
            self.verify_latency.observe(self.clock() - started)
        self._count(verdict)
        if (verdict.verstat is Verstat.FAILED and self.policy.on_failure == "reject") or (
                verdict.verstat is Verstat.NONE and self.policy.on_missing == "reject"):
            code = verdict.code or 438
            return Rejection(status=code, reason=verdict.phrase,
                             headers=(reason_header(code, verdict.phrase),))
        self._mark(msg, verdict)
        return None

    def _count(self, verdict: Verdict) -> None:
        self.stats[("verifications", verdict.verstat.value,
                    str(verdict.code) if verdict.code is not None else "")] += 1
        if verdict.verstat is not Verstat.PASSED and log.isEnabledFor(logging.DEBUG):
            log.debug("verification %s: %s", verdict.verstat.value, verdict.reason,
                     extra={"verdict": verdict.verstat.value, "reason": verdict.reason})

    def _mark(self, msg: SipMessage, verdict: Verdict) -> None:
        """verstat on the URI of P-Asserted-Identity (else From), as 3GPP TS 24.229 does;
        a Reason header when the call goes on after a failure (RFC 9410 §3)."""
        name, label = ("p-asserted-identity", b"P-Asserted-Identity") \
            if msg.has("p-asserted-identity") else ("from", b"From")
        i = msg.index[name][0]
        value = msg.headers[i].value
        marked = _with_verstat(value, verdict.verstat.value)
        msg.replace_header(i, label + b": " + marked.encode("latin-1") + b"\r\n")
        if verdict.verstat is Verstat.PASSED and verdict.attest and \
                self.policy.attestation_header:
            msg.remove_all("p-attestation-indicator")
            msg.append_header(b"P-Attestation-Indicator: " + verdict.attest.encode() + b"\r\n")
        if verdict.code is not None and verdict.verstat is Verstat.FAILED:
            msg.append_header(reason_header(verdict.code, verdict.phrase))


def _with_verstat(value: str, verstat: str) -> str:
    """Put ``;verstat=`` inside the URI of a name-addr or addr-spec value (replacing one a
    previous hop put there)."""
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        uri = _VERSTAT_PARAM.sub("", value[lt + 1 : gt])
        return f"{value[:lt]}<{uri};verstat={verstat}>{value[gt + 1 :]}"
    # addr-spec: what follows ';' are header parameters, so the URI gets brackets.
    uri, semi, params = value.partition(";")
    return f"<{_VERSTAT_PARAM.sub('', uri)};verstat={verstat}>" + (";" + params if semi else "")
