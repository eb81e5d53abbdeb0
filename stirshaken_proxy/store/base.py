"""What every store backend shares: its errors and the CSV import of numbers (checked as a
whole, so nothing is half-imported)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine.records import CallRecord, json_text
from ..policy.digest import Credential
from ..policy.inventory import Inventory, NumberBlock, Packed
from ..policy.numbers import (
    NumberFormatError,
    block_text,
    overlapping,
    overlaps,
    parse_block_text,
)
from ..stir.rcd import Brand


class StoreError(Exception):
    """A problem with the store or with data given to it, phrased for the operator."""


@dataclass(frozen=True)
class ImportProblem:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class ImportError_(StoreError):
    def __init__(self, problems: list[ImportProblem]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}; nothing was imported")


def redact_url(url: str) -> str:
    """A database or Redis URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def refuse_overlaps(existing: list[NumberBlock], blocks: list[NumberBlock]) -> None:
    """Every backend's rule for an addition: nothing may overlap what is there (the store's
    blocks and the config's) or another new block. Raises StoreError."""
    clash = overlapping([*existing, *blocks])
    if clash is not None:
        a, b = clash
        raise StoreError(f"{block_text(b)} ({b.account}) overlaps {block_text(a)} "
                         f"({a.account})")


def removal(blocks: list[NumberBlock], first: str,
            last: str) -> tuple[list[NumberBlock], list[NumberBlock]]:
    """What removing first..last does to ``blocks``: the blocks it touches (to delete) and
    what remains of them on either side (to insert). Raises StoreError when it touches
    none."""
    lo, hi = int(first), int(last)
    width = len(first)
    hits = [b for b in blocks if len(b.first) == width
            and int(b.first) <= hi and int(b.last) >= lo]
    if not hits:
        raise StoreError(f"{first if first == last else first + '..' + last} is not in "
                         "the inventory")
    rest = [NumberBlock(first=str(a).zfill(width), last=str(z).zfill(width),
                        account=b.account, label=b.label)
            for b in hits for a, z in ((int(b.first), lo - 1), (hi + 1, int(b.last)))
            if a <= z]
    return hits, rest


class VersionedTables:
    """Digest credentials and brands, each versioned on its own (a change reloads only its
    table, never the inventory), and the reading of call records, for either backend. The
    backend gives ``db``, its placeholder ``mark`` and the two steps that differ: reading a
    meta value, and a write that bumps one in its transaction; the SQL of the versioned
    tables is written with ``?`` placeholders, which ``_versioned_write`` adapts."""

    db: Any
    mark = "?"

    def records(self, since: float, until: float = float("inf"),
                account: str | None = None) -> Iterator[dict[str, Any]]:
        where, args = records_where(since, until, account, self.mark)
        for (d,) in self.db.execute("SELECT data FROM call_records" + where
                                    + " ORDER BY started", args):
            yield json.loads(d)

    def count_records(self, since: float, until: float = float("inf"),
                      account: str | None = None) -> int:
        where, args = records_where(since, until, account, self.mark)
        row = self.db.execute("SELECT count(*) FROM call_records" + where, args).fetchone()
        return int(row[0]) if row else 0

    def _meta(self, key: str) -> int:
        raise NotImplementedError

    def _versioned_write(self, key: str, sql: str, args: tuple[object, ...]) -> int:
        raise NotImplementedError

    def credentials_version(self) -> int:
        return self._meta("credentials_version")

    def credentials(self) -> list[Credential]:
        return [Credential(username=u, account=a, realm=r, ha1_sha256=h2, ha1_md5=h1)
                for u, a, r, h2, h1 in self.db.execute(
                    "SELECT username, account, realm, ha1_sha256, ha1_md5 FROM credentials "
                    "ORDER BY username")]

    def set_credential(self, cred: Credential) -> None:
        self._versioned_write(
            "credentials_version",
            "INSERT INTO credentials(username, account, realm, ha1_sha256, ha1_md5, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
            "account = excluded.account, realm = excluded.realm, "
            "ha1_sha256 = excluded.ha1_sha256, ha1_md5 = excluded.ha1_md5, "
            "updated = excluded.updated",
            (cred.username, cred.account, cred.realm, cred.ha1_sha256, cred.ha1_md5,
             time.time()))

    def remove_credential(self, username: str) -> bool:
        return self._versioned_write("credentials_version",
                                     "DELETE FROM credentials WHERE username = ?",
                                     (username,)) > 0

    def brands_version(self) -> int:
        return self._meta("brands_version")

    def brands(self) -> dict[str, Brand]:
        return {scope: Brand(name=n, logo=lg, logo_digest=d) for scope, n, lg, d in
                self.db.execute("SELECT scope, name, logo, logo_digest FROM brands "
                                "ORDER BY scope")}

    def set_brand(self, scope: str, brand: Brand) -> None:
        self._versioned_write(
            "brands_version",
            "INSERT INTO brands(scope, name, logo, logo_digest, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (scope) DO UPDATE SET name = excluded.name, logo = excluded.logo, "
            "logo_digest = excluded.logo_digest, updated = excluded.updated",
            (scope, brand.name, brand.logo, brand.logo_digest, time.time()))

    def remove_brand(self, scope: str) -> bool:
        return self._versioned_write("brands_version", "DELETE FROM brands WHERE scope = ?",
                                     (scope,)) > 0


def records_where(since: float, until: float, account: str | None,
                  mark: str) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause (and its arguments) picking call records started in [since, until),
    of one account or all; ``mark`` is the backend's placeholder."""
    sql = f" WHERE started >= {mark} AND started < {mark}"
    args: tuple[object, ...] = (since, until)
    if account is not None:
        sql += f" AND account = {mark}"
        args += (account,)
    return sql, args


RecordRow = tuple[str, float, str | None, str, str]  # id, started, account, direction, JSON
# One encoder for every record: json.dumps with any option builds a new one per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":")).encode


def record_row(record: dict[str, Any]) -> RecordRow:
    """A call record (as JSON) as the call_records row of either backend."""
    return (record["id"], record["started"], record.get("account"), record["direction"],
            _COMPACT_JSON(record))


def call_record_row(record: CallRecord) -> RecordRow:
    """``record_row(record.as_json())`` without the dict: the JSON written by the compiled
    engine (engine.records.json_text, the same text)."""
    return record.id, record.started, record.account, record.direction, json_text(record)


class HealthStore(Protocol):
    """Number-health statistics written behind by the service (JSON per number)."""

    def save(self, rows: list[tuple[str, dict[str, object]]], now: float) -> None: ...

    def load(self) -> dict[str, dict[str, object]]: ...


class Store(Protocol):
    """A backend of the number inventory (SQLite, PostgreSQL). Every change bumps the version
    and rebuilds the packed snapshot in its transaction; the service loads the snapshot and
    never queries per call."""

    def version(self) -> int: ...

    def packed(self) -> tuple[int, Packed]: ...

    def load(self, extra: Iterable[NumberBlock] = ()) -> Inventory: ...

    def blocks(self, account: str | None = None) -> list[NumberBlock]: ...

    def add(self, blocks: list[NumberBlock], *, fixed: Iterable[NumberBlock] = ()) -> None: ...

    def remove(self, first: str, last: str) -> list[NumberBlock]: ...

    def health(self) -> HealthStore: ...

    def credentials_version(self) -> int: ...

    def credentials(self) -> list[Credential]: ...

    def set_credential(self, cred: Credential) -> None: ...

    def remove_credential(self, username: str) -> bool: ...

    def brands_version(self) -> int: ...

    def brands(self) -> dict[str, Brand]: ...

    def set_brand(self, scope: str, brand: Brand) -> None: ...

    def remove_brand(self, scope: str) -> bool: ...

    def add_records(self, rows: list[RecordRow], *, outbox: bool = False,
                    outbox_max: int = 0) -> int: ...

    def outbox_due(self, now: float, limit: int) -> list[tuple[str, str, int]]: ...

    def outbox_done(self, ids: list[str]) -> None: ...

    def outbox_retry(self, ids: list[str], next_try: float) -> None: ...

    def records(self, since: float, until: float = ...,
                account: str | None = None) -> Iterator[dict[str, Any]]:
        """Streamed oldest first, so a month of records is never all in memory."""
        ...

    def count_records(self, since: float, until: float = ...,
                      account: str | None = None) -> int: ...

    def purge_records(self, before: float) -> int: ...

    def close(self) -> None: ...


MAX_RANGE_SIZE = 10_000  # an NPA-NXX block: a bigger range needs an explicit flag
MAX_LABEL = 200


def _rows(reader: Iterator[list[str]], problems: list[ImportProblem],
          path: str) -> Iterator[list[str]]:
    """The reader's rows; a row the csv module cannot read (a field over its 128 KiB limit,
    a stray quote) is a problem with its line, and reading stops there."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = getattr(reader, "line_num", 0)
            problems.append(ImportProblem(path, line, "row", f"unreadable CSV: {exc}"))
            return


def parse_numbers_csv(path: str, text: str, *, accounts: set[str], country_code: str = "1",
                      existing: list[NumberBlock] | None = None,
                      max_range: int | None = MAX_RANGE_SIZE,
                      on_row: Callable[[int], None] | None = None) -> list[NumberBlock]:
    """Rows ``tn,account,label`` (a header row naming the columns is optional). ``tn`` is a
    number or a range of at most ``max_range`` numbers (None: no limit). Every problem is
    reported with its line and field; raises ImportError_ when there is any, so nothing is
    half-imported. ``on_row`` is told the lines each row took (a progress bar)."""
    problems: list[ImportProblem] = []
    blocks: list[NumberBlock] = []
    lines: dict[int, int] = {}
    reader = csv.reader(io.StringIO(text))
    read = 0
    for row in _rows(reader, problems, path):
        line = reader.line_num
        if on_row is not None:
            on_row(line - read)
            read = line
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if line == 1 and row[0].strip().lower() in ("tn", "range", "number"):
            continue
        if len(row) < 2 or len(row) > 3:
            problems.append(ImportProblem(path, line, "row",
                                          f"expected 2 or 3 columns (tn, account, label), "
                                          f"got {len(row)}"))
            continue
        tn_text, account = row[0], row[1].strip()
        label = row[2].strip() if len(row) == 3 else ""
        try:
            first, last = parse_block_text(tn_text, country_code=country_code)
        except NumberFormatError as exc:
            problems.append(ImportProblem(path, line, "tn", str(exc)))
            continue
        if account not in accounts:
            known = ", ".join(sorted(accounts)) or "none"
            problems.append(ImportProblem(path, line, "account",
                                          f"unknown account {account!r} (configured: {known})"))
            continue
        block = NumberBlock(first=first, last=last, account=account, label=label)
        if max_range is not None and block.size > max_range:
            problems.append(ImportProblem(
                path, line, "tn", f"a range of {block.size:,} numbers is over the limit of "
                f"{max_range:,} (an NPA-NXX block); import it with --allow-large-ranges "
                "if it is really yours"))
            continue
        if len(label) > MAX_LABEL:
            problems.append(ImportProblem(path, line, "label",
                                          f"over {MAX_LABEL} characters ({len(label):,})"))
            continue
        blocks.append(block)
        lines[id(block)] = line
    for a, b in overlaps([*(existing or ()), *blocks]):
        if id(a) not in lines and id(b) not in lines:
            continue  # both already in the inventory: not this file's problem
        new, old = (a, b) if id(b) not in lines else (b, a)
        where = (f"line {lines[id(old)]}" if id(old) in lines
                 else f"already in the inventory for {old.account}")
        problems.append(ImportProblem(path, lines[id(new)], "tn",
                                      f"{block_text(new)} overlaps {block_text(old)} ({where})"))
    problems.sort(key=lambda p: p.line)
    if problems:
        raise ImportError_(problems)
    return blocks
