"""The engine's counters: plain integers keyed by (metric, *label values), kept on the hot path
at the cost of a dict increment and turned into Prometheus metrics only when scraped."""

from __future__ import annotations

from collections import Counter

Stats = Counter[tuple[str, ...]]

# metric -> (help, label names). Exported as stirshaken_<metric>_total.
CATALOGUE: dict[str, tuple[str, tuple[str, ...]]] = {
    "sip_requests": ("SIP requests received", ("side", "method")),
    "sip_responses": ("SIP responses received", ("side", "code")),
    "sip_forwarded": ("SIP requests forwarded", ("side", "method")),
    "sip_malformed": ("Messages that could not be parsed", ()),
    "sip_dropped": ("Messages dropped without an answer", ("reason",)),
    "sip_refused_sources": ("Requests refused because of their source address", ("side",)),
    "digest_auth": ("Digest authentication of dialers: authorized, or why a request was "
                    "challenged (407) or refused (403)", ("result",)),
    "sip_retransmissions_absorbed": ("Request retransmissions absorbed", ()),
    "sip_overload_responses": ("503 answers for overload or shutdown", ()),
    "sip_rejected": ("Requests answered by the proxy with a final response", ("code",)),
    "sip_cancels_sent": ("CANCEL requests sent downstream", ()),
    "sip_transaction_timeouts": ("Transactions that timed out", ()),
    "sip_timer_c": ("Timer C expiries (INVITEs ringing too long)", ()),
    "calls_signed": ("INVITEs signed, by attestation and reason", ("account", "attest", "reason")),
    "calls_branded": ("Signed INVITEs carrying the caller's Rich Call Data (name, logo)",
                      ("account",)),
    "calls_diverted_signed": ("Diverted INVITEs signed with a div PASSporT besides",
                              ("account",)),
    "rcd_verifications": ("Rich Call Data of inbound calls: passed (name and logo passed on) "
                          "or failed", ("result",)),
    "caller_id_substituted": ("Calls presented with another of the account's numbers, by how "
                              "near it is to the callee", ("account", "match")),
    "calls_unsigned": ("INVITEs from the dialer side forwarded unsigned", ("reason",)),
    "sign_refused": ("INVITEs the authentication service refused", ("reason",)),
    "identity_removed": ("Identity headers removed from dialer-side requests", ()),
    "pai_removed": ("P-Asserted-Identity removed from sources outside the trust domain", ()),
    "verifications": ("Inbound verifications by verstat and response code",
                      ("verstat", "code")),
    "verify_waits": ("Inbound verifications that waited for a credential fetch", ()),
    "crl_unusable": ("Fetched CRLs that could not be parsed", ()),
    "redirect_answers": ("302 answers of the redirect server, by what they carry", ("kind",)),
    "redirect_acks_absorbed": ("ACKs for the redirect server's final answers", ()),
    "rest_requests": ("ATIS-1000082 REST requests, by endpoint and HTTP status",
                      ("endpoint", "status")),
    "http_refused": ("HTTP connections and requests the REST or admin server refused: "
                     "per_source, max_connections, malformed, body_timeout, account_share",
                     ("server", "reason")),
}


class LatencyHistogram:
    """Cumulative-bucket latency histogram (seconds), cheap enough for the hot path."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = (
            0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0)) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
