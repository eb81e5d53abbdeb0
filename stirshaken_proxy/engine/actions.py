"""What the engines hand the shell besides datagrams (pure values)."""

from __future__ import annotations

from typing import NamedTuple

from ..policy.health import HealthEvent
from ..sip.transport import Send
from ..stir.verification import FetchRequest


class Fetch(NamedTuple):
    """Action: fetch this URL and give the engine what came back (``fetched``)."""

    request: FetchRequest


# Send: datagrams or stream writes; Fetch: x5u chains and CRLs; HealthEvent: a change to a
# number's health, for the other workers' replicas.
Action = Send | Fetch | HealthEvent

__all__ = ["Action", "Fetch", "HealthEvent", "Send"]
