"""The attestation audit over a day of dialing (pure): the mix that was dialed comes back in
every format."""

from __future__ import annotations

import csv
import io
import json
import random

from stirshaken_proxy.policy.health import HealthLimits
from stirshaken_proxy.policy.report import RENDER, build, parse_since

DAY = 1_790_000_000.0


def dialing_day(seed: int = 3) -> tuple[list[dict[str, object]], dict[str, dict[str, int]]]:
    """Two accounts' calls over a day: owned numbers signed A, others B, some unsigned; and
    what was dialed, counted as the report must count it."""
    rnd = random.Random(seed)
    records: list[dict[str, object]] = []
    dialed: dict[str, dict[str, int]] = {"acme": {}, "beta": {}}
    for i in range(2000):
        account = "acme" if rnd.random() < 0.7 else "beta"
        roll = rnd.random()
        attest, reason = ("A", "owned") if roll < 0.75 else ("B", "not_owned") \
            if roll < 0.95 else (None, "caller_id_pool_exhausted")
        key = attest or "unsigned"
        dialed[account][key] = dialed[account].get(key, 0) + 1
        answered = DAY + i * 40 + 5 if rnd.random() < 0.35 else None
        records.append({
            "id": f"a-0-{i}", "call_id": f"c{i}", "direction": "outbound", "account": account,
            "orig": f"1202555{i % 20:04d}", "presented": f"1202555{i % 20:04d}",
            "dest": "13035550111", "attest": attest, "attest_reason": reason, "verstat": None,
            "verify_code": None, "status": 200 if answered else 486, "started": DAY + i * 40,
            "answered": answered, "ended": DAY + i * 40 + 60,
            "duration": 55.0 if answered else 0.0, "instance": "a", "worker": 0})
    records.append({"id": "in-1", "call_id": "in1", "direction": "inbound", "account": None,
                    "orig": "13035550111", "presented": "13035550111", "dest": "12025550100",
                    "attest": None, "attest_reason": None, "verstat": "TN-Validation-Failed",
                    "verify_code": 437, "status": 200, "started": DAY, "answered": DAY + 2,
                    "ended": DAY + 30, "duration": 28.0, "instance": "a", "worker": 0})
    return records, dialed


def test_the_mix_that_was_dialed_comes_back_in_every_format() -> None:
    records, dialed = dialing_day()
    health = {"12025550001": {"state": "quarantined", "quarantine_reason": "answer ratio 0.10",
                              "calls_last_hour": 0, "attempts": 100},
              "12025550002": {"state": "healthy", "calls_last_hour": 45, "attempts": 10},
              "12025550003": {"state": "healthy", "calls_last_hour": 3, "attempts": 80,
                              "answer_ratio": 0.5, "ended": 40, "average_duration": 90}}
    rep = build(records, health, limits=HealthLimits(), since=DAY, until=DAY + 86400)
    j = json.loads(RENDER["json"](rep))
    for account, mix in dialed.items():
        got = j["accounts"][account]
        assert {k: got[k] for k in ("A", "B", "unsigned")} == {
            k: mix.get(k, 0) for k in ("A", "B", "unsigned")}
    total = sum(sum(m.values()) for m in dialed.values())
    share_a = sum(m.get("A", 0) for m in dialed.values()) / total
    assert j["total"]["calls"] == total and abs(j["total"]["share_a"] - share_a) < 1e-4
    assert [r["tn"] for r in j["numbers_at_risk"]] == ["12025550001", "12025550002"]
    assert j["verification_failures"] == {"437": 1}
    rows = list(csv.DictReader(io.StringIO(RENDER["csv"](rep))))
    by_account = {r["key"]: r for r in rows if r["kind"] == "account"}
    assert int(by_account["acme"]["A"]) == dialed["acme"]["A"]
    assert sum(int(r["calls"]) for r in rows if r["kind"] == "day") == total
    table = RENDER["table"](rep)
    assert f"total: {total} calls, {share_a:.0%} A" in table
    page = RENDER["html"](rep)
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page
    assert f"{share_a:.0%} attested A" in page
    assert "src=" not in page and "<link" not in page  # self-contained: nothing fetched


def test_one_account_and_its_numbers_only() -> None:
    records, dialed = dialing_day()
    health = {"12025550001": {"state": "quarantined", "calls_last_hour": 0},
              "19995550000": {"state": "quarantined", "calls_last_hour": 0}}
    rep = build(records, health, limits=HealthLimits(), since=DAY, until=DAY + 86400,
                account="beta", owned={"12025550001"})
    assert set(rep.accounts) == {"beta"} and rep.total.calls == sum(dialed["beta"].values())
    assert [r.tn for r in rep.at_risk] == ["12025550001"] and rep.inbound.calls == 0


def test_parse_since() -> None:
    assert parse_since("7d", 1000000.0) == 1000000.0 - 7 * 86400
    assert parse_since("12h", 100000.0) == 100000.0 - 12 * 3600
    assert parse_since("1790000000", 0) == 1790000000.0
    for bad in ("7w", "nan", "inf", ""):
        try:
            parse_since(bad, 0)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_a_record_matches_its_documented_schema() -> None:
    """docs/call-record.schema.json names every field of a record, with its types."""
    from pathlib import Path

    from stirshaken_proxy.engine.records import CallLog

    schema = json.loads((Path(__file__).parents[2] / "docs" / "call-record.schema.json")
                        .read_text())
    log = CallLog(instance="a", enabled=True)
    out: list[object] = []
    log.answered_here("c1", "outbound", None, 403, 100.0, out)
    record = out[0].as_json()  # type: ignore[attr-defined]
    assert set(record) == set(schema["required"]) == set(schema["properties"])
    names = {"string": str, "integer": int, "number": (int, float), "null": type(None)}
    for key, value in record.items():
        spec = schema["properties"][key]
        if "enum" in spec:
            assert value in spec["enum"], key
        else:
            kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            assert isinstance(value, tuple(t for k in kinds for t in (
                names[k] if isinstance(names[k], tuple) else (names[k],)))), key
