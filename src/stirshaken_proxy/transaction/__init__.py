"""RFC 3261 §17 transactions as pure state machines driven by an explicit clock."""

from .machine import (
    ClientInvite,
    ClientNonInvite,
    Event,
    ServerInvite,
    ServerNonInvite,
    State,
    TimerConfig,
    Transaction,
    TransactionUser,
)
from .timers import TimerHeap

__all__ = [
    "ClientInvite",
    "ClientNonInvite",
    "Event",
    "ServerInvite",
    "ServerNonInvite",
    "State",
    "TimerConfig",
    "TimerHeap",
    "Transaction",
    "TransactionUser",
]
