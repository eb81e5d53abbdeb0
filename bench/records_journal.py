"""What the call-record journal costs a call: ``RecordWriter.add`` with and without it,
alternated in one run, best of several rounds (µs a record).

    .venv/bin/python -m bench.records_journal

The journal is one ``write`` of the record's JSON line per call (io.records); the store's
own write is behind, on the writer's thread, and not measured here.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from stirshaken_proxy.engine.records import CallRecord
from stirshaken_proxy.io.records import Journal, RecordsConfig, RecordWriter
from stirshaken_proxy.store.sqlite import NumberStore

ROUNDS = 7
PER_ROUND = 20_000


def _record(i: int) -> CallRecord:
    now = time.time()
    return CallRecord(
        id=f"i1-0-{i:x}-{i}", call_id=f"{i}-3131@127.0.0.1", direction="outbound",
        account="demo", orig="12025550100", presented="12025550100", dest="12025550199",
        attest="A", attest_reason="owned", verstat=None, verify_code=None, status=200,
        started=now, answered=now + 0.5, ended=now + 30, duration=29.5, instance="i1",
        worker=0)


def _round(folder: Path, journaled: bool, records: list[CallRecord]) -> float:
    writer = RecordWriter(RecordsConfig(queue_max=len(records) + 1),
                          lambda: NumberStore(folder / "s.db"), counters=Counter())
    if journaled:
        journal = Journal(folder, "records-journal-bench-w0")
        journal.open()
        writer.journal = journal
    started = time.perf_counter()
    for record in records:
        writer.add(record)
    took = time.perf_counter() - started
    if journaled:
        journal.close()
        journal.path.unlink()
    return took / len(records) * 1e6


def main() -> None:
    records = [_record(i) for i in range(PER_ROUND)]
    best = {False: float("inf"), True: float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(ROUNDS):
            for journaled in (False, True):
                best[journaled] = min(best[journaled], _round(Path(tmp), journaled, records))
    print(f"add without journal: {best[False]:.2f} µs a record")  # noqa: T201
    print(f"add with journal:    {best[True]:.2f} µs a record "  # noqa: T201
          f"(+{best[True] - best[False]:.2f} µs, ratio {best[True] / best[False]:.2f})")


if __name__ == "__main__":
    main()
