"""A heap of transaction timers. Cancelling is lazy: an entry fires only if the transaction
still has that timer armed at that instant."""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .machine import Event, Transaction


class TimerHeap:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Transaction, Event]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, txn: Transaction, timer: Event) -> None:
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

    def pop_due(self, now: float) -> list[tuple[Transaction, Event]]:
        """Remove and return the armed timers due at ``now``, earliest first."""
        heap = self._heap
        due: list[tuple[Transaction, Event]] = []
        while heap and heap[0][0] <= now:
            when, _, txn, name = heapq.heappop(heap)
            if txn.deadlines.get(name) == when:
                del txn.deadlines[name]
                due.append((txn, name))
        return due
