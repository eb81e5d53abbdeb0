"""The number inventory in memory: single numbers and ranges, each owned by one account.

Lookups are on the hot path (every outbound INVITE): a dict for single numbers, and for ranges
a sorted list searched with bisect. Ranges never overlap (the store refuses it), so the only
candidate range for a number is the last one starting at or below it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class NumberBlock:
    """``first``..``last`` inclusive (equal for a single number), canonical digits."""

    first: str
    last: str
    account: str
    label: str = ""

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1


class Inventory:
    __slots__ = ("_range_firsts", "_ranges", "_singles", "blocks", "version")

    def __init__(self, blocks: list[NumberBlock], *, version: int = 0) -> None:
        self.blocks = blocks
        self.version = version
        self._singles: dict[str, NumberBlock] = {}
        ranges: list[tuple[int, int, NumberBlock]] = []
        for b in blocks:
            if b.first == b.last:
                self._singles[b.first] = b
            else:
                ranges.append((int(b.first), int(b.last), b))
        ranges.sort(key=lambda r: r[0])
        self._ranges = ranges
        self._range_firsts = [r[0] for r in ranges]

    def __len__(self) -> int:
        return len(self.blocks)

    def lookup(self, tn: str) -> NumberBlock | None:
        """The block holding canonical number ``tn``, or None."""
        block = self._singles.get(tn)
        if block is not None or not self._ranges:
            return block
        n = int(tn)
        i = bisect.bisect_right(self._range_firsts, n) - 1
        if i >= 0:
            first, last, block = self._ranges[i]
            if first <= n <= last and len(block.first) == len(tn):
                return block
        return None

    def owner(self, tn: str) -> str | None:
        block = self.lookup(tn)
        return block.account if block is not None else None

    def numbers_of(self, account: str, limit: int = 100_000) -> list[str]:
        """Every number an account owns (ranges expanded), up to ``limit``."""
        out: list[str] = []
        for b in self.blocks:
            if b.account != account:
                continue
            width = len(b.first)
            for n in range(int(b.first), int(b.last) + 1):
                out.append(str(n).zfill(width))
                if len(out) >= limit:
                    return out
        return out
