"""The number inventory in SQLite: created on first use, schema versioned (user_version).

The service never queries per call: it loads the inventory into memory and reloads it when
the ``version`` in the meta table changes (every change bumps it in the same transaction).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path

from ..policy.inventory import KEY_SPAN, Inventory, NumberBlock, Packed, pack_rows
from .base import (
    ImportError_,
    ImportProblem,
    RecordRow,
    StoreError,
    VersionedTables,
    parse_numbers_csv,
    refuse_overlaps,
    removal,
)

SCHEMA_VERSION = 7
# Rows a multi-row INSERT carries. Each statement SQLite runs lets go of the GIL and must take
# it back from the event loop's thread, which a busy loop gives up only at its switch interval
# (5 ms): one statement a row (executemany) stretched a flush of 10,000 call records over
# thousands of those hand-offs, each one a stall of the loop.
_ROWS_PER_INSERT = 256


def _insert_rows(db: sqlite3.Connection, head: str, width: int,
                 rows: Sequence[tuple[object, ...]]) -> None:
    """``head`` + ``(?, ...)`` for each row of ``width`` values, ``_ROWS_PER_INSERT`` rows a
    statement (SQLite's limit on parameters is far above 256 * 5)."""
    one = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        part = rows[start:start + _ROWS_PER_INSERT]
        db.execute(head + ", ".join([one] * len(part)), list(chain.from_iterable(part)))


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
    # The inventory packed as the service holds it (policy.inventory.Packed), rebuilt in the
    # transaction of every change: a worker loads millions of numbers in one read.
    3: (
        """CREATE TABLE inventory_snapshot (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            data BLOB NOT NULL
        )""",
    ),
    # Dialers' digest credentials: HA1 digests only, never a password.
    4: (
        """CREATE TABLE credentials (
            username TEXT NOT NULL PRIMARY KEY,
            account TEXT NOT NULL,
            realm TEXT NOT NULL,
            ha1_sha256 TEXT NOT NULL,
            ha1_md5 TEXT NOT NULL,
            updated REAL NOT NULL
        )""",
        "INSERT INTO meta(key, value) VALUES ('credentials_version', 0)",
    ),
    # Brands (Rich Call Data) by scope: "account:<name>" or "tn:<number>".
    5: (
        """CREATE TABLE brands (
            scope TEXT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL,
            logo TEXT NOT NULL DEFAULT '',
            logo_digest TEXT NOT NULL DEFAULT '',
            updated REAL NOT NULL
        )""",
        "INSERT INTO meta(key, value) VALUES ('brands_version', 0)",
    ),
    # Call records (engine.records.CallRecord as JSON), kept for [records] keep_days.
    6: (
        """CREATE TABLE call_records (
            id TEXT NOT NULL PRIMARY KEY,
            started REAL NOT NULL,
            account TEXT,
            direction TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX call_records_started ON call_records(started)",
    ),
    # Records waiting for the CRM webhook (at least once, across restarts).
    7: (
        """CREATE TABLE webhook_outbox (
            id TEXT NOT NULL PRIMARY KEY,
            data TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try REAL NOT NULL DEFAULT 0
        )""",
    ),
}
# Rows in first-key order, the keys computed by SQLite (policy.inventory.number_key).
_KEYED_ROWS = (f"SELECT length(first) * {KEY_SPAN} + CAST(first AS INTEGER) AS k, "
               f"length(last) * {KEY_SPAN} + CAST(last AS INTEGER), account FROM numbers "
               "ORDER BY k")


class NumberStore(VersionedTables):
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
            if current < 3:
                self._snapshot()
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

    def packed(self) -> tuple[int, Packed]:
        """The inventory's version and its packed snapshot (one consistent read)."""
        row = self.db.execute("SELECT version, data FROM inventory_snapshot").fetchone()
        return int(row[0]), Packed.from_bytes(row[1])

    def load(self, extra: Iterable[NumberBlock] = ()) -> Inventory:
        """The whole inventory (plus ``extra`` blocks, e.g. from the config) in memory."""
        version, packed = self.packed()
        return Inventory(extra, version=version, packed=packed)

    def _snapshot(self) -> None:
        """Pack the numbers table into the snapshot (inside the caller's transaction)."""
        packed = pack_rows(self.db.execute(_KEYED_ROWS))
        self.db.execute("INSERT OR REPLACE INTO inventory_snapshot(id, version, data) "
                        "SELECT 1, value, ? FROM meta WHERE key = 'inventory_version'",
                        (packed.to_bytes(),))

    # -- writing ----------------------------------------------------------------------------
    def _write(self, fn: Callable[[], None]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            fn()
            self.db.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'inventory_version'")
            self._snapshot()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def add(self, blocks: list[NumberBlock], *, fixed: Iterable[NumberBlock] = ()) -> None:
        """Add blocks atomically; overlaps with each other, the store or ``fixed`` blocks
        (those from the config) are refused."""
        refuse_overlaps([*fixed, *self.blocks()], blocks)

        def insert() -> None:
            self.db.executemany(
                "INSERT INTO numbers(first, last, account, label) VALUES (?, ?, ?, ?)",
                [(b.first, b.last, b.account, b.label) for b in blocks])

        self._write(insert)

    def remove(self, first: str, last: str) -> list[NumberBlock]:
        """Remove first..last. Blocks partly inside are split; returns what was removed."""
        hits, rest = removal(self.blocks(), first, last)

        def change() -> None:
            self.db.executemany("DELETE FROM numbers WHERE first = ?",
                                [(b.first,) for b in hits])
            self.db.executemany(
                "INSERT INTO numbers(first, last, account, label) VALUES (?, ?, ?, ?)",
                [(b.first, b.last, b.account, b.label) for b in rest])

        self._write(change)
        return hits

    def health(self) -> HealthRows:
        return HealthRows(self)

    # -- call records ---------------------------------------------------------------------
    def add_records(self, rows: list[RecordRow], *, outbox: bool = False,
                    outbox_max: int = 0) -> int:
        """Write records (an id seen before is kept as it was: written at least once), and
        queue them for the webhook in the same transaction; past ``outbox_max`` waiting,
        the oldest are dropped (returned: how many)."""
        if not rows:
            return 0
        dropped = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            _insert_rows(self.db, "INSERT OR IGNORE INTO call_records(id, started, account, "
                         "direction, data) VALUES ", 5, rows)
            if outbox:
                _insert_rows(self.db, "INSERT OR IGNORE INTO webhook_outbox(id, data) VALUES ",
                             2, [(r[0], r[4]) for r in rows])
                waiting = self.db.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0]
                if waiting > outbox_max:
                    dropped = waiting - outbox_max
                    self.db.execute("DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM "
                                    "webhook_outbox ORDER BY rowid LIMIT ?)", (dropped,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return dropped

    def purge_records(self, before: float) -> int:
        cur = self.db.execute("DELETE FROM call_records WHERE started < ?", (before,))
        return int(cur.rowcount)

    def outbox_due(self, now: float, limit: int) -> list[tuple[str, str, int]]:
        """Records the webhook may send now: (id, JSON, attempts so far)."""
        return [(i, d, int(a)) for i, d, a in self.db.execute(
            "SELECT id, data, attempts FROM webhook_outbox WHERE next_try <= ? "
            "ORDER BY rowid LIMIT ?", (now, limit))]

    def outbox_done(self, ids: list[str]) -> None:
        self.db.executemany("DELETE FROM webhook_outbox WHERE id = ?", [(i,) for i in ids])

    def outbox_retry(self, ids: list[str], next_try: float) -> None:
        self.db.executemany("UPDATE webhook_outbox SET attempts = attempts + 1, next_try = ? "
                            "WHERE id = ?", [(next_try, i) for i in ids])

    def _meta(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def _versioned_write(self, key: str, sql: str, args: tuple[object, ...]) -> int:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            changed = self.db.execute(sql, args).rowcount
            self.db.execute("UPDATE meta SET value = value + 1 WHERE key = ?", (key,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return int(changed)

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


__all__ = ["HealthRows", "ImportError_", "ImportProblem", "NumberStore", "StoreError",
           "parse_numbers_csv"]
