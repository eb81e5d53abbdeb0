"""RFC 3261 §17 transactions (and RFC 6026 Accepted) under an explicit clock: every timer
is checked at the exact instant it must fire."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from stirshaken_proxy.sip.message import SipMessage, parse_message
from stirshaken_proxy.sip.transport import Peer, Send, Side, Transport
from stirshaken_proxy.transaction import (
    AckTemplate,
    ClientInvite,
    ClientNonInvite,
    Event,
    ServerInvite,
    ServerNonInvite,
    State,
    TimerConfig,
    Transaction,
    timer_heap,
)
from stirshaken_proxy.transaction.machine import TIMER_C, ClientTransaction, machines

UDP = Peer(Side.CARRIER, Transport.UDP, "127.0.0.1", 5080)
TCP = Peer(Side.CARRIER, Transport.TCP, "127.0.0.1", 5080)
CFG = TimerConfig()  # T1 0.5 s, T2 4 s, T4 5 s, D 32 s, C 180 s
# The core in use: the compiled transactions, or the reference (STIRSHAKEN_CORE=python).
M = machines()


class TU:
    """A transaction user that records what its transactions tell it."""

    def __init__(self) -> None:
        self.timers = timer_heap()
        self.responses: list[tuple[float, int]] = []
        self.timeouts: list[float] = []
        self.terminated: list[Transaction] = []
        self.timer_c: list[float] = []

    def on_response(self, txn: ClientTransaction, msg: SipMessage, now: float,
                    out: list[Send]) -> None:
        self.responses.append((now, msg.status))

    def on_timeout(self, txn: Transaction, now: float, out: list[Send]) -> None:
        self.timeouts.append(now)

    def on_terminated(self, txn: Transaction) -> None:
        self.terminated.append(txn)

    def on_timer_c(self, txn: ClientInvite, now: float, out: list[Send]) -> None:
        self.timer_c.append(now)

    def advance(self, to: float, sends: list[tuple[float, bytes]]) -> None:
        """Fire every timer due up to ``to``, each at its own deadline."""
        while True:
            when = self.timers.next_deadline()
            if when is None or when > to:
                return
            out: list[Send] = []
            for txn, name in self.timers.pop_due(when):
                txn.timer_fired(name, when, out)
            sends.extend((when, s.data) for s in out)


def response(status: int, method: str = "INVITE") -> SipMessage:
    return parse_message(
        b"SIP/2.0 %d X\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKabc\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 %s\r\n"
        b"Content-Length: 0\r\n\r\n" % (status, method.encode()))


def client_invite(tu: TU, peer: Peer = UDP, cfg: TimerConfig = CFG) -> ClientInvite:
    return M.client_invite(key=("b", "INVITE"), peer=peer, tu=tu, config=cfg, request=b"INVITE",
                        ack_template=AckTemplate(head=b"ACK sip:c@d SIP/2.0\r\nVia: v\r\n",
                                                 from_call_id=b"From: f\r\n", cseq=1))


def request(method: str = "INVITE") -> SipMessage:
    return parse_message(
        b"%s sip:c@d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKs\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 %s\r\n"
        b"Content-Length: 0\r\n\r\n" % (method.encode(), method.encode()))


def times(sends: list[tuple[float, Any]]) -> list[float]:
    return [t for t, _ in sends]


# -- INVITE client (§17.1.1) ----------------------------------------------------------------
def test_timer_a_doubles_and_timer_b_times_out() -> None:
    tu = TU()
    txn = client_invite(tu)
    out: list[Send] = []
    txn.start(0.0, out)
    sends: list[tuple[float, bytes]] = []
    tu.advance(100.0, sends)
    # Timer A: T1, 2T1, 4T1, ... ; Timer B = 64*T1 = 32 s ends it.
    assert len(out) == 1
    assert times(sends) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert tu.timeouts == [32.0]
    assert txn.state is State.TERMINATED and tu.terminated == [txn]


def test_reliable_transport_has_no_timer_a() -> None:
    tu = TU()
    txn = client_invite(tu, TCP)
    txn.start(0.0, [])
    sends: list[tuple[float, bytes]] = []
    tu.advance(100.0, sends)
    assert sends == [] and tu.timeouts == [32.0]


def test_provisional_stops_retransmission_and_timer_b() -> None:
    tu = TU()
    txn = client_invite(tu)
    txn.start(0.0, [])
    sends: list[tuple[float, bytes]] = []
    tu.advance(1.0, sends)
    txn.receive_response(response(180), 1.0, [])
    tu.advance(100.0, sends)
    assert times(sends) == [0.5]
    assert txn.state is State.PROCEEDING and tu.timeouts == []
    assert tu.responses == [(1.0, 180)]


def test_failure_sends_ack_and_timer_d() -> None:
    tu = TU()
    txn = client_invite(tu)
    txn.start(0.0, [])
    out: list[Send] = []
    txn.receive_response(response(486), 0.2, out)
    assert txn.state is State.COMPLETED
    assert out[0].data.startswith(b"ACK sip:c@d SIP/2.0\r\nVia: v\r\nFrom: f\r\nTo: <sip:c@d>;tag=2")
    assert b"CSeq: 1 ACK\r\n" in out[0].data
    retrans: list[Send] = []
    txn.receive_response(response(486), 1.0, retrans)  # retransmitted final: ACK again
    assert [s.data for s in retrans] == [out[0].data]
    assert tu.responses == [(0.2, 486)]  # passed up once
    tu.advance(32.1, [])
    assert txn.state is State.COMPLETED
    tu.advance(32.2, [])
    assert txn.state is State.TERMINATED  # Timer D = 32 s after 0.2


def test_timer_d_is_zero_on_tcp() -> None:
    tu = TU()
    txn = client_invite(tu, TCP)
    txn.start(0.0, [])
    txn.receive_response(response(500), 1.0, [])
    tu.advance(1.0, [])
    assert txn.state is State.TERMINATED


def test_2xx_accepted_state_and_timer_m() -> None:
    tu = TU()
    txn = client_invite(tu)
    txn.start(0.0, [])
    txn.receive_response(response(200), 1.0, [])
    assert txn.state is State.ACCEPTED
    txn.receive_response(response(200), 2.0, [])  # 2xx retransmission passes up (RFC 6026)
    assert tu.responses == [(1.0, 200), (2.0, 200)]
    tu.advance(32.9, [])
    assert txn.state is State.ACCEPTED
    tu.advance(33.0, [])
    assert txn.state is State.TERMINATED


def test_timer_c_fires_and_resets_on_provisional() -> None:
    tu = TU()
    txn = client_invite(tu, cfg=TimerConfig(timer_c=10.0))
    txn.start(0.0, [])
    txn.receive_response(response(100), 0.1, [])  # 100 does not reset Timer C
    txn.receive_response(response(180), 4.0, [])  # 180 does
    tu.advance(13.9, [])
    assert tu.timer_c == []
    tu.advance(14.0, [])
    assert tu.timer_c == [14.0]


def test_timer_c_of_minutes_is_reached_in_steps_and_resets() -> None:
    """The default 180 s: its heap entry is never more than 64*T1 ahead, the steps on the
    way report nothing, and each provisional response moves the deadline."""
    tu = TU()
    txn = client_invite(tu)
    txn.start(0.0, [])
    txn.receive_response(response(180), 1.0, [])  # Timer C: 181 s
    now = 1.0
    while now < 100.0:
        when = tu.timers.next_deadline()
        assert when is not None and when - now <= 32.0
        now = when
        tu.advance(now, [])
    txn.receive_response(response(183), 100.0, [])  # Timer C: 280 s
    tu.advance(279.9, [])
    assert tu.timer_c == []
    assert txn.deadlines[TIMER_C] - 279.9 <= 32.0
    tu.advance(280.0, [])
    assert tu.timer_c == [280.0]


def test_an_answered_invite_leaves_the_timer_heap_with_its_timer_m() -> None:
    """A cancelled timer's entry keeps its transaction until it is due: after a 2xx, nothing
    of the transaction may stay in the heap much past Timer M (not Timer C's 3 minutes)."""
    tu = TU()
    txn = client_invite(tu)
    txn.start(0.0, [])
    txn.receive_response(response(180), 0.5, [])
    txn.receive_response(response(200), 1.0, [])
    tu.advance(33.0, [])
    assert txn.state is State.TERMINATED
    assert txn.ack_template.head == b"" and txn.request == b""  # what it keeps is small
    tu.advance(64.5, [])
    assert len(tu.timers) == 0
    assert tu.terminated == [txn]
    tu.terminated.clear()
    assert sys.getrefcount(txn) == 2  # this name and getrefcount's argument: nothing else


# -- non-INVITE client (§17.1.2) ------------------------------------------------------------
def test_timer_e_caps_at_t2_and_timer_f() -> None:
    tu = TU()
    txn = M.client_non_invite(key=("b", "BYE"), peer=UDP, tu=tu, config=CFG, request=b"BYE")
    txn.start(0.0, [])
    sends: list[tuple[float, bytes]] = []
    tu.advance(100.0, sends)
    assert times(sends) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert tu.timeouts == [32.0] and txn.state is State.TERMINATED


def test_timer_e_is_t2_in_proceeding_and_timer_k() -> None:
    tu = TU()
    txn = M.client_non_invite(key=("b", "BYE"), peer=UDP, tu=tu, config=CFG, request=b"BYE")
    txn.start(0.0, [])
    sends: list[tuple[float, bytes]] = []
    tu.advance(0.6, sends)  # one retransmission at 0.5, next due at 1.5
    txn.receive_response(response(100, "BYE"), 0.6, [])
    tu.advance(6.0, sends)
    assert times(sends) == [0.5, 1.5, 5.5]  # in Proceeding, each new Timer E is T2
    txn.receive_response(response(200, "BYE"), 6.0, [])
    assert txn.state is State.COMPLETED
    tu.advance(10.9, sends)
    assert txn.state is State.COMPLETED and times(sends) == [0.5, 1.5, 5.5]
    tu.advance(11.0, sends)
    assert txn.state is State.TERMINATED  # Timer K = T4 = 5 s


# -- INVITE server (§17.2.1) ----------------------------------------------------------------
def test_timer_g_retransmits_final_until_timer_h() -> None:
    tu = TU()
    txn = M.server_invite(key="k", peer=UDP, tu=tu, config=CFG, request=request())
    out: list[Send] = []
    txn.send_response(b"SIP/2.0 486", 486, 0.0, out)
    sends: list[tuple[float, bytes]] = []
    tu.advance(100.0, sends)
    assert times(sends) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert tu.timeouts == [32.0] and txn.state is State.TERMINATED


def test_ack_confirms_and_timer_i() -> None:
    tu = TU()
    txn = M.server_invite(key="k", peer=UDP, tu=tu, config=CFG, request=request())
    txn.send_response(b"SIP/2.0 486", 486, 0.0, [])
    out: list[Send] = []
    txn.receive_request(0.2, out)  # INVITE retransmission: the final again
    assert [s.data for s in out] == [b"SIP/2.0 486"]
    sends: list[tuple[float, bytes]] = []
    tu.advance(1.0, sends)
    txn.fire(Event.ACK, 1.0, [])
    assert txn.state is State.CONFIRMED
    tu.advance(5.9, sends)
    assert times(sends) == [0.5] and txn.state is State.CONFIRMED
    tu.advance(6.0, sends)
    assert txn.state is State.TERMINATED  # Timer I = T4


def test_server_invite_reliable_has_no_timer_g_and_i_zero() -> None:
    tu = TU()
    txn = M.server_invite(key="k", peer=TCP, tu=tu, config=CFG, request=request())
    txn.send_response(b"SIP/2.0 486", 486, 0.0, [])
    sends: list[tuple[float, bytes]] = []
    tu.advance(10.0, sends)
    assert sends == []
    txn.fire(Event.ACK, 10.0, [])
    tu.advance(10.0, sends)
    assert txn.state is State.TERMINATED


def test_server_invite_2xx_accepted_timer_l() -> None:
    tu = TU()
    txn = M.server_invite(key="k", peer=UDP, tu=tu, config=CFG, request=request())
    out: list[Send] = []
    txn.send_response(b"SIP/2.0 100", 100, 0.0, out)
    txn.receive_request(0.1, out)  # retransmitted INVITE: the 100 again
    txn.send_response(b"SIP/2.0 200", 200, 1.0, out)
    txn.send_response(b"SIP/2.0 200", 200, 1.5, out)  # a 2xx retransmission is forwarded
    txn.receive_request(1.6, out)  # absorbed in Accepted
    assert [s.data for s in out] == [b"SIP/2.0 100", b"SIP/2.0 100", b"SIP/2.0 200",
                                     b"SIP/2.0 200"]
    tu.advance(32.9, [])
    assert txn.state is State.ACCEPTED
    tu.advance(33.0, [])
    assert txn.state is State.TERMINATED


# -- non-INVITE server (§17.2.2) ------------------------------------------------------------
@pytest.mark.parametrize(("peer", "timer_j"), [(UDP, 32.0), (TCP, 0.0)])
def test_timer_j(peer: Peer, timer_j: float) -> None:
    tu = TU()
    txn = M.server_non_invite(key="k", peer=peer, tu=tu, config=CFG, request=request("BYE"))
    out: list[Send] = []
    txn.receive_request(0.0, out)
    assert out == []  # Trying: nothing to resend yet
    txn.send_response(b"SIP/2.0 200", 200, 1.0, out)
    txn.receive_request(1.0, out)
    assert [s.data for s in out] == [b"SIP/2.0 200"] * 2  # the final again for a retransmission
    tu.advance(1.0 + timer_j - 0.01, [])
    if timer_j:
        assert txn.state is State.COMPLETED
    tu.advance(1.0 + timer_j, [])
    assert txn.state is State.TERMINATED


def test_transitions_are_tables_citing_rfc_states() -> None:
    for cls in (ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite):
        assert cls.__doc__ and "RFC 3261 §17" in cls.__doc__
        for (state, event), (_next_state, actions) in cls.TABLE.items():
            assert isinstance(state, State) and isinstance(event, Event)
            # Each step is one of the class's own functions (no names looked up at run time).
            assert all(getattr(cls, a.__name__) is a for a in actions), (cls, actions)
