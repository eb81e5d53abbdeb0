"""The SQLite inventory and the CSV import: errors name file, line and field; nothing is
half-imported; changes bump the version the service polls."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from stirshaken_proxy.policy.inventory import NumberBlock
from stirshaken_proxy.store.base import Store, record_row
from stirshaken_proxy.store.sqlite import (
    SCHEMA_VERSION,
    ImportError_,
    NumberStore,
    StoreError,
    parse_numbers_csv,
)

ACCOUNTS = {"acme", "beta"}


def test_created_on_first_use_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "inv.db"
    store = NumberStore(path)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    NumberStore(path).close()  # reopening migrates nothing and keeps the data


def _open_and_close(path: str) -> int:
    store = NumberStore(path)
    version = store.db.execute("PRAGMA user_version").fetchone()[0]
    store.close()
    return int(version)


def test_processes_creating_the_store_together_migrate_it_once(tmp_path: Path) -> None:
    """Workers start at the same instant on a new store: each must find the schema whole."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        path = str(tmp_path / f"new-{attempt}.db")
        with ctx.Pool(6) as pool:
            assert pool.map(_open_and_close, [path] * 6) == [SCHEMA_VERSION] * 6


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inv.db"
    NumberStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    with pytest.raises(StoreError, match="newer than this program"):
        NumberStore(path)


def test_import_list_remove_and_version(tmp_path: Path) -> None:
    store = NumberStore(tmp_path / "inv.db")
    v0 = store.version()
    blocks = parse_numbers_csv("n.csv", "tn,account,label\n+1 202 555 0100..0199,acme,main\n"
                               "13105550000,beta,\n", accounts=ACCOUNTS)
    store.add(blocks)
    assert store.version() == v0 + 1
    inv = store.load()
    assert inv.owner("12025550142") == "acme" and inv.owner("13105550000") == "beta"
    store.remove("12025550150", "12025550159")
    assert [(b.first, b.last) for b in store.blocks("acme")] == [
        ("12025550100", "12025550149"), ("12025550160", "12025550199")]
    assert store.version() == v0 + 2
    with pytest.raises(StoreError, match="not in the inventory"):
        store.remove("19995550000", "19995550000")
    with pytest.raises(StoreError, match="overlaps"):
        store.add([NumberBlock(first="12025550140", last="12025550140", account="beta")])
    assert store.version() == v0 + 2  # a refused change changes nothing


CSV_ERRORS = [
    ("tn,account,label\nabc,acme,\n", "n.csv:2: tn: 'abc' is not a telephone number"),
    ("12025550100,nobody\n", "n.csv:1: account: unknown account 'nobody' (configured: acme, beta)"),
    ("12025550100\n", "n.csv:1: row: expected 2 or 3 columns (tn, account, label), got 1"),
    ("12025550100..0099,acme\n", "n.csv:1: tn: range 12025550100..12025550099 ends before it "
                                 "starts"),
    ("12025550100..0199,acme\n\n12025550150,beta\n",
     "n.csv:3: tn: 12025550150 overlaps 12025550100..12025550199 (line 1)"),
    ("13105550000,acme\n", "n.csv:1: tn: 13105550000 overlaps 13105550000 (already in the "
                           "inventory for beta)"),
]


@pytest.mark.parametrize(("text", "message"), CSV_ERRORS)
def test_csv_errors(text: str, message: str) -> None:
    existing = [NumberBlock(first="13105550000", last="13105550000", account="beta")]
    with pytest.raises(ImportError_) as info:
        parse_numbers_csv("n.csv", text, accounts=ACCOUNTS, existing=existing)
    assert str(info.value.problems[0]) == message
    assert "nothing was imported" in str(info.value)


def test_every_overlap_inside_a_wide_range_is_reported() -> None:
    text = "12025550100..0199,acme\n12025550120,acme\n12025550150,acme\n12025550200,acme\n"
    with pytest.raises(ImportError_) as info:
        parse_numbers_csv("n.csv", text, accounts=ACCOUNTS)
    assert [p.line for p in info.value.problems] == [2, 3]


def test_every_bad_row_is_reported_and_nothing_is_imported(tmp_path: Path) -> None:
    text = "12025550100,acme\nbad,acme\n12025550101,acme\n12025550102,ghost\n"
    with pytest.raises(ImportError_) as info:
        parse_numbers_csv("n.csv", text, accounts=ACCOUNTS)
    assert [p.line for p in info.value.problems] == [2, 4]


def test_a_range_over_an_npa_nxx_block_needs_the_flag() -> None:
    text = "tn,account\n+1 202 555 0100..0199,acme\n+13000000000..+19999999999,acme\n"
    with pytest.raises(ImportError_) as info:
        parse_numbers_csv("n.csv", text, accounts=ACCOUNTS)
    assert str(info.value) == (
        "n.csv:3: tn: a range of 7,000,000,000 numbers is over the limit of 10,000 (an NPA-NXX "
        "block); import it with --allow-large-ranges if it is really yours; nothing was "
        "imported")
    blocks = parse_numbers_csv("n.csv", text, accounts=ACCOUNTS, max_range=None)
    assert [b.size for b in blocks] == [100, 7_000_000_000]


def test_a_field_over_the_csv_limit_is_a_problem_not_a_traceback() -> None:
    text = "tn,account\n+12025550100,acme\n+12025550101,acme," + "x" * 200_000 + "\n"
    with pytest.raises(ImportError_) as info:
        parse_numbers_csv("n.csv", text, accounts=ACCOUNTS)
    assert str(info.value).startswith("n.csv:3: row: unreadable CSV: field larger than field "
                                      "limit")
    long_label = "tn,account,label\n+12025550100,acme," + "y" * 300 + "\n"
    with pytest.raises(ImportError_, match=r"n.csv:2: label: over 200 characters \(300\)"):
        parse_numbers_csv("n.csv", long_label, accounts=ACCOUNTS)


def test_digest_credentials_versioned_apart_from_the_inventory(tmp_path: Path) -> None:
    from stirshaken_proxy.policy.digest import Credential

    store = NumberStore(tmp_path / "s.db")
    assert store.credentials_version() == 0 and store.credentials() == []
    store.set_credential(Credential.from_password(username="d1", account="acme", realm="r",
                                                  password="pw-12345"))
    assert store.credentials_version() == 1 and store.version() == 0
    assert [(c.username, c.account, c.realm) for c in store.credentials()] == [("d1", "acme", "r")]
    assert store.remove_credential("d1") and not store.remove_credential("d1")
    assert store.credentials_version() == 3
    store.close()


def test_brands_versioned_apart_from_the_inventory(tmp_path: Path) -> None:
    from stirshaken_proxy.stir.rcd import Brand

    store = NumberStore(tmp_path / "s.db")
    assert store.brands_version() == 0 and store.brands() == {}
    store.set_brand("account:acme", Brand(name="Acme", logo="https://x.example/a.png",
                                          logo_digest="sha256-AAAA"))
    store.set_brand("account:acme", Brand(name="Acme Sales"))
    assert store.brands() == {"account:acme": Brand(name="Acme Sales")}
    assert store.brands_version() == 2 and store.version() == 0
    assert store.remove_brand("account:acme") and store.brands() == {}
    store.close()


def check_records_window(store: Store) -> None:
    """Either backend: records in [since, until) of one account or all, counted and streamed
    oldest first."""
    store.add_records([record_row({"id": f"r{i}", "started": 1000.0 + i,
                                   "direction": "outbound",
                                   "account": "acme" if i % 2 else "beta"})
                       for i in range(10)])
    assert store.count_records(1000.0) == 10
    assert store.count_records(1002.0, 1006.0, account="acme") == 2
    got = store.records(1002.0, 1006.0, account="acme")
    assert not isinstance(got, list)  # streamed
    assert [r["id"] for r in got] == ["r3", "r5"]
    assert [r["id"] for r in store.records(1007.0)] == ["r7", "r8", "r9"]
    assert store.count_records(2000.0) == 0 and list(store.records(2000.0)) == []


def test_records_are_counted_and_streamed_by_window(tmp_path: Path) -> None:
    store = NumberStore(tmp_path / "inv.db")
    try:
        check_records_window(store)
    finally:
        store.close()


def test_a_flush_of_many_records_is_written_whole_in_statements_of_many_rows(
        tmp_path: Path) -> None:
    """A flush larger than one multi-row INSERT (600 rows: 256 + 256 + 88): every record and
    its outbox entry written once, in order; an id written before is kept as it was (at
    least once), even inside the same flush."""
    store = NumberStore(tmp_path / "inv.db")
    try:
        rows = [record_row({"id": f"r{i:03d}", "started": 1000.0 + i, "direction": "outbound",
                            "account": "acme"}) for i in range(600)]
        again = record_row({"id": "r005", "started": 9999.0, "direction": "inbound",
                            "account": "other"})
        assert store.add_records([*rows, again], outbox=True, outbox_max=10_000) == 0
        assert store.count_records(0.0) == 600
        got = list(store.records(0.0))
        assert [r["id"] for r in got] == [f"r{i:03d}" for i in range(600)]
        assert got[5]["started"] == 1005.0 and got[5]["account"] == "acme"
        due = store.outbox_due(float("inf"), 1000)
        assert [i for i, _, _ in due] == [f"r{i:03d}" for i in range(600)]
        assert due[599][1] == rows[599][4]  # the JSON, as written
    finally:
        store.close()
