"""The number inventory in PostgreSQL, shared by several instances.

Same tables and rules as the SQLite store: every change bumps the inventory version and
rebuilds the packed snapshot in its transaction, and sends ``NOTIFY stirshaken_inventory`` (at
commit), so every instance listening reloads at once; the version is also polled. Schema
migrations are versioned and run under an advisory lock, so instances starting together
migrate once. Number-health rows are kept per instance (``[store] instance``): each instance's
replica is its own unless number health is shared in Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

from ..policy.inventory import KEY_SPAN, Inventory, NumberBlock, Packed, pack_rows
from .base import (
    RecordRow,
    StoreError,
    VersionedTables,
    redact_url,
    refuse_overlaps,
    removal,
)

log = logging.getLogger(__name__)
CHANNEL = "stirshaken_inventory"
_LOCK = 0x5715_4A4E  # pg_advisory_xact_lock key of our migrations
SCHEMA_VERSION = 5
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE numbers (
            first text PRIMARY KEY,
            last text NOT NULL,
            account text NOT NULL,
            label text NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX numbers_account ON numbers(account)",
        "CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL)",
        "INSERT INTO meta(key, value) VALUES ('inventory_version', 0)",
        """CREATE TABLE number_health (
            instance text NOT NULL,
            tn text NOT NULL,
            data text NOT NULL,
            updated double precision NOT NULL,
            PRIMARY KEY (instance, tn)
        )""",
        """CREATE TABLE inventory_snapshot (
            id integer PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL,
            data bytea NOT NULL
        )""",
    ),
    2: (
        """CREATE TABLE credentials (
            username text PRIMARY KEY,
            account text NOT NULL,
            realm text NOT NULL,
            ha1_sha256 text NOT NULL,
            ha1_md5 text NOT NULL,
            updated double precision NOT NULL
        )""",
        "INSERT INTO meta(key, value) VALUES ('credentials_version', 0)",
    ),
    3: (
        """CREATE TABLE brands (
            scope text PRIMARY KEY,
            name text NOT NULL,
            logo text NOT NULL DEFAULT '',
            logo_digest text NOT NULL DEFAULT '',
            updated double precision NOT NULL
        )""",
        "INSERT INTO meta(key, value) VALUES ('brands_version', 0)",
    ),
    4: (
        """CREATE TABLE call_records (
            id text PRIMARY KEY,
            started double precision NOT NULL,
            account text,
            direction text NOT NULL,
            data text NOT NULL
        )""",
        "CREATE INDEX call_records_started ON call_records(started)",
    ),
    5: (
        """CREATE TABLE webhook_outbox (
            seq bigserial,
            id text PRIMARY KEY,
            data text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_try double precision NOT NULL DEFAULT 0
        )""",
    ),
}
_KEYED_ROWS = (f"SELECT length(first) * {KEY_SPAN}::bigint + first::bigint AS k, "
               f"length(last) * {KEY_SPAN}::bigint + last::bigint, account FROM numbers "
               "ORDER BY k")


class PgStore(VersionedTables):
    mark = "%s"  # psycopg's placeholder

    def __init__(self, url: str, *, instance: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.instance = instance
        self.connect_timeout = connect_timeout
        self._db: psycopg.Connection[Any] | None = None
        self._db = self._connect()
        try:
            self._migrate()
        except psycopg.Error as exc:
            raise StoreError(f"{redact_url(url)}: cannot prepare the schema: {exc}") from None

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=max(1, int(self.connect_timeout)))
        except psycopg.Error as exc:
            raise StoreError(f"{redact_url(self.url)}: cannot connect to PostgreSQL: "
                             f"{str(exc).strip()}") from None

    @property
    def db(self) -> psycopg.Connection[Any]:
        """The connection, made again when it was lost (the next call retries)."""
        if self._db is None or self._db.closed or self._db.broken:
            self._db = self._connect()
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _migrate(self) -> None:
        db = self.db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(f"{redact_url(self.url)}: schema version {current} is newer than "
                                 f"this program's {SCHEMA_VERSION}")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
            if current < SCHEMA_VERSION:
                self._snapshot(db)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version(version) VALUES (%s)", (SCHEMA_VERSION,))

    # -- reading ----------------------------------------------------------------------------
    def version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'inventory_version'")
        return int(row.fetchone()[0])  # type: ignore[index]

    def packed(self) -> tuple[int, Packed]:
        row = self.db.execute("SELECT version, data FROM inventory_snapshot").fetchone()
        assert row is not None
        return int(row[0]), Packed.from_bytes(bytes(row[1]))

    def load(self, extra: Iterable[NumberBlock] = ()) -> Inventory:
        version, packed = self.packed()
        return Inventory(extra, version=version, packed=packed)

    def blocks(self, account: str | None = None) -> list[NumberBlock]:
        sql = "SELECT first, last, account, label FROM numbers"
        args: tuple[str, ...] = ()
        if account is not None:
            sql += " WHERE account = %s"
            args = (account,)
        sql += " ORDER BY length(first), first"
        return [NumberBlock(first=f, last=la, account=a, label=lb)
                for f, la, a, lb in self.db.execute(sql, args)]

    # -- writing ----------------------------------------------------------------------------
    def _snapshot(self, db: psycopg.Connection[Any]) -> None:
        packed = pack_rows(db.execute(_KEYED_ROWS))
        db.execute("INSERT INTO inventory_snapshot(id, version, data) "
                   "SELECT 1, value, %s FROM meta WHERE key = 'inventory_version' "
                   "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
                   "data = excluded.data", (packed.to_bytes(),))

    def _write(self, fn: Callable[[psycopg.Connection[Any]], None]) -> None:
        db = self.db
        with db.transaction():
            db.execute("LOCK TABLE numbers IN EXCLUSIVE MODE")  # one writer at a time
            fn(db)
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'inventory_version'")
            self._snapshot(db)
            db.execute(f"NOTIFY {CHANNEL}")  # delivered at commit

    def add(self, blocks: list[NumberBlock], *, fixed: Iterable[NumberBlock] = ()) -> None:
        fixed = tuple(fixed)

        def insert(db: psycopg.Connection[Any]) -> None:
            refuse_overlaps([*fixed, *self.blocks()], blocks)  # under the lock
            with db.cursor() as cur, cur.copy(
                    "COPY numbers (first, last, account, label) FROM STDIN") as copy:
                for b in blocks:
                    copy.write_row((b.first, b.last, b.account, b.label))

        self._write(insert)

    def remove(self, first: str, last: str) -> list[NumberBlock]:
        hits: list[NumberBlock] = []

        def change(db: psycopg.Connection[Any]) -> None:
            touched, rest = removal(self.blocks(), first, last)  # under the lock
            hits.extend(touched)
            with db.cursor() as cur:
                cur.executemany("DELETE FROM numbers WHERE first = %s",
                                [(b.first,) for b in touched])
                cur.executemany(
                    "INSERT INTO numbers(first, last, account, label) VALUES (%s, %s, %s, %s)",
                    [(b.first, b.last, b.account, b.label) for b in rest])

        self._write(change)
        return hits

    def health(self) -> PgHealthRows:
        return PgHealthRows(self)

    # -- call records ---------------------------------------------------------------------
    def add_records(self, rows: list[RecordRow], *, outbox: bool = False,
                    outbox_max: int = 0) -> int:
        if not rows:
            return 0
        dropped = 0
        with self.db.transaction(), self.db.cursor() as cur:
            cur.executemany(
                "INSERT INTO call_records(id, started, account, direction, data) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING", rows)
            if outbox:
                cur.executemany("INSERT INTO webhook_outbox(id, data) VALUES (%s, %s) "
                                "ON CONFLICT (id) DO NOTHING", [(r[0], r[4]) for r in rows])
                row = cur.execute("SELECT count(*) FROM webhook_outbox").fetchone()
                waiting = int(row[0]) if row else 0
                if waiting > outbox_max:
                    dropped = waiting - outbox_max
                    cur.execute("DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM "
                                "webhook_outbox ORDER BY seq LIMIT %s)", (dropped,))
        return dropped

    def purge_records(self, before: float) -> int:
        return int(self.db.execute("DELETE FROM call_records WHERE started < %s",
                                   (before,)).rowcount)

    def outbox_due(self, now: float, limit: int) -> list[tuple[str, str, int]]:
        return [(i, d, int(a)) for i, d, a in self.db.execute(
            "SELECT id, data, attempts FROM webhook_outbox WHERE next_try <= %s "
            "ORDER BY seq LIMIT %s", (now, limit))]

    def outbox_done(self, ids: list[str]) -> None:
        with self.db.cursor() as cur:
            cur.executemany("DELETE FROM webhook_outbox WHERE id = %s", [(i,) for i in ids])

    def outbox_retry(self, ids: list[str], next_try: float) -> None:
        with self.db.cursor() as cur:
            cur.executemany("UPDATE webhook_outbox SET attempts = attempts + 1, "
                            "next_try = %s WHERE id = %s", [(next_try, i) for i in ids])

    def _meta(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        assert row is not None
        return int(row[0])

    def _versioned_write(self, key: str, sql: str, args: tuple[object, ...]) -> int:
        db = self.db
        with db.transaction():
            changed = db.execute(sql.replace("?", "%s"), args).rowcount
            db.execute("UPDATE meta SET value = value + 1 WHERE key = %s", (key,))
            db.execute(f"NOTIFY {CHANNEL}")
        return int(changed)


class PgHealthRows:
    def __init__(self, store: PgStore) -> None:
        self.store = store

    def save(self, rows: list[tuple[str, dict[str, object]]], now: float) -> None:
        if not rows:
            return
        db = self.store.db
        with db.transaction(), db.cursor() as cur:
            cur.executemany(
                "INSERT INTO number_health(instance, tn, data, updated) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (instance, tn) DO UPDATE SET "
                "data = excluded.data, updated = excluded.updated",
                [(self.store.instance, tn, json.dumps(data, separators=(",", ":")), now)
                 for tn, data in rows])

    def load(self) -> dict[str, dict[str, object]]:
        return {tn: json.loads(data) for tn, data in self.store.db.execute(
            "SELECT tn, data FROM number_health WHERE instance = %s", (self.store.instance,))}


class InventoryListener:
    """``LISTEN stirshaken_inventory``: calls ``changed`` for every change committed by any
    instance; reconnects (with a growing pause) when the connection is lost."""

    def __init__(self, url: str, changed: Callable[[], None]) -> None:
        self.url = url
        self.changed = changed
        self.connected = False

    async def run(self) -> None:
        pause = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                             connect_timeout=5)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected, pause = True, 0.5
                    self.changed()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self.changed()
            except psycopg.Error as exc:
                if self.connected:
                    log.warning("PostgreSQL notifications lost, reconnecting: %s",
                                str(exc).strip())
            self.connected = False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
