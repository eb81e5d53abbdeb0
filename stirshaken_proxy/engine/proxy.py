"""The proxy engine: a transaction-stateful SIP proxy between two sides (RFC 3261 §16), the
in-path front end of the STI core.

Requests that arrive on the dialer side go to the carrier's next hop and the other way round.
Initial INVITEs from the dialer side are signed by the authenticator, those from the carrier
side verified by the verification service, both held in the ``Services`` bundle. The engine
is pure: ``receive(data, peer, now)``, ``on_timers(now)`` and ``credentials_ready(urls, now)``
(fetched credentials are in) return the actions to carry out (datagrams, fetches,
number-health events); ``next_deadline()`` says when to call ``on_timers`` again.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..policy.digest import Authorized, Banned, DigestAuth
from ..sip.errors import SipError
from ..sip.message import ParseCache, SipMessage, make_response, parse_message, untracked
from ..sip.transport import Peer, Send, Side, Transport
from ..sip.uri import parse_name_addr, parse_uri, split_values
from ..stats import Stats
from ..stir.signing import Picked
from ..transaction import (
    AckTemplate,
    ClientInvite,
    State,
    TimerConfig,
    Transaction,
    timer_heap,
)
from ..transaction.machine import ClientTransaction, Event, ServerTransaction, machines
from .actions import Action
from .flood import FloodConfig, FloodGuard
from .records import INBOUND, OUTBOUND, CallLog
from .services import Services
from .sip_sti import is_initial_invite
from .sources import SourceFilter
from .sti_leg import Defer, DeferPick, Rejection, StiLeg

log = logging.getLogger(__name__)

DIALER = Side.DIALER
CARRIER = Side.CARRIER
_OPPOSITE = {DIALER: CARRIER, CARRIER: DIALER}
MAX_UDP_PAYLOAD = 65507  # an IPv4 UDP datagram's payload at most (65535 - 8 - 20)
# Requests that may create a dialog, so the proxy Record-Routes them (RFC 3261 §16.6 step 4).
_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
# Enum members used per message, bound once (through the class each lookup costs ~70 ns).
_ACK = Event.ACK
_PROCEEDING = State.PROCEEDING
_TERMINATED = State.TERMINATED
_TRYING = State.TRYING
_TCP = Transport.TCP
_UDP = Transport.UDP
ALLOW = b"INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE"


@dataclass(frozen=True, kw_only=True)
class SideConfig:
    """One side of the proxy: where it listens, how it names itself, where it forwards to."""

    name: Side
    host: str
    port: int
    advertise_host: str
    advertise_port: int
    next_hop_host: str
    next_hop_port: int
    next_hop_transport: Transport = Transport.UDP
    allowed_sources: tuple[str, ...] = ()
    allow_any_source: bool = False
    tls_port: int = 0  # the side's SIP-over-TLS listener (0: none)
    advertise_tls_port: int = 0  # the TLS port we name in Via and Record-Route
    next_hop_tls_name: str = ""  # the name the next hop's certificate must carry (RFC 5922)
    tls_verify_clients: str = "none"  # "optional", "required": client certificates

    def advertised(self, transport: Transport) -> str:
        """host:port this side is reached at over ``transport`` (an IPv6 address in
        brackets, RFC 3261 §25.1)."""
        port = self.advertise_port
        if transport is Transport.TLS and self.advertise_tls_port:
            port = self.advertise_tls_port
        return f"{host_text(self.advertise_host)}:{port}"


def _send(data: bytes, peer: Peer) -> Send:
    """Send(data, peer) by tuple.__new__: a NamedTuple's own __new__ is interpreted Python,
    and the datagrams the engine forwards itself make one each."""
    return tuple.__new__(Send, (data, peer))


def host_text(host: str) -> str:
    """A host as it is written in SIP (an IPv6 reference in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    dialer: SideConfig
    carrier: SideConfig
    timers: TimerConfig = field(default_factory=TimerConfig)
    max_message_size: int = 65535
    max_transactions: int = 100_000
    max_parked: int = 10_000  # requests waiting for a credential fetch; past this, 503
    flood: FloodConfig = field(default_factory=FloodConfig)
    retry_after: int = 5
    server_name: str = "stirshaken-proxy"


class _Parked:
    """A request waiting for credentials, with the server transaction that answers it."""

    __slots__ = ("msg", "server", "source", "urls")

    def __init__(self, msg: SipMessage, source: Peer, server: ServerTransaction,
                 urls: tuple[str, ...]) -> None:
        self.msg = msg
        self.source = source
        self.server = server
        self.urls = set(urls)


class ContextKind(enum.Enum):
    FORWARD = "forward"  # a request we forward: its server and client transactions
    CANCEL = "cancel"  # a CANCEL we generated (§9.1): its responses stop here


_DIRECTION = {Side.DIALER: OUTBOUND, Side.CARRIER: INBOUND}
_CANCEL = ContextKind.CANCEL
_FORWARD = ContextKind.FORWARD


class _Context:
    """Per-request proxy state linking the server transaction to its client transaction."""

    __slots__ = (
        "ack",
        "cancel_pending",
        "cancelled",
        "client",
        "final_seen",
        "kind",
        "provisional",
        "route_lines",
        "ruri",
        "server",
        "timer_c_fired",
        "to_line",
        "transport_error",
        "via_line",
    )

    def __init__(self, kind: ContextKind, server: ServerTransaction | None) -> None:
        self.kind = kind
        self.server = server
        self.client: ClientTransaction | None = None
        self.provisional = False
        self.cancel_pending = False
        self.cancelled = False
        self.timer_c_fired = False
        self.final_seen = False
        self.via_line = b""
        self.route_lines = b""  # the Route lines as forwarded
        self.ruri = b""
        self.to_line = b""
        self.ack: AckTemplate | None = None
        self.transport_error = False  # the branch's connection failed (§8.1.3.1: a 503)


class ProxyEngine:
    """Transaction-stateful proxy. Implements the TransactionUser protocol for its transactions."""

    def __init__(self, config: EngineConfig, services: Services, *,
                 rng: Callable[[int], bytes], stats: Stats | None = None) -> None:
        self.config = config
        self.services = services
        self.sides = {DIALER: config.dialer, CARRIER: config.carrier}
        self.timers = timer_heap()  # the compiled core's when it is in use
        # The heap's first entry, armed or not (never later than next_deadline): asked after
        # every message, so the heap's own method, without a frame of ours around it.
        self.earliest_deadline = self.timers.earliest
        self.machines = machines()  # its transactions likewise
        self.server_txns: dict[tuple[object, ...], ServerTransaction] = {}
        self.client_txns: dict[tuple[str, str], ClientTransaction] = {}
        self.stats: Stats = stats if stats is not None else Stats()
        self.sti = StiLeg(self.stats)  # signing, verification, the calls we signed
        self.records = CallLog()  # every initial INVITE's call record (instance set by the app)
        self._parse_cache = ParseCache()
        self._local = {
            (host.lower(), port) for side in self.sides.values()
            for host in {side.advertise_host, host_text(side.advertise_host), side.host,
                         host_text(side.host)}
            for port in {side.advertise_port, side.port, side.advertise_tls_port or
                         side.advertise_port, side.tls_port or side.port}}
        self._own_route_prefixes = tuple(f"<sip:{h}:{p}" for h, p in sorted(self._local))
        self._rr_line = {(name, transport): self._rr(side, transport)
                         for name, side in self.sides.items() for transport in Transport}
        # Our Record-Route values exactly as we write them: as UAs send them back in Route,
        # a set lookup settles them.
        self._own_routes = {line[len(b"Record-Route: "):-2].decode("latin-1")
                            for line in self._rr_line.values()}
        self._branch_prefix = "z9hG4bK" + rng(4).hex() + "."
        self._branch_seq = itertools.count(1)
        self._tag = rng(4).hex()
        self._via_prefix = {name: self._via_start(side) for name, side in self.sides.items()}
        self._next_hop = {
            name: Peer(name, side.next_hop_transport, side.next_hop_host, side.next_hop_port)
            for name, side in self.sides.items()
        }
        self._server_header = b"Server: " + config.server_name.encode() + b"\r\n"
        self.flood = FloodGuard(config.flood)
        # The wall clock, for what is signed and recorded (iat, the Date check, freshness,
        # call records, number health), read where it is needed; ``now`` (monotonic in the
        # service: io.shell) drives the timers, the flood buckets, nonces' age and caches.
        # None: ``now`` is both (tests driving a clock of their own).
        self.wall_clock: Callable[[], float] | None = None
        self._flood_exempt = self._exempt(config)
        # Per side, per source address: (trusted by the flood guard, refused by the side's
        # source list), as _admission decides them; kept until a reload replaces the lists.
        self._admitted: dict[Side, dict[str, tuple[bool, bool]]] = {DIALER: {}, CARRIER: {}}
        # While draining for shutdown, new dialogs are refused; transactions in flight finish.
        self.draining = False
        self._waiting: dict[str, list[_Parked]] = {}  # x5u URL -> requests waiting for it
        self._picking: dict[int, _Parked] = {}  # token -> request waiting for a shared pick
        self._parked = 0

    def record_calls(self, *, instance: str, worker: int) -> None:
        """Turn call records on (the application does, with [records] enabled)."""
        self.records.enabled = self.sti.recording = True
        self.records.name(instance, worker)

    def replace(self, *, services: Services, config: EngineConfig | None = None) -> None:
        """A reload, in one step: new requests meet the new bundle (and limits and timers);
        transactions and calls in progress carry on. Listen addresses and next hops stay as
        they are (they need a restart)."""
        if config is not None:
            self.config = replace(config, dialer=self.config.dialer,
                                  carrier=self.config.carrier)
            self.flood.config = config.flood
            self._flood_exempt = self._exempt(self.config)
        self.services = services
        for known in self._admitted.values():
            known.clear()

    # -- configuration-derived bytes ----------------------------------------------------
    @staticmethod
    def _via_start(side: SideConfig) -> bytes:
        transport = side.next_hop_transport
        # Over TLS, `alias` (RFC 5923 §5) lets the next hop send its requests back on the
        # connection we opened.
        alias = ";alias" if transport is Transport.TLS else ""
        return (f"Via: SIP/2.0/{transport.upper()} {side.advertised(transport)}{alias}"
                ";branch=").encode()

    @staticmethod
    def _rr(side: SideConfig, transport: Transport) -> bytes:
        """The Record-Route value naming this side as reached over ``transport``. TLS is
        written `transport=tls` on a sip URI, as deployed peers (Kamailio among them) expect,
        not as the sips URI RFC 5630 §3.1.3 prefers: a sips route would demand TLS of hops
        beyond ours."""
        tp = "" if transport is _UDP else f";transport={transport}"
        return f"Record-Route: <sip:{side.advertised(transport)}{tp};lr>\r\n".encode()

    @staticmethod
    def _exempt(config: EngineConfig) -> SourceFilter:
        return SourceFilter(config.flood.exempt + tuple(
            f"{side.next_hop_host}/32" if ":" not in side.next_hop_host
            else f"{side.next_hop_host}/128" for side in (config.dialer, config.carrier)))

    # -- the engine's interface --------------------------------------------------------
    def receive(self, data: bytes, source: Peer, now: float) -> list[Action]:
        out: list[Action] = []
        try:
            msg = parse_message(data, max_size=self.config.max_message_size,
                                stream=source.transport is not _UDP,
                                cache=self._parse_cache)
        except SipError as exc:
            self._bad_message(exc, source, out)
            return out
        try:
            if msg.is_request:
                self.stats[("sip_requests", source.side, msg.method)] += 1
                self._on_request(msg, source, now, out)
            else:
                self.stats[("sip_responses", source.side, str(msg.status))] += 1
                self._on_response(msg, source, now, out)
        except SipError as exc:
            # Semantic errors found past parsing (a malformed Route, …).
            exc.message = msg
            self._bad_message(exc, source, out)
        return out

    def on_timers(self, now: float) -> list[Action]:
        out: list[Action] = []
        for txn, timer in self.timers.pop_due(now):
            if txn.state is not _TERMINATED:
                txn.timer_fired(timer, now, out)
        return out

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def credentials_ready(self, urls: tuple[str, ...], now: float) -> list[Action]:
        """The verification service has these credentials now (fetched, or failed): the
        requests that waited for them are decided again."""
        out: list[Action] = []
        for url in urls:
            for parked in self._waiting.pop(url, ()):
                parked.urls.discard(url)
                if parked.urls:
                    continue
                self._parked -= 1
                if parked.server.state is _PROCEEDING:  # not cancelled or timed out
                    self._decide(parked.msg, parked.source, parked.server, now, out)
        return out

    def number_picked(self, token: int, picked: Picked, now: float) -> list[Action]:
        """The shared number health answered a PickNumber: its request is decided again with
        that answer."""
        out: list[Action] = []
        parked = self._picking.pop(token, None)
        if parked is None:
            return out
        self._parked -= 1
        if parked.server.state is _PROCEEDING:  # not cancelled or timed out
            self.sti.picked = picked
            self._decide(parked.msg, parked.source, parked.server, now, out)
            self.sti.picked = None
        return out

    def transport_failed(self, peer: Peer, now: float) -> list[Action]:
        """A connection to ``peer`` could not be made (refused, TLS certificate, handshake
        timeout): its client transactions fail at once (RFC 3261 §17.1.4), each counting as
        a 503 (§16.7 step 6) instead of waiting out Timer B."""
        out: list[Action] = []
        for txn in list(self.client_txns.values()):
            if txn.peer == peer and txn.state in (State.CALLING, _TRYING):
                ctx: _Context = txn.context
                ctx.transport_error = True
                txn.fire(Event.TRANSPORT_ERROR, now, out)
        return out

    @property
    def transactions(self) -> int:
        return len(self.server_txns) + len(self.client_txns)

    @property
    def pending_requests(self) -> int:
        """Requests still waiting for a final answer (what a graceful stop waits for; finished
        transactions only linger to absorb retransmissions)."""
        return sum(1 for t in self.server_txns.values()
                   if t.state in (_PROCEEDING, _TRYING))

    @property
    def parked(self) -> int:
        return self._parked

    # -- errors ---------------------------------------------------------------------------
    def _bad_message(self, exc: SipError, source: Peer, out: list[Action]) -> None:
        self.stats[("sip_malformed",)] += 1
        msg: SipMessage | None = exc.message
        log.debug("malformed message from %s:%d: %s", source.host, source.port, exc.detail)
        if exc.status is None or msg is None or not msg.is_request or msg.method == "ACK":
            self.stats[("sip_dropped", "unanswerable")] += 1
            return
        if not msg.has("via") or not msg.has("cseq"):
            self.stats[("sip_dropped", "no_via_or_cseq")] += 1  # RFC 4475 §3.3.1
            return
        out.append(Send(make_response(msg, exc.status, to_tag=self._tag,
                                      extra=(self._server_header,)), source))

    # -- requests -------------------------------------------------------------------------
    def _trusted(self, host: str) -> bool:
        """Peers the flood guard leaves alone: next hops, the exempt list, and the dialer
        side's admitted sources (accounts' trunks), unless that side admits anyone."""
        if self._flood_exempt.allows(host):
            return True
        dialer = self.services.dialer_sources
        return not dialer.allow_any and dialer.allows(host)

    def _server_key(self, msg: SipMessage, method: str, source: Peer) -> tuple[object, ...]:
        """RFC 3261 §17.2.3 matching (branch, sent-by, method; RFC 2543 rules without the
        magic cookie), plus the source: a retransmission comes from where the request came
        from, and a request from elsewhere reusing a branch must not hijack its transaction
        (a deliberate tightening of §17.2.3)."""
        via = msg.top_via()
        if via.rfc3261_branch:
            return (via.branch, via.host, via.port, method, source)
        from_tag = msg.from_().tag
        return ("2543", msg.call_id, from_tag, msg.cseq, via.text, method, source)

    def _admission(self, source: Peer) -> tuple[bool, bool]:
        """(trusted by the flood guard, refused by its side's source list) for ``source``;
        remembered per address when no certificate names the peer."""
        dialer = source.side is DIALER
        verdict = (self._trusted(source.host), self._unlisted(source) if dialer
                   else not self.services.carrier_sources.allows(source.host))
        if not source.names:
            known = self._admitted[source.side]
            if len(known) >= 4096:
                known.clear()
            known[source.host] = verdict
        return verdict

    def _on_request(self, msg: SipMessage, source: Peer, now: float, out: list[Action]) -> None:
        method = msg.method
        trusted, refused = (None if source.names else self._admitted[source.side].get(
            source.host)) or self._admission(source)
        if not trusted and not self.flood.allow(source.host, now):
            self.stats[("sip_dropped", "flood")] += 1
            return
        services = self.services
        dialer = source.side is DIALER
        if refused and (
                services.digest is None or not dialer
                or not self._digest_admits(msg, method, source, now)):
            self.stats[("sip_refused_sources", source.side)] += 1
            if method != "ACK":
                out.append(Send(self._respond(msg, 403, "Forbidden"), source))
            return
        if method == "ACK":
            txn = self.server_txns.get(self._server_key(msg, "INVITE", source))
            if txn is not None:
                txn.fire(_ACK, now, out)  # ACK for a non-2xx final: absorbed hop by hop
                return
            self._forward_stateless(msg, source, out)  # ACK for a 2xx: end to end
            return
        key = self._server_key(msg, method, source)
        txn = self.server_txns.get(key)
        if txn is not None:
            self.stats[("sip_retransmissions_absorbed",)] += 1
            txn.receive_request(now, out)
            return
        if len(self.server_txns) >= self.config.max_transactions or (
                self.draining and "tag=" not in (msg.get("to") or "")):
            self.stats[("sip_overload_responses",)] += 1
            out.append(Send(self._respond(
                msg, 503, extra=(b"Retry-After: %d\r\n" % self.config.retry_after,)), source))
            return
        if method == "BYE":
            wall = self._wall(now)
            self.sti.call_ended(self.services, msg.call_id, wall, out)
            if self.records.open_calls:
                self.records.ended(msg.call_id, wall, out)
            if services.digest is not None:
                services.digest.call_ended(msg.call_id, now)
        m = self.machines
        cls = m.server_invite if method == "INVITE" else m.server_non_invite
        # (the key out of the cyclic GC too: its Peer, a tuple subclass, would keep it tracked)
        txn = cls(key=untracked(key), peer=source, tu=self, config=self.config.timers,
                  request=msg)
        self.server_txns[key] = txn
        if method == "INVITE":
            txn.send_response(self._respond(msg, 100), 100, now, out)
        if method == "CANCEL":
            self._on_cancel(msg, txn, now, out)
            return
        self._decide(msg, source, txn, now, out)

    def _decide(self, msg: SipMessage, source: Peer, txn: ServerTransaction, now: float,
                out: list[Action]) -> None:
        """Run the checks and the STI service of the side; then answer, forward, or park for
        a fetch."""
        decision = self._check(msg, source, now, out)
        if isinstance(decision, Defer | DeferPick):
            if self._parked >= self.config.max_parked:
                self.stats[("sip_overload_responses",)] += 1
                data = self._respond(msg, 503, extra=(
                    b"Retry-After: %d\r\n" % self.config.retry_after,))
                txn.send_response(data, 503, now, out)
                return
            self._parked += 1
            if isinstance(decision, DeferPick):
                self._picking[decision.token] = _Parked(msg, source, txn, ())
                return
            parked = _Parked(msg, source, txn, decision.urls)
            for url in decision.urls:
                self._waiting.setdefault(url, []).append(parked)
            return
        records = self.records
        initial = records.enabled and is_initial_invite(msg)
        learned, self.sti.learned = self.sti.learned, None
        if decision is not None:
            self.stats[("sip_rejected", str(decision.status))] += 1
            data = self._respond(msg, decision.status, decision.reason, extra=decision.headers)
            if initial and decision.status >= 300 and decision.status != 407:
                # (the record before the answer: journaled before the call's end leaves)
                records.answered_here(msg.call_id, _DIRECTION[source.side], learned,
                                      decision.status, self._wall(now), out)
            txn.send_response(data, decision.status, now, out)
            return
        if initial:
            records.start(msg.call_id, _DIRECTION[source.side], learned, self._wall(now), out)
        self._forward_stateful(msg, source, txn, now, out)

    def _check(self, msg: SipMessage, source: Peer, now: float,
               out: list[Action]) -> Rejection | Defer | DeferPick | None:
        """Checks of RFC 3261 §16.3 and this element's own policy, in order."""
        scheme = msg.uri.partition(":")[0].lower()
        if scheme not in ("sip", "sips", "tel"):
            return Rejection(status=416)
        if msg.method == "OPTIONS" and self._addressed_to_us(msg):
            return Rejection(status=200, headers=(b"Allow: " + ALLOW + b"\r\n",
                                                  b"Accept: application/sdp\r\n"))
        proxy_require = msg.values("proxy-require")
        if proxy_require:
            # We support no extensions that a proxy must understand (§16.3 step 6).
            unsupported = ", ".join(proxy_require).encode("latin-1")
            return Rejection(status=420, headers=(b"Unsupported: " + unsupported + b"\r\n",))
        mf = msg.get("max-forwards")
        if mf is not None and int(mf) == 0:
            return Rejection(status=483)
        if source.side is DIALER:
            account = None
            digest = self.services.digest
            if digest is not None and "tag=" not in (msg.get("to") or "") and \
                    self._unlisted(source):
                outcome = self._digest(digest, msg, source, now)
                if isinstance(outcome, Rejection):
                    return outcome
                account = outcome
            return self.sti.authenticate(self.services, msg, source, self._wall(now), out,
                                         named=account)
        if self.services.verification is not None and is_initial_invite(msg):
            return self.sti.verify(self.services, msg, self._wall(now), out)
        return None

    # -- digest authentication (RFC 3261 §22.3, RFC 8760) --------------------------------
    def _unlisted(self, source: Peer) -> bool:
        """A dialer-side peer neither its address nor its certificate names."""
        services = self.services
        return not services.dialer_sources.allows(source.host) and (
            not source.names or services.accounts.by_certificate(source.names) is None)

    def _digest_admits(self, msg: SipMessage, method: str, source: Peer, now: float) -> bool:
        """Which requests from an unlisted dialer get as far as the digest check: those that
        start something (challenged there), CANCEL and ACK of their own transactions, and
        the in-dialog requests of a call its credentials admitted."""
        if method == "ACK" and self._server_key(msg, "INVITE", source) in self.server_txns:
            return True  # the ACK of our 407 (or of another non-2xx answer)
        if "tag=" not in (msg.get("to") or ""):
            return method != "ACK"
        assert self.services.digest is not None
        return self.services.digest.call_admitted(msg.call_id, now)

    def _digest(self, digest: DigestAuth, msg: SipMessage, source: Peer,
                now: float) -> Rejection | str:
        """The account a request's credentials name, or the 407/403 to answer. (CANCEL and
        ACK never come here: §22.1 forbids challenging them, and both are handled before.)"""
        index = msg.index.get("proxy-authorization") or []
        outcome = digest.check(
            method=msg.method, request_uri=msg.uri, call_id=msg.call_id,
            authorizations=[(i, msg.headers[i].value) for i in index], host=source.host,
            now=now)
        if isinstance(outcome, Authorized):
            self.stats[("digest_auth", "authorized")] += 1
            msg.remove_header(outcome.header)  # credentials meant for us go no further
            digest.admit_call(msg.call_id, now)
            return outcome.account
        self.stats[("digest_auth", outcome.reason)] += 1
        if isinstance(outcome, Banned):
            return Rejection(status=403, reason="Forbidden (authentication failures)")
        return Rejection(status=407, headers=digest.challenge_headers(
            msg.call_id, now, stale=outcome.stale))

    def _addressed_to_us(self, msg: SipMessage) -> bool:
        uri = parse_uri(msg.uri)
        if not uri.is_sip or uri.user or msg.has("route"):
            return False
        return (uri.host, uri.port or 5060) in self._local

    def _respond(self, msg: SipMessage, status: int, reason: str | None = None,
                 extra: tuple[bytes, ...] = ()) -> bytes:
        return make_response(msg, status, reason, to_tag=self._tag,
                             extra=(*extra, self._server_header))

    def _new_branch(self) -> str:
        return self._branch_prefix + str(next(self._branch_seq))

    def _prepare_forward(self, msg: SipMessage, source: Peer, branch: str) -> tuple[bytes, Peer]:
        """Edit a request for forwarding (§16.6): Route, Max-Forwards, Record-Route, Via."""
        out_side = _OPPOSITE[source.side]
        self._pop_own_routes(msg)
        mf_idx = msg.index.get("max-forwards")
        if mf_idx:
            value = min(int(msg.headers[mf_idx[0]].value), 256) - 1
            msg.replace_header(mf_idx[0], b"Max-Forwards: %d\r\n" % value)
        else:
            msg.append_header(b"Max-Forwards: 70\r\n")
        if msg.method in _DIALOG_CREATING and "tag=" not in (msg.get("to") or ""):
            # Double Record-Route: the side we entered on below, the side we leave from on top,
            # so each UA's route set names the address it can reach.
            msg.prepend_header(self._rr_line[(source.side, source.transport)])
            msg.prepend_header(self._rr_line[(out_side, self.sides[out_side].next_hop_transport)])
        via = self._via_prefix[out_side] + branch.encode() + b"\r\n"
        msg.prepend_header(via)
        if self.sti.replaced:  # a call whose caller ID we replaced
            self.sti.map_identities(msg, out_side)
        return via, self._next_hop[out_side]

    def _pop_own_routes(self, msg: SipMessage) -> None:
        """Remove the Route values that name this proxy (loose routing, §16.4)."""
        idx = msg.index.get("route")
        if not idx:
            return
        for i in idx:
            values = split_values(msg.headers[i].value)
            kept = list(values)
            own = self._own_routes
            while kept and (kept[0] in own or self._is_own_route(kept[0])):
                kept.pop(0)
            if kept:
                if len(kept) != len(values):
                    msg.replace_header(i, b"Route: " + ", ".join(kept).encode("latin-1") + b"\r\n")
                return
            msg.remove_header(i)

    def _is_own_route(self, value: str) -> bool:
        # The Record-Route values we write come back as `<sip:HOST:PORT;...>`: a prefix test
        # settles them without parsing; anything else is parsed.
        for prefix in self._own_route_prefixes:
            if value.startswith(prefix) and value[len(prefix) : len(prefix) + 1] in (";", ">"):
                return True
        uri = parse_uri(parse_name_addr(value).uri)
        return uri.is_sip and (uri.host, uri.port or 5060) in self._local

    def _forward_stateful(self, msg: SipMessage, source: Peer, server: ServerTransaction,
                          now: float, out: list[Action]) -> None:
        branch = self._new_branch()
        via, dest = self._prepare_forward(msg, source, branch)
        data = msg.serialize()
        if dest.transport is _UDP and len(data) > MAX_UDP_PAYLOAD:
            # It fitted on arrival, not with our Via, Record-Route and Identity: no send
            # could succeed (EMSGSIZE), so the sender hears it now rather than time out.
            # RFC 3261 §18.1.1 would switch to TCP; here the next hop's transport is the
            # operator's setting (next_hop_transport = "tcp" carries such requests).
            self.stats[("sip_rejected", "513")] += 1
            self.stats[("sip_dropped", "too_large_once_edited")] += 1
            server.send_response(self._respond(msg, 513), 513, now, out)
            return
        # Out of the cyclic GC (it and its transactions live up to 64*T1): its links to
        # them are the only cycle, and a transaction cuts its own when it ends (release).
        ctx: _Context = untracked(_Context(_FORWARD, server))
        server.context = ctx
        key = (branch, msg.method)
        if msg.method == "INVITE":
            ctx.ruri = msg.uri.encode("latin-1")
            ctx.via_line = via
            # CANCEL and the ACK of a non-2xx carry the Route lines as forwarded (§9.1).
            ctx.route_lines = msg.joined("route", current=True)
            ctx.to_line = msg.joined("to", current=True)
            # (head, from_call_id, cseq), by tuple.__new__ (see _send)
            ctx.ack = untracked(tuple.__new__(AckTemplate, (
                b"ACK " + ctx.ruri + b" SIP/2.0\r\n" + via + ctx.route_lines,
                msg.joined("from", current=True) + msg.joined("call-id"), msg.cseq)))
            client: ClientTransaction = self.machines.client_invite(
                key=key, peer=dest, tu=self, config=self.config.timers, request=data,
                ack_template=ctx.ack)
        else:
            client = self.machines.client_non_invite(
                key=key, peer=dest, tu=self, config=self.config.timers, request=data)
        client.context = ctx
        ctx.client = client
        self.client_txns[key] = client
        self.stats[("sip_forwarded", dest.side, msg.method)] += 1
        client.start(now, out)  # type: ignore[attr-defined]

    def _forward_stateless(self, msg: SipMessage, source: Peer, out: list[Action]) -> None:
        _, dest = self._prepare_forward(msg, source, self._new_branch())
        data = msg.serialize()
        if dest.transport is _UDP and len(data) > MAX_UDP_PAYLOAD:
            self.stats[("sip_dropped", "too_large_once_edited")] += 1  # an ACK: no answer
            return
        self.stats[("sip_forwarded", dest.side, msg.method)] += 1
        out.append(_send(data, dest))

    def _on_cancel(self, msg: SipMessage, txn: ServerTransaction, now: float,
                   out: list[Action]) -> None:
        """CANCEL (RFC 3261 §16.10): answer it here, cancel the pending branch downstream."""
        invite = self.server_txns.get(self._server_key(msg, "INVITE", txn.peer))
        if invite is None:
            txn.send_response(self._respond(msg, 481), 481, now, out)
            return
        txn.send_response(self._respond(msg, 200), 200, now, out)
        ctx = invite.context
        if ctx is None and invite.state is _PROCEEDING and invite.request is not None:
            # Not forwarded yet (waiting for a credential fetch): it ends here (§16.10).
            invite.send_response(self._respond(invite.request, 487), 487, now, out)
            return
        if ctx is None or invite.state is not _PROCEEDING or ctx.cancelled:
            return
        if ctx.provisional:
            self._send_cancel(ctx, now, out)
        else:
            ctx.cancel_pending = True  # §9.1: wait for a provisional response before CANCEL

    def _send_cancel(self, ctx: _Context, now: float, out: list[Action]) -> None:
        client = ctx.client
        if client is None or ctx.cancelled or ctx.ack is None:
            return
        ctx.cancelled = True
        data = b"".join((
            b"CANCEL ", ctx.ruri, b" SIP/2.0\r\n", ctx.via_line, ctx.route_lines,
            ctx.ack.from_call_id, ctx.to_line,
            b"CSeq: %d CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n" % ctx.ack.cseq,
        ))
        branch = client.key[0]
        cancel = self.machines.client_non_invite(
            key=(branch, "CANCEL"), peer=client.peer, tu=self, config=self.config.timers,
            request=data)
        cancel.context = _Context(_CANCEL, None)
        self.client_txns[cancel.key] = cancel
        self.stats[("sip_cancels_sent",)] += 1
        cancel.start(now, out)

    # -- responses ------------------------------------------------------------------------
    def _on_response(self, msg: SipMessage, source: Peer, now: float, out: list[Action]) -> None:
        via = msg.top_via()
        client = self.client_txns.get((via.branch, msg.cseq_method))
        if client is None:
            self._forward_response_stateless(msg, out)
            return
        client.receive_response(msg, now, out)

    def _forward_response_stateless(self, msg: SipMessage, out: list[Action]) -> None:
        """§16.7: a response matching no transaction is forwarded statelessly, but only when
        the top Via is ours and the next one says (received/rport) where its sender was."""
        vias = msg.vias()
        top = vias[0]
        if (top.host, top.port or 5060) not in self._local or len(vias) < 2:
            self.stats[("sip_dropped", "response_unmatched")] += 1
            return
        addr = vias[1].response_address()
        if addr is None:
            self.stats[("sip_dropped", "response_unmatched")] += 1
            return
        carrier = self.sides[CARRIER]
        side = CARRIER if top.port in (carrier.advertise_port, carrier.advertise_tls_port) \
            else DIALER
        dest = Peer(_OPPOSITE[side], _UDP, addr[0], addr[1])
        if self.sti.replaced:  # a call whose caller ID we replaced
            self.sti.map_identities(msg, dest.side)
        out.append(_send(msg.without_top_via(), dest))

    def _wall(self, now: float) -> float:
        clock = self.wall_clock
        return now if clock is None else clock()

    # -- TransactionUser ------------------------------------------------------------------
    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float,
                    out: list[Action]) -> None:
        ctx: _Context = txn.context
        if ctx.kind is _CANCEL:
            return  # responses to our CANCEL stop here
        status = msg.status
        invite = isinstance(txn, self.machines.client_invite)
        if status < 200 and invite:
            ctx.provisional = True
            if ctx.cancel_pending:
                self._send_cancel(ctx, now, out)
        if status == 100:
            return  # 100 Trying is hop by hop (§16.7 step 3)
        if status >= 200 and invite and not ctx.final_seen:
            ctx.final_seen = True
            wall = self._wall(now)
            self.sti.call_final(self.services, msg.call_id, status, wall, out)
            if self.records.open_calls:  # (a re-INVITE's has its final status already)
                self.records.final(msg.call_id, status, wall, out)
        server = ctx.server
        if server is None:
            return
        if self.sti.replaced:  # a call whose caller ID we replaced
            self.sti.map_identities(msg, server.peer.side)
        server.send_response(msg.without_top_via(), status, now, out)

    def on_timeout(self, txn: Transaction, now: float, out: list[Action]) -> None:
        self.stats[("sip_transaction_timeouts",)] += 1
        if not isinstance(txn, self.machines.client):
            return
        ctx: _Context = txn.context
        server = ctx.server
        if ctx.kind is _FORWARD and server is not None and server.request is not None and \
                server.state in (_PROCEEDING, _TRYING):
            # §16.7 step 6 / §16.8: a branch that timed out counts as a 408, one whose
            # transport failed as a 503 (§8.1.3.1).
            status = 503 if ctx.transport_error else 408
            request = server.request  # (the final response lets go of it)
            if isinstance(txn, self.machines.client_invite) and self.records.open_calls:
                # (before the answer)
                self.records.final(request.call_id, status, self._wall(now), out)
            server.send_response(self._respond(request, status), status, now, out)

    def on_timer_c(self, txn: ClientInvite, now: float, out: list[Action]) -> None:
        """§16.8: Timer C fired. CANCEL the branch; if it still has no final answer when
        Timer C fires again, give up on it and answer 408 upstream."""
        ctx: _Context = txn.context
        self.stats[("sip_timer_c",)] += 1
        if ctx.provisional and not ctx.timer_c_fired:
            ctx.timer_c_fired = True
            self._send_cancel(ctx, now, out)
            txn.arm_timer_c(64 * self.config.timers.t1, now)
            return
        self.on_timeout(txn, now, out)  # the 408 upstream, while the context is still there
        txn.terminate()

    def on_terminated(self, txn: Transaction) -> None:
        if isinstance(txn, self.machines.server):
            if self.server_txns.get(txn.key) is txn:
                del self.server_txns[txn.key]
        elif self.client_txns.get(txn.key) is txn:
            del self.client_txns[txn.key]

    def shutdown(self) -> None:
        """Drop every transaction (the I/O layer drains first for a grace period)."""
        for txn in [*self.server_txns.values(), *self.client_txns.values()]:
            txn.terminate()

