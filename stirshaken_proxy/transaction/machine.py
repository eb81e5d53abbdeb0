"""Client and server transactions of RFC 3261 §17, with the Accepted state of RFC 6026.

Each machine is a table (state, event) -> (next state, actions). Actions are the class's plain
functions, run in order; a pair missing from the table is an event the state ignores (e.g. a
provisional response in Completed). Nothing here does I/O or reads a clock: ``now`` comes in, ``Send``
actions go out, and timers are deadlines pushed on the transaction user's heap.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

from ..sip import message
from ..sip.message import SipMessage
from ..sip.transport import Outbox, Peer, Send, Transport
from .timers import Timers


class State(enum.Enum):
    # Enum members are singletons compared by identity: hash them as such, in C (Enum's
    # own __hash__ is Python code, and every table lookup and timer hashes one).
    __hash__ = object.__hash__

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Event(enum.Enum):
    __hash__ = object.__hash__  # as State's

    PROVISIONAL = "1xx received"
    SUCCESS = "2xx received"
    FAILURE = "300-699 received"
    REQUEST = "request retransmission received"
    ACK = "ACK received"
    SEND_PROVISIONAL = "1xx from TU"
    SEND_SUCCESS = "2xx from TU"
    SEND_FAILURE = "300-699 from TU"
    TRANSPORT_ERROR = "transport error"
    TIMER_A = "timer_a"
    TIMER_B = "timer_b"
    TIMER_D = "timer_d"
    TIMER_E = "timer_e"
    TIMER_F = "timer_f"
    TIMER_G = "timer_g"
    TIMER_H = "timer_h"
    TIMER_I = "timer_i"
    TIMER_J = "timer_j"
    TIMER_K = "timer_k"
    TIMER_L = "timer_l"
    TIMER_M = "timer_m"
    TIMER_C = "timer_c"



@dataclass(frozen=True, kw_only=True)
class TimerConfig:
    """RFC 3261 §17.1.1.1 / Table 4 values, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0  # §17.1.1.2: at least 32 s for unreliable transports
    timer_c: float = 180.0  # §16.6 step 11: proxy INVITE timer, more than 3 minutes


class AckTemplate(NamedTuple):
    """What the ACK for a non-2xx response is built from (§17.1.1.3): the request's start
    line, Via and Route lines as sent, its From and Call-ID lines, and its CSeq number. (A
    NamedTuple: one is made for every INVITE.)"""

    head: bytes
    from_call_id: bytes
    cseq: int


class TransactionUser(Protocol):
    """What a transaction needs from the element that owns it (the proxy engine)."""

    timers: Timers

    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float,
                    out: Outbox) -> None: ...

    def on_timeout(self, txn: Transaction, now: float, out: Outbox) -> None: ...

    def on_terminated(self, txn: Transaction) -> None: ...

    def on_timer_c(self, txn: ClientInvite, now: float, out: Outbox) -> None: ...


Step = Callable[[Any, float, Outbox, Any], None]  # (transaction, now, out, payload)
Table = dict[tuple[State, Event], tuple[State, tuple[Step, ...]]]


# A member looked up through its enum class costs ~70 ns (the metaclass's lookup); the
# transactions test and arm these on every message, so they use module-level names.
FAILURE = Event.FAILURE
PROVISIONAL = Event.PROVISIONAL
REQUEST = Event.REQUEST
SEND_FAILURE = Event.SEND_FAILURE
SEND_PROVISIONAL = Event.SEND_PROVISIONAL
SEND_SUCCESS = Event.SEND_SUCCESS
SUCCESS = Event.SUCCESS
_UDP = Transport.UDP  # (Peer.reliable is a property: ~8x the cost of this test)
# Armed timers are keyed by name (a str): a deadline table of strings and floats holds
# nothing the garbage collector must walk (CPython untracks such a dict), and every
# transaction lingering for 32 s has one. timer_fired maps the name back to the event.
TIMER_A = Event.TIMER_A.value
TIMER_B = Event.TIMER_B.value
TIMER_C = Event.TIMER_C.value
TIMER_D = Event.TIMER_D.value
TIMER_E = Event.TIMER_E.value
TIMER_F = Event.TIMER_F.value
TIMER_G = Event.TIMER_G.value
TIMER_H = Event.TIMER_H.value
TIMER_I = Event.TIMER_I.value
TIMER_J = Event.TIMER_J.value
TIMER_K = Event.TIMER_K.value
TIMER_L = Event.TIMER_L.value
TIMER_M = Event.TIMER_M.value
TIMER_EVENTS: dict[str, Event] = {e.value: e for e in Event if e.name.startswith("TIMER_")}
CALLING = State.CALLING
PROCEEDING = State.PROCEEDING
TERMINATED = State.TERMINATED
TRYING = State.TRYING


S, E = State, Event


class Transaction:
    TABLE: ClassVar[Table]
    INITIAL: ClassVar[State]

    __slots__ = ("_interval", "config", "context", "deadlines", "key", "peer", "state", "tu")

    def __init__(self, *, key: Any, peer: Peer, tu: TransactionUser, config: TimerConfig) -> None:
        self.key = key
        self.peer = peer
        self.tu = tu
        self.config = config
        self.state = self.INITIAL
        self.deadlines: dict[str, float] = {}  # armed timers, by name
        self.context: Any = None  # the proxy's per-request state
        self._interval = config.t1

    def fire(self, event: Event, now: float, out: Outbox, payload: Any = None) -> bool:
        """Apply an event; False when the current state ignores it."""
        entry = self.TABLE.get((self.state, event))
        if entry is None:
            return False
        self.state = entry[0]
        for step in entry[1]:
            step(self, now, out, payload)
        if self.state is TERMINATED:
            self.deadlines.clear()
            self.tu.on_terminated(self)
            self._release()
        return True

    def _release(self) -> None:
        """Drop what a finished transaction no longer needs: stale timer entries keep the
        object itself alive until their deadline (up to 64*T1), so it must be small."""
        self.context = None

    def timer_fired(self, timer: str, now: float, out: Outbox) -> None:
        self.fire(TIMER_EVENTS[timer], now, out)

    def terminate(self) -> None:
        """Stop the transaction without further events (e.g. on shutdown)."""
        if self.state is not TERMINATED:
            self.state = TERMINATED
            self.deadlines.clear()
            self.tu.on_terminated(self)
            self._release()

    # -- helpers shared by the actions --------------------------------------------------
    def _arm(self, timer: str, delay: float, now: float) -> None:
        self.deadlines[timer] = when = now + delay  # (_arm_at's body: a call less, ~5 a call)
        self.tu.timers.push(when, self, timer)

    def _arm_at(self, timer: str, when: float) -> None:
        self.deadlines[timer] = when
        self.tu.timers.push(when, self, timer)

    def _disarm(self, *timers: str) -> None:
        for timer in timers:
            self.deadlines.pop(timer, None)

    def report_timeout(self, now: float, out: Outbox, _: Any) -> None:
        self.tu.on_timeout(self, now, out)


class ClientTransaction(Transaction):
    __slots__ = ("ack", "request")

    def __init__(self, *, request: bytes, **kw: Any) -> None:
        super().__init__(**kw)
        self.request = request
        self.ack: bytes | None = None

    def _release(self) -> None:
        super()._release()
        self.request = b""

    def receive_response(self, msg: SipMessage, now: float, out: Outbox) -> None:
        status = msg.status
        event = (PROVISIONAL if status < 200 else
                 SUCCESS if status < 300 else FAILURE)
        self.fire(event, now, out, msg)

    def retransmit(self, now: float, out: Outbox, _: Any) -> None:
        out.append(Send(self.request, self.peer))

    def pass_up(self, now: float, out: Outbox, msg: Any) -> None:
        self.tu.on_response(self, msg, now, out)


_NO_ACK = AckTemplate(b"", b"", 0)  # a finished INVITE client transaction's


class ClientInvite(ClientTransaction):
    """INVITE client transaction, RFC 3261 §17.1.1 (Figure 5) and RFC 6026 §8.4.

    Timer C runs minutes (§16.6 step 11) while nearly every call is answered or refused in
    seconds, and a cancelled timer's heap entry keeps its transaction alive until it is due.
    So its entry is armed at most 64*T1 ahead (what Timers B, D and M keep the transaction
    anyway) and armed again until the real deadline, ``timer_c_at``: a provisional response
    that resets Timer C moves only that deadline."""

    INITIAL = CALLING

    __slots__ = ("ack_template", "timer_c_at")

    def __init__(self, *, ack_template: AckTemplate, **kw: Any) -> None:
        super().__init__(**kw)
        self.ack_template = ack_template
        self.timer_c_at = 0.0

    def _release(self) -> None:
        super()._release()
        self.ack_template = _NO_ACK
        self.ack = None

    def start(self, now: float, out: Outbox) -> None:
        out.append(Send(self.request, self.peer))
        if self.peer.transport is _UDP:
            self._interval = self.config.t1
            self._arm(TIMER_A, self._interval, now)
        self._arm(TIMER_B, 64 * self.config.t1, now)
        self.arm_timer_c(self.config.timer_c, now)

    def reset_timer_c(self, now: float, out: Outbox, msg: Any) -> None:
        # §16.7 step 2: only provisional responses 101-199 reset Timer C.
        if msg.status > 100:
            self.arm_timer_c(self.config.timer_c, now)

    def arm_timer_c(self, delay: float, now: float) -> None:
        self.timer_c_at = when = now + delay
        step = self.deadlines.get(TIMER_C)
        if step is None or step > when:  # else the armed step comes first and moves on
            self._arm_step(now)

    def _arm_step(self, now: float) -> None:
        # At the deadline itself, not now + remainder: the last step fires at timer_c_at.
        self._arm_at(TIMER_C, min(self.timer_c_at, now + 64 * self.config.t1))

    def timer_fired(self, timer: str, now: float, out: Outbox) -> None:
        if timer == TIMER_C and now < self.timer_c_at:
            self._arm_step(now)  # a step on the way to Timer C's deadline
            return
        super().timer_fired(timer, now, out)

    def report_timer_c(self, now: float, out: Outbox, _: Any) -> None:
        self.tu.on_timer_c(self, now, out)

    def arm_timer_a(self, now: float, out: Outbox, _: Any) -> None:
        self._interval *= 2
        self._arm(TIMER_A, self._interval, now)

    def stop_calling_timers(self, now: float, out: Outbox, _: Any) -> None:
        self._disarm(TIMER_A, TIMER_B)

    def arm_timer_d(self, now: float, out: Outbox, _: Any) -> None:
        self._disarm(TIMER_A, TIMER_B, TIMER_C)
        self._arm(TIMER_D, 0.0 if self.peer.transport is not _UDP else self.config.timer_d, now)

    def arm_timer_m(self, now: float, out: Outbox, _: Any) -> None:
        self._disarm(TIMER_A, TIMER_B, TIMER_C)
        self._arm(TIMER_M, 64 * self.config.t1, now)

    def send_ack(self, now: float, out: Outbox, msg: Any) -> None:
        if self.ack is None:
            ack = self.ack_template
            to_idx = msg.index["to"][0]
            self.ack = b"".join((
                ack.head, ack.from_call_id, msg.header_line(to_idx),
                b"CSeq: %d ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n" % ack.cseq,
            ))
        out.append(Send(self.ack, self.peer))


CI = ClientInvite
ClientInvite.TABLE = {
    (S.CALLING, E.TIMER_A): (S.CALLING, (CI.retransmit, CI.arm_timer_a)),
    (S.CALLING, E.TIMER_B): (S.TERMINATED, (CI.report_timeout,)),
    (S.CALLING, E.PROVISIONAL): (
    S.PROCEEDING, (CI.stop_calling_timers, CI.reset_timer_c, CI.pass_up)),
    (S.CALLING, E.TIMER_C): (S.CALLING, (CI.report_timer_c,)),
    (S.CALLING, E.SUCCESS): (S.ACCEPTED, (CI.pass_up, CI.arm_timer_m)),
    (S.CALLING, E.FAILURE): (S.COMPLETED, (CI.send_ack, CI.pass_up, CI.arm_timer_d)),
    (S.CALLING, E.TRANSPORT_ERROR): (S.TERMINATED, (CI.report_timeout,)),
    (S.PROCEEDING, E.PROVISIONAL): (S.PROCEEDING, (CI.reset_timer_c, CI.pass_up)),
    (S.PROCEEDING, E.TIMER_C): (S.PROCEEDING, (CI.report_timer_c,)),
    (S.PROCEEDING, E.SUCCESS): (S.ACCEPTED, (CI.pass_up, CI.arm_timer_m)),
    (S.PROCEEDING, E.FAILURE): (S.COMPLETED, (CI.send_ack, CI.pass_up, CI.arm_timer_d)),
    (S.COMPLETED, E.FAILURE): (S.COMPLETED, (CI.send_ack,)),
    (S.COMPLETED, E.TIMER_D): (S.TERMINATED, ()),
    (S.COMPLETED, E.TRANSPORT_ERROR): (S.TERMINATED, ()),
    (S.ACCEPTED, E.SUCCESS): (S.ACCEPTED, (CI.pass_up,)),
    (S.ACCEPTED, E.TIMER_M): (S.TERMINATED, ()),
}


class ClientNonInvite(ClientTransaction):
    """Non-INVITE client transaction, RFC 3261 §17.1.2 (Figure 6)."""

    INITIAL = TRYING

    __slots__ = ()

    def start(self, now: float, out: Outbox) -> None:
        out.append(Send(self.request, self.peer))
        if self.peer.transport is _UDP:
            self._interval = self.config.t1
            self._arm(TIMER_E, self._interval, now)
        self._arm(TIMER_F, 64 * self.config.t1, now)

    def arm_timer_e(self, now: float, out: Outbox, _: Any) -> None:
        self._interval = min(2 * self._interval, self.config.t2)
        self._arm(TIMER_E, self._interval, now)

    def arm_timer_e_t2(self, now: float, out: Outbox, _: Any) -> None:
        self._arm(TIMER_E, self.config.t2, now)

    def arm_timer_k(self, now: float, out: Outbox, _: Any) -> None:
        self._disarm(TIMER_E, TIMER_F)
        self._arm(TIMER_K, 0.0 if self.peer.transport is not _UDP else self.config.t4, now)


CN = ClientNonInvite
ClientNonInvite.TABLE = {
    (S.TRYING, E.TIMER_E): (S.TRYING, (CN.retransmit, CN.arm_timer_e)),
    (S.TRYING, E.TIMER_F): (S.TERMINATED, (CN.report_timeout,)),
    (S.TRYING, E.PROVISIONAL): (S.PROCEEDING, (CN.pass_up,)),
    (S.TRYING, E.SUCCESS): (S.COMPLETED, (CN.pass_up, CN.arm_timer_k)),
    (S.TRYING, E.FAILURE): (S.COMPLETED, (CN.pass_up, CN.arm_timer_k)),
    (S.TRYING, E.TRANSPORT_ERROR): (S.TERMINATED, (CN.report_timeout,)),
    (S.PROCEEDING, E.TIMER_E): (S.PROCEEDING, (CN.retransmit, CN.arm_timer_e_t2)),
    (S.PROCEEDING, E.TIMER_F): (S.TERMINATED, (CN.report_timeout,)),
    (S.PROCEEDING, E.PROVISIONAL): (S.PROCEEDING, (CN.pass_up,)),
    (S.PROCEEDING, E.SUCCESS): (S.COMPLETED, (CN.pass_up, CN.arm_timer_k)),
    (S.PROCEEDING, E.FAILURE): (S.COMPLETED, (CN.pass_up, CN.arm_timer_k)),
    (S.PROCEEDING, E.TRANSPORT_ERROR): (S.TERMINATED, (CN.report_timeout,)),
    (S.COMPLETED, E.TIMER_K): (S.TERMINATED, ()),
}


class ServerTransaction(Transaction):
    __slots__ = ("last_response", "request")

    def __init__(self, *, request: SipMessage, **kw: Any) -> None:
        super().__init__(**kw)
        # The request, to answer it; released once a final response is sent.
        self.request: SipMessage | None = request
        self.last_response: bytes | None = None

    def receive_request(self, now: float, out: Outbox) -> None:
        self.fire(REQUEST, now, out)

    def send_response(self, data: bytes, status: int, now: float, out: Outbox) -> bool:
        event = (SEND_PROVISIONAL if status < 200 else
                 SEND_SUCCESS if status < 300 else SEND_FAILURE)
        fired = self.fire(event, now, out, data)
        if status >= 200:
            self.request = None
        return fired

    def _release(self) -> None:
        super()._release()
        self.request = None
        self.last_response = None

    def send(self, now: float, out: Outbox, data: Any) -> None:
        self.last_response = data
        out.append(Send(data, self.peer))

    def resend_last(self, now: float, out: Outbox, _: Any) -> None:
        if self.last_response is not None:
            out.append(Send(self.last_response, self.peer))


class ServerInvite(ServerTransaction):
    """INVITE server transaction, RFC 3261 §17.2.1 (Figure 7) and RFC 6026 §8.7."""

    INITIAL = PROCEEDING

    __slots__ = ()

    def arm_timer_g(self, now: float, out: Outbox, _: Any) -> None:
        if self.peer.transport is not _UDP:
            return
        self._arm(TIMER_G, self._interval, now)
        self._interval = min(2 * self._interval, self.config.t2)

    def arm_timer_h(self, now: float, out: Outbox, _: Any) -> None:
        self._arm(TIMER_H, 64 * self.config.t1, now)

    def arm_timer_i(self, now: float, out: Outbox, _: Any) -> None:
        self._disarm(TIMER_G, TIMER_H)
        self._arm(TIMER_I, 0.0 if self.peer.transport is not _UDP else self.config.t4, now)

    def arm_timer_l(self, now: float, out: Outbox, _: Any) -> None:
        self._arm(TIMER_L, 64 * self.config.t1, now)


SI = ServerInvite
ServerInvite.TABLE = {
    (S.PROCEEDING, E.REQUEST): (S.PROCEEDING, (SI.resend_last,)),
    (S.PROCEEDING, E.SEND_PROVISIONAL): (S.PROCEEDING, (SI.send,)),
    (S.PROCEEDING, E.SEND_SUCCESS): (S.ACCEPTED, (SI.send, SI.arm_timer_l)),
    (S.PROCEEDING, E.SEND_FAILURE): (S.COMPLETED, (SI.send, SI.arm_timer_g, SI.arm_timer_h)),
    (S.PROCEEDING, E.TRANSPORT_ERROR): (S.TERMINATED, ()),
    (S.COMPLETED, E.REQUEST): (S.COMPLETED, (SI.resend_last,)),
    (S.COMPLETED, E.TIMER_G): (S.COMPLETED, (SI.resend_last, SI.arm_timer_g)),
    (S.COMPLETED, E.TIMER_H): (S.TERMINATED, (SI.report_timeout,)),
    (S.COMPLETED, E.ACK): (S.CONFIRMED, (SI.arm_timer_i,)),
    (S.COMPLETED, E.TRANSPORT_ERROR): (S.TERMINATED, ()),
    (S.CONFIRMED, E.ACK): (S.CONFIRMED, ()),
    (S.CONFIRMED, E.REQUEST): (S.CONFIRMED, ()),
    (S.CONFIRMED, E.TIMER_I): (S.TERMINATED, ()),
    (S.ACCEPTED, E.REQUEST): (S.ACCEPTED, ()),
    (S.ACCEPTED, E.SEND_SUCCESS): (S.ACCEPTED, (SI.send,)),
    (S.ACCEPTED, E.TIMER_L): (S.TERMINATED, ()),
}


class ServerNonInvite(ServerTransaction):
    """Non-INVITE server transaction, RFC 3261 §17.2.2 (Figure 8)."""

    INITIAL = TRYING

    __slots__ = ()

    def arm_timer_j(self, now: float, out: Outbox, _: Any) -> None:
        self._arm(TIMER_J, 0.0 if self.peer.transport is not _UDP else 64 * self.config.t1, now)


SN = ServerNonInvite
ServerNonInvite.TABLE = {
    (S.TRYING, E.REQUEST): (S.TRYING, ()),
    (S.TRYING, E.SEND_PROVISIONAL): (S.PROCEEDING, (SN.send,)),
    (S.TRYING, E.SEND_SUCCESS): (S.COMPLETED, (SN.send, SN.arm_timer_j)),
    (S.TRYING, E.SEND_FAILURE): (S.COMPLETED, (SN.send, SN.arm_timer_j)),
    (S.TRYING, E.TRANSPORT_ERROR): (S.TERMINATED, ()),
    (S.PROCEEDING, E.REQUEST): (S.PROCEEDING, (SN.resend_last,)),
    (S.PROCEEDING, E.SEND_PROVISIONAL): (S.PROCEEDING, (SN.send,)),
    (S.PROCEEDING, E.SEND_SUCCESS): (S.COMPLETED, (SN.send, SN.arm_timer_j)),
    (S.PROCEEDING, E.SEND_FAILURE): (S.COMPLETED, (SN.send, SN.arm_timer_j)),
    (S.PROCEEDING, E.TRANSPORT_ERROR): (S.TERMINATED, ()),
    (S.COMPLETED, E.REQUEST): (S.COMPLETED, (SN.resend_last,)),
    (S.COMPLETED, E.TIMER_J): (S.TERMINATED, ()),
}
del CI, CN, SI, SN, S, E


class Machines(NamedTuple):
    """The transaction classes of one core: the reference above, or the compiled core's
    (``_cmachine.c``: the same tables, read from these classes; the steps in C)."""

    client: type[ClientTransaction]
    server: type[ServerTransaction]
    client_invite: type[ClientInvite]
    client_non_invite: type[ClientNonInvite]
    server_invite: type[ServerInvite]
    server_non_invite: type[ServerNonInvite]


REFERENCE = Machines(ClientTransaction, ServerTransaction, ClientInvite, ClientNonInvite,
                     ServerInvite, ServerNonInvite)
COMPILED: Machines | None = None
try:
    from . import _cmachine
except ImportError:  # installed without a C compiler: the reference alone
    pass
else:
    _cmachine.bind(State, Event, Send, Transport.UDP, _NO_ACK,
                   (ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite))
    COMPILED = Machines(
        _cmachine.ClientTransaction, _cmachine.ServerTransaction, _cmachine.ClientInvite,
        _cmachine.ClientNonInvite, _cmachine.ServerInvite, _cmachine.ServerNonInvite)


def machines() -> Machines:
    """The compiled core's transactions while that core is in use, else the reference (as
    ``timers.timer_heap`` chooses the heap)."""
    if COMPILED is not None and message.compiled_core() is not None:
        return COMPILED
    return REFERENCE
