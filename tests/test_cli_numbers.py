"""`numbers export` (the registration portals' files), and the progress bars of a large
`numbers import` and of `report`."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest

from stirshaken_proxy.store import open_store
from stirshaken_proxy.store.base import record_row
from tests.support import Ports, run_cli, signing_config, write_config

BUSINESS = ('business = { legal_name = "Acme Widgets LLC", ein = "12-3456789", '
            'address = "1 Main St, Springfield, IL 62701", contact = "ops@acme.test", '
            'dba = ["Widget World"], call_purpose = "customer service" }\nbrand = "Acme"\n')


def config(tmp_path: Path, account_extra: str = BUSINESS) -> str:
    ports = Ports.pick()
    return str(write_config(tmp_path / "c.toml", ports, extra=signing_config(
        tmp_path, ports, numbers="[]", account_extra=account_extra)))


def import_numbers(cfg: str, tmp_path: Path, rows: list[str],
                   progress: str = "never") -> tuple[int, str, str]:
    path = tmp_path / "numbers.csv"
    path.write_text("tn,account,label\n" + "".join(f"{r},demo,\n" for r in rows))
    return run_cli(["numbers", "import", "--config", cfg, "--progress", progress, str(path)])


def test_registry_export_has_the_business_and_each_numbers_caller_name(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert import_numbers(cfg, tmp_path, ["+12025550100..+12025550102", "+442071838750"])[0] == 0
    assert run_cli(["brands", "set", "--config", cfg, "--number", "+12025550101",
                    "--name", "Widget World Support"])[0] == 0
    code, out, err = run_cli(["numbers", "export", "--config", cfg, "--account", "demo"])
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows == [
        ["phone_number", "business_name", "dba", "ein", "address", "contact", "call_purpose",
         "caller_name"],
        ["2025550100", "Acme Widgets LLC", "Widget World", "12-3456789",
         "1 Main St, Springfield, IL 62701", "ops@acme.test", "Customer Service", "Acme"],
        ["2025550101", "Acme Widgets LLC", "Widget World", "12-3456789",
         "1 Main St, Springfield, IL 62701", "ops@acme.test", "Customer Service",
         "Widget World Support"],
        ["2025550102", "Acme Widgets LLC", "Widget World", "12-3456789",
         "1 Main St, Springfield, IL 62701", "ops@acme.test", "Customer Service", "Acme"],
    ]
    assert "left out 1 numbers outside North America (+1)" in err and "442071838750" in err


def test_first_orion_files_hold_500_numbers_each_without_a_header(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert import_numbers(cfg, tmp_path, ["+12025550000..+12025551200"])[0] == 0
    code, _, err = run_cli(["numbers", "export", "--config", cfg, "--account", "demo",
                            "--format", "first-orion"])
    assert code == 2 and "1,201 numbers make 3 files of at most 500: give --out FILE" in err
    out = tmp_path / "first-orion.csv"
    code, said, _ = run_cli(["numbers", "export", "--config", cfg, "--account", "demo",
                             "--format", "first-orion", "--out", str(out)])
    assert code == 0 and said == (f"wrote 1,201 numbers of demo to 3 files, "
                                  f"{tmp_path / 'first-orion-001.csv'} to "
                                  f"{tmp_path / 'first-orion-003.csv'}\n")
    parts = [list(csv.reader((tmp_path / f"first-orion-00{i}.csv").open(newline="")))
             for i in (1, 2, 3)]
    assert [len(p) for p in parts] == [500, 500, 201]
    assert parts[0][0] == ["2025550000", "Customer Service"]
    assert parts[2][-1] == ["2025551200", "Customer Service"]
    assert {len(row) for p in parts for row in p} == {2}


@pytest.mark.parametrize(("extra", "args", "error"), [
    ('brand = ""\n', ["--account", "demo"], "[[accounts]] demo: no business"),
    (BUSINESS, ["--account", "nobody"], "--account 'nobody': no such account"),
])
def test_export_refusals_name_what_is_missing(tmp_path: Path, extra: str, args: list[str],
                                              error: str) -> None:
    cfg = config(tmp_path, extra)
    code, out, err = run_cli(["numbers", "export", "--config", cfg, *args])
    assert code == 4 and out == "" and error in err


def test_a_bad_call_purpose_is_a_config_error_naming_the_choices(tmp_path: Path) -> None:
    cfg = config(tmp_path, BUSINESS.replace("customer service", "sales"))
    code, _, err = run_cli(["check-config", "--config", cfg])
    assert code != 0
    assert "[[accounts]] #1 business: call_purpose 'sales' is not one of: Charity" in err


def test_a_large_import_shows_its_progress_and_a_pipe_gets_none(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    rows = [f"+1301555{i:04d}" for i in range(5000)]
    code, out, err = import_numbers(cfg, tmp_path, rows, progress="always")
    assert code == 0 and out.endswith("imported 5000 entries (5000 numbers) from "
                                      f"{tmp_path / 'numbers.csv'}\n")
    last = err.split("\r")[-1]
    assert last.startswith("reading numbers.csv [" + "#" * 30 + "] 100%  5,001/5,001")
    # auto: standard error is no terminal here, so nothing is drawn
    more = [f"+1302555{i:04d}" for i in range(100)]
    code, _, err = import_numbers(cfg, tmp_path, more, progress="auto")
    assert code == 0 and err == ""


def test_report_shows_its_progress_over_the_records(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = open_store(path=tmp_path / "inventory.db")
    now = time.time()
    store.add_records([record_row({"id": f"r{i}", "started": now - 60 - i,
                                   "direction": "outbound", "account": "demo",
                                   "orig": "12025550100", "attest": "A"})
                       for i in range(1500)])
    store.close()
    code, out, err = run_cli(["report", "--config", cfg, "--since", "1h", "--format", "json",
                              "--progress", "always"])
    assert code == 0 and '"calls": 1500' in out
    assert err.split("\r")[-1].startswith("call records [" + "#" * 30 + "] 100%  1,500/1,500")
