"""The number inventory in memory: single numbers and ranges, each owned by one account.

Lookups are on the hot path (every outbound INVITE) and the inventory of a large provider has
millions of numbers, so it is held packed: a number is one 64-bit key (its digit count and its
value: "0123" and "123" are different numbers), singles in one sorted array beside an array
of account indexes, ranges as three arrays (first key, last key, account), 12 bytes a number.
A lookup is two binary searches. Ranges never overlap (the store refuses it), so the only
candidate range for a number is the last one starting at or below it.
"""

from __future__ import annotations

import bisect
import itertools
import json
import operator
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

KEY_SPAN = 10**16  # numbers have at most 15 digits (E.164): key = digits * KEY_SPAN + value
MAX_DIGITS = 15


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


def number_key(tn: str) -> int:
    """The packed key of canonical digits ``tn``; raises ValueError for anything else."""
    if not 0 < len(tn) <= MAX_DIGITS or not tn.isascii():
        raise ValueError(tn)
    return len(tn) * KEY_SPAN + int(tn)


def key_number(key: int) -> str:
    width, value = divmod(key, KEY_SPAN)
    return str(value).zfill(width)


class Packed(NamedTuple):
    """One packed inventory: what the store's snapshot holds and a worker loads."""

    accounts: tuple[str, ...]
    single_keys: array[int]  # 'q', sorted
    single_accounts: array[int]  # 'I', index into accounts
    range_firsts: array[int]  # 'q', sorted
    range_lasts: array[int]
    range_accounts: array[int]

    @property
    def entries(self) -> int:
        return len(self.single_keys) + len(self.range_firsts)

    def to_bytes(self) -> bytes:
        """A snapshot: one JSON header line, then the arrays (little-endian)."""
        arrays = self[1:]
        header = {"accounts": list(self.accounts), "lengths": [len(a) for a in arrays]}
        out = [json.dumps(header).encode() + b"\n"]
        for a in arrays:
            if sys.byteorder == "big":  # pragma: no cover - the snapshot is little-endian
                a = array(a.typecode, a)
                a.byteswap()
            out.append(a.tobytes())
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Packed:
        end = data.index(b"\n")
        header = json.loads(data[:end])
        pos = end + 1
        arrays = []
        for typecode, length in zip("qIqqI", header["lengths"], strict=True):
            a = array(typecode)
            size = length * a.itemsize
            a.frombytes(data[pos:pos + size])
            if len(a) != length:
                raise ValueError("truncated inventory snapshot")
            if sys.byteorder == "big":  # pragma: no cover
                a.byteswap()
            arrays.append(a)
            pos += size
        return cls(tuple(header["accounts"]), *arrays)


def pack(blocks: Iterable[NumberBlock]) -> Packed:
    """Pack blocks (any order; they must not overlap)."""
    rows = sorted((number_key(b.first), number_key(b.last), b.account) for b in blocks)
    return pack_rows(rows)


def pack_rows(rows: Iterable[tuple[int, int, str]]) -> Packed:
    """Pack (first key, last key, account) rows given in first-key order (the store's)."""
    accounts: dict[str, int] = {}
    single_keys, single_accounts = array("q"), array("I")
    range_firsts, range_lasts, range_accounts = array("q"), array("q"), array("I")
    add_key, add_account = single_keys.append, single_accounts.append
    for first, last, account in rows:
        index = accounts.get(account)
        if index is None:
            index = accounts[account] = len(accounts)
        if first == last:
            add_key(first)
            add_account(index)
        else:
            range_firsts.append(first)
            range_lasts.append(last)
            range_accounts.append(index)
    return Packed(tuple(accounts), single_keys, single_accounts, range_firsts, range_lasts,
                  range_accounts)


class _Part:
    """A packed inventory with a bucket index over its singles: the key space between the
    smallest and largest key cut in one bucket per 16 keys, each bucket's first index kept,
    so a lookup bisects about 16 neighbouring keys (cache-friendly) instead of all of them."""

    __slots__ = ("_buckets", "_count", "_lo", "_span", "packed")

    def __init__(self, packed: Packed) -> None:
        self.packed = packed
        keys = packed.single_keys
        self._count = max(1, len(keys) // 16)
        self._lo = keys[0] if keys else 0
        self._span = keys[-1] - self._lo + 1 if keys else 1
        lo, span, count = self._lo, self._span, self._count
        self._buckets = array("I", (bisect.bisect_left(keys, lo + span * b // count)
                                    for b in range(count + 1)))

    def owner(self, key: int) -> str | None:
        p = self.packed
        keys = p.single_keys
        offset = key - self._lo
        if 0 <= offset < self._span:
            b = offset * self._count // self._span
            n = len(keys)
            i = bisect.bisect_left(keys, key, self._buckets[b], min(self._buckets[b + 1] + 1, n))
            if i < n and keys[i] == key:
                return p.accounts[p.single_accounts[i]]
        if p.range_firsts:
            j = bisect.bisect_right(p.range_firsts, key) - 1
            if j >= 0 and key <= p.range_lasts[j]:
                return p.accounts[p.range_accounts[j]]
        return None


class Inventory:
    """The packed store snapshot and the (few) numbers written in the config."""

    __slots__ = ("_numbers", "_parts", "version")

    def __init__(self, blocks: Iterable[NumberBlock] = (), *, version: int = 0,
                 packed: Packed | None = None) -> None:
        extra = pack(blocks)
        self._parts = tuple(_Part(p) for p in (extra, packed) if p is not None and p.entries)
        self.version = version
        self._numbers: dict[tuple[str, int], list[str]] = {}  # numbers_of, computed once

    def __len__(self) -> int:
        return sum(p.packed.entries for p in self._parts)

    def owner(self, tn: str) -> str | None:
        """The account owning canonical number ``tn``, or None."""
        try:
            key = number_key(tn)
        except ValueError:
            return None
        for part in self._parts:
            found = part.owner(key)
            if found is not None:
                return found
        return None

    def numbers_of(self, account: str, limit: int = 100_000) -> list[str]:
        """Every number an account owns (ranges expanded), up to ``limit``; computed once."""
        cached = self._numbers.get((account, limit))
        if cached is not None:
            return cached
        out: list[str] = []
        for part in (p.packed for p in self._parts):
            if account not in part.accounts:
                continue
            index = part.accounts.index(account)
            mine = map(operator.eq, part.single_accounts, itertools.repeat(index))
            for key in itertools.compress(part.single_keys, mine):  # C speed over millions
                out.append(key_number(key))
                if len(out) >= limit:
                    break
            for first, last, owner in zip(part.range_firsts, part.range_lasts,
                                          part.range_accounts, strict=True):
                if owner != index or len(out) >= limit:
                    continue
                out.extend(key_number(k) for k in range(first, min(last, first + limit -
                                                                    len(out) - 1) + 1))
        self._numbers[(account, limit)] = out
        return out
