"""A heap of transaction timers. Cancelling is lazy: an entry fires only if the transaction
still has that timer armed at that instant.

``TimerHeap`` here is the reference; the compiled core has the same type in C (one array, no
tuple per timer for the garbage collector), which ``timer_heap()`` gives when that core is in
use."""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Protocol, cast

from ..sip import message

if TYPE_CHECKING:
    from .machine import Transaction


class Timers(Protocol):
    def __len__(self) -> int: ...

    def push(self, when: float, txn: Transaction, timer: str) -> None: ...

    def earliest(self) -> float | None: ...

    def next_deadline(self) -> float | None: ...

    def pop_due(self, now: float) -> list[tuple[Transaction, str]]: ...


def timer_heap() -> Timers:
    """A new heap: the compiled core's when that core is in use, else the reference."""
    built = message.compiled_core()
    return cast(Timers, built.TimerHeap()) if built is not None else TimerHeap()


class TimerHeap:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Transaction, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, txn: Transaction, timer: str) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), txn, timer))

    def earliest(self) -> float | None:
        """The first entry's time, armed or not (never later than next_deadline)."""
        return self._heap[0][0] if self._heap else None

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, txn, name = heap[0]
            if txn.deadlines.get(name) == when:
                return when
            heapq.heappop(heap)  # stale: cancelled or re-armed
        return None

    def pop_due(self, now: float) -> list[tuple[Transaction, str]]:
        """Remove and return the armed timers due at ``now``, earliest first."""
        heap = self._heap
        due: list[tuple[Transaction, str]] = []
        while heap and heap[0][0] <= now:
            when, _, txn, name = heapq.heappop(heap)
            if txn.deadlines.get(name) == when:
                del txn.deadlines[name]
                due.append((txn, name))
        return due
