"""RFC 3261 §17 transactions as pure state machines driven by an explicit clock."""

from .machine import (
    AckTemplate,
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
from .timers import TimerHeap, Timers, timer_heap

__all__ = [
    "AckTemplate",
    "ClientInvite",
    "ClientNonInvite",
    "Event",
    "ServerInvite",
    "ServerNonInvite",
    "State",
    "TimerConfig",
    "TimerHeap",
    "Timers",
    "Transaction",
    "TransactionUser",
    "timer_heap",
]
