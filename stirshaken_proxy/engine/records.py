"""Call records (pure): one per initial INVITE the proxy handled, made when the call ends (its
final failure, its BYE, or when it is answered locally) and handed out as an action.

The record says what a sales team audits: who called whom (the number dialed and the number
presented), the attestation given and why, or the verification verdict of an inbound call,
the final response, answer and end times.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from ..sip.message import untracked

OUTBOUND = "outbound"  # from the dialer side: signed toward the carrier
INBOUND = "inbound"  # from the carrier side: verified toward the PBX


class CallRecord(NamedTuple):
    """One call (an action: the shell writes it behind to the store and the exports).
    The JSON schema of ``as_json`` is README's "Call records". (Immutable, and a NamedTuple
    rather than a frozen dataclass: one is made per call, and a frozen dataclass sets each
    of its 18 fields through object.__setattr__.)"""

    id: str  # unique across instances and workers: the webhook's idempotency key
    call_id: str
    direction: str  # "outbound" or "inbound"
    account: str | None
    orig: str | None  # the calling number as the dialer sent it (canonical)
    presented: str | None  # the number presented (local presence may replace it)
    dest: str | None
    attest: str | None  # A, B, C (outbound: what we signed; inbound: what was verified)
    attest_reason: str | None  # outbound: why that level (or why it was not signed)
    verstat: str | None  # inbound: TN-Validation-Passed / -Failed / No-TN-Validation
    verify_code: int | None  # inbound: the RFC 8224 code of a failure
    status: int  # the final response to the INVITE
    started: float
    answered: float | None
    ended: float
    duration: float  # seconds from answer to BYE (0 when not answered)
    instance: str
    worker: int

    def as_json(self) -> dict[str, Any]:
        # Every field is a str, number or None: no deep copy needed.
        return dict(zip(_FIELDS, self, strict=True))


_FIELDS = CallRecord._fields


def json_text(record: CallRecord) -> str:
    """``record.as_json()`` as compact JSON text, exactly as ``json.dumps(...,
    separators=(",", ":"))`` writes it (keys in field order, strings ASCII-escaped, floats
    as their repr): the row the store keeps and the JSON Lines export. Written field by
    field, it costs a fifth of the encoder's time, which sets itself up anew for every
    record; tests/engine/test_records.py compares the two."""
    r = record
    return "".join((
        '{"id":', encode_basestring_ascii(r.id),
        ',"call_id":', encode_basestring_ascii(r.call_id),
        ',"direction":', encode_basestring_ascii(r.direction),
        ',"account":', _text(r.account), ',"orig":', _text(r.orig),
        ',"presented":', _text(r.presented), ',"dest":', _text(r.dest),
        ',"attest":', _text(r.attest), ',"attest_reason":', _text(r.attest_reason),
        ',"verstat":', _text(r.verstat),
        ',"verify_code":', "null" if r.verify_code is None else str(r.verify_code),
        ',"status":', str(r.status), ',"started":', _number(r.started),
        ',"answered":', "null" if r.answered is None else _number(r.answered),
        ',"ended":', _number(r.ended), ',"duration":', _number(r.duration),
        ',"instance":', encode_basestring_ascii(r.instance), ',"worker":', str(r.worker),
        "}"))


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(value)
    return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"


@dataclass(slots=True, init=False)
class RecordFacts:
    """What the STI leg learned of a call while deciding it (set per request). (Its __init__
    written out: the one dataclass generates is interpreted Python, even in the compiled
    engine, and every call makes one.)"""

    account: str | None
    orig: str | None
    presented: str | None
    dest: str | None
    attest: str | None
    attest_reason: str | None
    verstat: str | None
    verify_code: int | None

    def __init__(self, *, account: str | None = None, orig: str | None = None,
                 presented: str | None = None, dest: str | None = None,
                 attest: str | None = None, attest_reason: str | None = None,
                 verstat: str | None = None, verify_code: int | None = None) -> None:
        self.account = account
        self.orig = orig
        self.presented = presented
        self.dest = dest
        self.attest = attest
        self.attest_reason = attest_reason
        self.verstat = verstat
        self.verify_code = verify_code


_NO_FACTS = RecordFacts()  # (never changed: what a call the STI leg learned nothing of has)


class _Open:
    """A call in progress: what was learned of it when it started, and its answer."""

    __slots__ = ("answered", "call_id", "direction", "facts", "started", "status")

    def __init__(self, call_id: str, direction: str, facts: RecordFacts, started: float) -> None:
        self.call_id = call_id
        self.direction = direction
        self.facts = facts
        self.started = started
        self.status = 0
        self.answered: float | None = None


class CallLog:
    """Calls in progress by Call-ID (bounded: past ``max_calls`` the oldest is recorded as it
    stands), their records emitted when they end."""

    def __init__(self, *, instance: str = "", worker: int = 0, max_calls: int = 200_000,
                 enabled: bool = False) -> None:
        self.enabled = enabled  # the application turns it on ([records]: record_calls)
        self.max_calls = max_calls
        self.open_calls: dict[str, _Open] = {}  # answered or not, not ended
        self._seq = itertools.count(1)
        self.name(instance, worker)

    def name(self, instance: str, worker: int) -> None:
        """The instance and worker whose records these are (in each record and its id)."""
        self.instance = instance
        self.worker = worker
        self._prefix = f"{instance}-{worker}-"  # of every record's id

    def __len__(self) -> int:
        return len(self.open_calls)

    def start(self, call_id: str, direction: str, facts: RecordFacts | None, now: float,
              out: list[Any]) -> None:
        if not self.enabled:
            return
        # (out of the cyclic GC, as its facts and its record: none refers back to anything)
        self.open_calls[call_id] = untracked(_Open(call_id, direction, facts or _NO_FACTS, now))
        if len(self.open_calls) > self.max_calls:
            oldest = next(iter(self.open_calls))
            out.append(self._record(self.open_calls.pop(oldest), now))

    def answered_here(self, call_id: str, direction: str, facts: RecordFacts | None, status: int,
                      now: float, out: list[Any]) -> None:
        """An initial INVITE we answered ourselves with a final failure (refused, rejected)."""
        self.start(call_id, direction, facts, now, out)
        self.final(call_id, status, now, out)

    def final(self, call_id: str, status: int, now: float, out: list[Any]) -> None:
        call = self.open_calls.get(call_id)
        if call is None or call.status:
            return
        call.status = status
        if 200 <= status < 300:
            call.answered = now
        else:
            out.append(self._record(self.open_calls.pop(call_id), now))

    def ended(self, call_id: str, now: float, out: list[Any]) -> None:
        call = self.open_calls.pop(call_id, None)
        if call is not None:
            out.append(self._record(call, now))

    def close(self, now: float) -> list[CallRecord]:
        """At shutdown: every call still open, recorded as it stands (status 0: none yet)."""
        calls, self.open_calls = self.open_calls, {}
        return [self._record(call, now) for call in calls.values()]

    def _record(self, call: _Open, now: float) -> CallRecord:
        answered, f = call.answered, call.facts
        # In field order (see CallRecord), made by tuple.__new__: a NamedTuple's own __new__
        # is interpreted Python, and one record is made for every call. (hex(): int's
        # __format__ is called through its generic method path.)
        return untracked(tuple.__new__(CallRecord, (
            f"{self._prefix}{hex(int(call.started * 1000))[2:]}-{next(self._seq)}",
            call.call_id, call.direction, f.account, f.orig, f.presented, f.dest, f.attest,
            f.attest_reason, f.verstat, f.verify_code, call.status or 0, call.started,
            answered, now, round(now - answered, 3) if answered is not None else 0.0,
            self.instance, self.worker)))


__all__ = ["INBOUND", "OUTBOUND", "CallLog", "CallRecord", "RecordFacts"]
