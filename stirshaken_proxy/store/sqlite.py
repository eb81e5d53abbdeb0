"""The number inventory in SQLite: created on first use, schema versioned (user_version).

The service never queries per call: it loads the inventory into memory and reloads it when
the ``version`` in the meta table changes (every change bumps it in the same transaction).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..policy.inventory import Inventory, NumberBlock
from ..policy.numbers import (
    NumberFormatError,
    block_text,
    overlapping,
    overlaps,
    parse_block_text,
)

SCHEMA_VERSION = 2
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE numbers (
            first TEXT NOT NULL PRIMARY KEY,
            last TEXT NOT NULL,
            account TEXT NOT NULL,
            label TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX numbers_account ON numbers(account)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta(key, value) VALUES ('inventory_version', 0)",
    ),
    2: (
        """CREATE TABLE number_health (
            tn TEXT NOT NULL PRIMARY KEY,
            data TEXT NOT NULL,
            updated REAL NOT NULL
        )""",
    ),
}


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


class NumberStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None,
                                      check_same_thread=False)
            self._migrate()
            self._wal()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the number store: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def _wal(self, timeout: float = 10.0) -> None:
        """WAL journal (readers never wait for the writer). Switching takes an exclusive lock
        and SQLite does not wait for it, so another process opening the store at the same
        moment is waited for here."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION. The version is read under the write lock, so
        processes opening a new store together (workers, the CLI) migrate it once."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {current} is newer than this "
                                 f"program's {SCHEMA_VERSION}")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- reading ----------------------------------------------------------------------------
    def version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='inventory_version'").fetchone()
        return int(row[0])

    def blocks(self, account: str | None = None) -> list[NumberBlock]:
        sql = "SELECT first, last, account, label FROM numbers"
        args: tuple[str, ...] = ()
        if account is not None:
            sql += " WHERE account = ?"
            args = (account,)
        sql += " ORDER BY length(first), first"
        return [NumberBlock(first=f, last=la, account=a, label=lb)
                for f, la, a, lb in self.db.execute(sql, args)]

    def load(self, extra: Iterable[NumberBlock] = ()) -> Inventory:
        """The whole inventory (plus ``extra`` blocks, e.g. from the config) in memory."""
        version = self.version()
        return Inventory([*extra, *self.blocks()], version=version)

    # -- writing ----------------------------------------------------------------------------
    def _write(self, fn: Callable[[], None]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            fn()
            self.db.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'inventory_version'")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def add(self, blocks: list[NumberBlock], *, fixed: Iterable[NumberBlock] = ()) -> None:
        """Add blocks atomically; overlaps with each other, the store or ``fixed`` blocks
        (those from the config) are refused."""
        existing = [*fixed, *self.blocks()]
        clash = overlapping([*existing, *blocks])
        if clash is not None:
            a, b = clash
            raise StoreError(f"{block_text(b)} ({b.account}) overlaps {block_text(a)} "
                             f"({a.account})")

        def insert() -> None:
            self.db.executemany(
                "INSERT INTO numbers(first, last, account, label) VALUES (?, ?, ?, ?)",
                [(b.first, b.last, b.account, b.label) for b in blocks])

        self._write(insert)

    def remove(self, first: str, last: str) -> list[NumberBlock]:
        """Remove first..last. Blocks partly inside are split; returns what was removed."""
        lo, hi = int(first), int(last)
        width = len(first)
        hits = [b for b in self.blocks() if len(b.first) == width
                and int(b.first) <= hi and int(b.last) >= lo]
        if not hits:
            raise StoreError(f"{first if first == last else first + '..' + last} is not in "
                             "the inventory")

        def change() -> None:
            for b in hits:
                self.db.execute("DELETE FROM numbers WHERE first = ?", (b.first,))
                for a, z in ((int(b.first), lo - 1), (hi + 1, int(b.last))):
                    if a <= z:
                        self.db.execute(
                            "INSERT INTO numbers(first, last, account, label) "
                            "VALUES (?, ?, ?, ?)",
                            (str(a).zfill(width), str(z).zfill(width), b.account, b.label))

        self._write(change)
        return hits


class HealthRows:
    """Number-health statistics, written behind by the service (JSON per number)."""

    def __init__(self, store: NumberStore) -> None:
        self.db = store.db

    def save(self, rows: list[tuple[str, dict[str, object]]], now: float) -> None:
        if not rows:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "INSERT INTO number_health(tn, data, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(tn) DO UPDATE SET data = excluded.data, updated = excluded.updated",
                [(tn, json.dumps(data, separators=(",", ":")), now) for tn, data in rows])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def load(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for tn, data in self.db.execute("SELECT tn, data FROM number_health"):
            out[tn] = json.loads(data)
        return out


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
                      max_range: int | None = MAX_RANGE_SIZE) -> list[NumberBlock]:
    """Rows ``tn,account,label`` (a header row naming the columns is optional). ``tn`` is a
    number or a range of at most ``max_range`` numbers (None: no limit). Every problem is
    reported with its line and field; raises ImportError_ when there is any, so nothing is
    half-imported."""
    problems: list[ImportProblem] = []
    blocks: list[NumberBlock] = []
    lines: dict[int, int] = {}
    reader = csv.reader(io.StringIO(text))
    for row in _rows(reader, problems, path):
        line = reader.line_num
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
