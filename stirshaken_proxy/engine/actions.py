"""What the engines hand the shell besides datagrams (pure values)."""

from __future__ import annotations

from typing import NamedTuple

from ..policy.health import HealthEvent
from ..policy.presence import Selection
from ..sip.transport import Send
from ..stir.verification import FetchRequest
from .records import CallRecord


class Fetch(NamedTuple):
    """Action: fetch this URL and give the engine what came back (``fetched``)."""

    request: FetchRequest


class PickNumber(NamedTuple):
    """Action: ask the shared number health which of ``candidates`` may present the call
    (the first under ``limit`` calls in the last hour, counted in the same step) and give the
    engine the answer (``number_picked(token, Picked)``)."""

    token: int
    candidates: tuple[Selection, ...]
    limit: int
    now: float


# Send: datagrams or stream writes; Fetch: x5u chains and CRLs; HealthEvent: a change to a
# number's health, for the other replicas; PickNumber: a caller ID from the shared state;
# CallRecord: a call that ended, for the store and the exports.
Action = Send | Fetch | HealthEvent | PickNumber | CallRecord

__all__ = ["Action", "CallRecord", "Fetch", "HealthEvent", "PickNumber", "Send"]
