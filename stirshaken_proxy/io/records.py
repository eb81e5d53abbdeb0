"""Call records written behind: a bounded queue the shell fills (never a store write on the
call path), flushed in batches to the store, and to rotated JSON Lines files; records older
than ``keep_days`` are purged. What does not fit in the queue is counted, never silently
lost.

A record's row (its JSON text included: 2 µs, written by the compiled engine) is made as it
is queued, on the event loop's thread; the writer's thread only inserts them (multi-row
INSERTs, the store's). Made in the writer's thread, the rows kept it wanting the GIL through
a whole flush: every time the loop let go of the GIL it woke the writer, and each such
hand-off cost both threads more than the row (at 5,000 calls/s the writer's threads spent
9.8-12.5 µs a call in five runs, 3.7 in two with the rows made on the loop, whose own time
did not change measurably). The database statements leave the GIL while SQLite works.

A record survives a crash of the process (kill -9, the OOM killer) from the moment it is
queued: ``add`` appends its JSON line to this worker's journal (one ``write`` to a file
opened O_APPEND: the kernel holds it from then on), and the engine emits a call's record
before the response that ends the call, so no final answer leaves before its record is
journaled. A flush seals the journal (renames it) as it takes the queue, and deletes the
sealed files once the store has committed their records; at start, records left in
journals (sealed or not) are written to the store first (an id written before is kept as it
was: at least once) and so queued for the webhook in the same transaction. A power loss may
still take what the kernel had not written to disk."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engine.records import CallRecord
from ..store.base import RecordRow, Store, call_record_row, record_row

log = logging.getLogger(__name__)
_PURGE_EVERY = 3600.0


@dataclass(frozen=True, kw_only=True)
class RecordsConfig:
    enabled: bool = True
    keep_days: float = 90.0
    flush_interval: float = 2.0
    queue_max: int = 100_000
    jsonl_dir: Path | None = None  # also append each record to records-YYYY-MM-DD[-wN].jsonl
    webhook: bool = False  # queue each record for the CRM webhook (store outbox)
    outbox_max: int = 1_000_000
    journal_dir: Path | None = None  # this worker's journal (default: beside the store)


class Journal:
    """Records queued but not yet in the store, in the kernel's keeping: one JSON line per
    record, appended; sealed (renamed) when a flush takes them, deleted when committed."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name  # records-journal-<instance>-w<worker>
        self.path = folder / f"{name}.jsonl"
        self._fd = -1
        self._sealed = 0

    def left_behind(self) -> list[Path]:
        """The journals a previous run left (sealed ones first, oldest first)."""
        sealed = sorted(self.folder.glob(f"{self.name}.sealed-*.jsonl"),
                        key=lambda p: int(p.name.rsplit("-", 1)[1].split(".")[0]))
        return sealed + ([self.path] if self.path.exists() else [])

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())

    def seal(self) -> Path | None:
        """The journal so far, renamed aside (None if empty); appends go to a new one."""
        if self._fd < 0 or os.fstat(self._fd).st_size == 0:
            return None
        self._sealed += 1
        sealed = self.folder / f"{self.name}.sealed-{time.time_ns()}-{self._sealed}.jsonl"
        os.rename(self.path, sealed)
        os.close(self._fd)
        self.open()
        return sealed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_journal(path: Path, counters: Counter[str]) -> list[RecordRow]:
    """The rows of a journal; a line that does not parse (cut short by a power loss) is
    counted and skipped."""
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                rows.append(record_row(json.loads(raw)))
            except (ValueError, KeyError, TypeError):
                counters["records_journal_unreadable"] += 1
                log.warning("%s:%d: not a call record, skipped", path, number)
    return rows


class RecordWriter:
    def __init__(self, config: RecordsConfig, store: Callable[[], Store], *,
                 counters: Counter[str], worker: int = 0) -> None:
        self.config = config
        self.store = store  # opened in the writer's thread on first use
        self.counters = counters
        self.worker = worker
        self.queue: deque[RecordRow] = deque()
        self._store: Store | None = None
        self._last_purge = 0.0
        self.journal: Journal | None = None
        self._sealed: list[Path] = []  # journals whose records the queue holds

    async def recover(self, journal: Journal) -> int:
        """Journal from here on, and write what a previous run journaled but did not
        commit. Returns how many records were recovered (already stored ones included)."""
        left = journal.left_behind()
        if journal.path in left:  # set aside: this run's records go to a new one at once
            aside = journal.folder / f"{journal.name}.sealed-{time.time_ns()}-0.jsonl"
            os.rename(journal.path, aside)
            left[-1] = aside
        journal.open()
        self.journal = journal
        rows = [row for path in left for row in read_journal(path, self.counters)]
        if rows:
            await asyncio.to_thread(self._write, rows)  # raises: the service does not start
            self.counters["records_recovered"] += len(rows)
            log.info("call records: %d recovered from %s", len(rows),
                     ", ".join(p.name for p in left))
        for path in left:
            path.unlink()
        return len(rows)

    def add(self, record: CallRecord) -> None:
        """Queue a record's row (bounded: past ``queue_max`` it is counted as dropped)."""
        if len(self.queue) >= self.config.queue_max:
            self.counters["records_dropped"] += 1
            return
        row = call_record_row(record)
        if self.journal is not None:
            self.journal.write(row[4])
        self.queue.append(row)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        if not self.queue and time.time() - self._last_purge < _PURGE_EVERY:
            return
        batch = list(self.queue)
        if self.journal is not None:  # the journal now holds exactly the batch's records
            sealed = self.journal.seal()
            if sealed is not None:
                self._sealed.append(sealed)
        try:
            await asyncio.to_thread(self._write, batch)
        except Exception as exc:  # noqa: BLE001 - kept for the next flush
            self.counters["records_write_failures"] += 1
            log.warning("call records not written (kept, retrying): %s", exc)
            return
        for _ in batch:
            self.queue.popleft()
        for path in self._sealed:  # committed: no longer needed
            path.unlink(missing_ok=True)
        self._sealed.clear()
        self.counters["records_written"] += len(batch)

    def _write(self, rows: list[RecordRow]) -> None:
        if self._store is None:
            self._store = self.store()
        dropped = self._store.add_records(rows, outbox=self.config.webhook,
                                          outbox_max=self.config.outbox_max)
        if dropped:
            self.counters["webhook_records_dropped"] += dropped
        if self.config.jsonl_dir is not None and rows:
            self._export(rows)
        now = time.time()
        if now - self._last_purge >= _PURGE_EVERY:
            self._last_purge = now
            purged = self._store.purge_records(now - self.config.keep_days * 86400)
            if purged:
                log.info("purged %d call records older than %g days", purged,
                         self.config.keep_days)

    def _export(self, rows: list[RecordRow]) -> None:
        folder = self.config.jsonl_dir
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[str]] = {}
        for _, started, _, _, line in rows:
            day = time.strftime("%Y-%m-%d", time.gmtime(started))
            by_day.setdefault(day, []).append(line)
        suffix = f"-w{self.worker}" if self.worker else ""
        for day, lines in by_day.items():
            with open(folder / f"records-{day}{suffix}.jsonl", "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

    async def close(self) -> None:
        await self.flush()
        if self.journal is not None:
            if not self.queue:  # all committed: nothing to recover next time
                self.journal.close()
                self.journal.path.unlink(missing_ok=True)
            else:
                self.journal.close()
            self.journal = None
        if self._store is not None:
            self._store.close()
            self._store = None


__all__ = ["Journal", "RecordWriter", "RecordsConfig", "read_journal"]
