"""The call-record writer: what the shell queues reaches the store and the JSON Lines export
whole and once, in several multi-row INSERTs; past the queue's bound a record is counted as
dropped, never silently lost."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from stirshaken_proxy.engine.records import CallRecord
from stirshaken_proxy.io.records import Journal, RecordsConfig, RecordWriter
from stirshaken_proxy.store import sqlite as sqlite_store
from stirshaken_proxy.store.sqlite import NumberStore

NOW = time.time() - 3600  # within keep_days: a flush purges older records


def _record(i: int) -> CallRecord:
    return CallRecord(
        id=f"i1-0-{i:x}-{i}", call_id=f"{i}-3131@127.0.0.1", direction="outbound",
        account="demo" if i % 3 else None, orig="12025550100", presented="12025550100",
        dest="12025550199", attest="A", attest_reason="owned", verstat=None, verify_code=None,
        status=200 if i % 2 else 486, started=NOW + i, answered=None,
        ended=NOW + 1 + i, duration=0.0, instance="i1", worker=0)


async def test_every_record_is_written_once_in_several_turns(tmp_path: Path) -> None:
    counters: Counter[str] = Counter()
    writer = RecordWriter(RecordsConfig(jsonl_dir=tmp_path / "jsonl"),
                          lambda: NumberStore(tmp_path / "s.db"), counters=counters)
    count = 3 * sqlite_store._ROWS_PER_INSERT + 5  # four INSERTs
    for i in range(count):
        writer.add(_record(i))
    await writer.flush()
    await writer.flush()  # nothing left: nothing written twice
    await writer.close()
    assert counters["records_written"] == count and not writer.queue
    store = NumberStore(tmp_path / "s.db")
    stored = list(store.records(0.0))
    store.close()
    assert stored == [_record(i).as_json() for i in range(count)]
    lines = [line for path in sorted((tmp_path / "jsonl").glob("records-*.jsonl"))
             for line in path.read_text().splitlines()]
    assert sorted((json.loads(line) for line in lines), key=lambda r: r["started"]) == stored


async def test_past_the_queue_bound_records_are_counted_as_dropped(tmp_path: Path) -> None:
    counters: Counter[str] = Counter()
    writer = RecordWriter(RecordsConfig(queue_max=10),
                          lambda: NumberStore(tmp_path / "s.db"), counters=counters)
    for i in range(25):
        writer.add(_record(i))
    assert counters["records_dropped"] == 15 and len(writer.queue) == 10
    await writer.close()
    assert counters["records_written"] == 10


async def test_the_journal_holds_what_the_store_has_not_committed(tmp_path: Path) -> None:
    """Each record is in the journal from ``add`` on; a failed write keeps it (sealed) for
    the next flush; a committed one leaves no journal behind; a run that died with records
    journaled has them written first at the next start, once (at least once: an id written
    before stays as it was), and a line cut short is counted and skipped."""
    counters: Counter[str] = Counter()
    broken = True

    def store() -> NumberStore:
        if broken:
            raise OSError("the store is down")
        return NumberStore(tmp_path / "s.db")

    journal = Journal(tmp_path / "j", "records-journal-i1-w0")
    writer = RecordWriter(RecordsConfig(), store, counters=counters)
    assert await writer.recover(journal) == 0
    for i in range(5):
        writer.add(_record(i))
    assert len(journal.path.read_text().splitlines()) == 5  # in the kernel's keeping
    await writer.flush()  # fails: kept, sealed
    assert counters["records_write_failures"] == 1 and len(writer.queue) == 5
    for i in range(5, 8):
        writer.add(_record(i))
    left = journal.left_behind()
    assert len(left) == 2 and sum(len(p.read_text().splitlines()) for p in left) == 8
    broken = False
    await writer.flush()
    assert counters["records_written"] == 8 and journal.left_behind() == [journal.path]
    assert journal.path.read_text() == ""
    # A run that dies (no close) with three records journaled, one of them stored already.
    for i in (7, 8, 9):
        writer.add(_record(i))
    with open(journal.path, "a") as f:
        f.write('{"id": "cut-sh')  # a power loss mid-line
    again: Counter[str] = Counter()
    second = RecordWriter(RecordsConfig(), store, counters=again)
    assert await second.recover(Journal(tmp_path / "j", "records-journal-i1-w0")) == 3
    assert again["records_journal_unreadable"] == 1 and again["records_recovered"] == 3
    await second.close()
    assert not list((tmp_path / "j").iterdir())  # all committed: nothing left
    s = NumberStore(tmp_path / "s.db")
    stored = list(s.records(0.0))
    s.close()
    assert stored == [_record(i).as_json() for i in range(10)]
