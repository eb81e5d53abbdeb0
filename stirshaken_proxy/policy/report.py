"""The attestation audit (pure): call records and number health in, a report out, rendered as
a table, CSV, JSON or a self-contained HTML page with its charts (inline SVG, no script)."""

from __future__ import annotations

import csv
import html
import io
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .health import HealthLimits, State


@dataclass(kw_only=True)
class Mix:
    """Calls by attestation (``unsigned``: no Identity), answered and talk time."""

    calls: int = 0
    attest: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    talk_seconds: float = 0.0

    def add(self, record: dict[str, Any]) -> None:
        self.calls += 1
        self.attest[record.get("attest") or "unsigned"] += 1
        if record.get("answered") is not None:
            self.answered += 1
            self.talk_seconds += float(record.get("duration") or 0.0)

    @property
    def share_a(self) -> float:
        return self.attest["A"] / self.calls if self.calls else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "A": self.attest["A"], "B": self.attest["B"],
                "C": self.attest["C"], "unsigned": self.attest["unsigned"],
                "share_a": round(self.share_a, 4), "answered": self.answered,
                "answer_ratio": round(self.answered / self.calls, 4) if self.calls else 0.0,
                "average_duration": round(self.talk_seconds / self.answered, 1)
                if self.answered else 0.0}


@dataclass(frozen=True, kw_only=True)
class AtRisk:
    tn: str
    state: str
    why: str


@dataclass(kw_only=True)
class Report:
    since: float
    until: float
    account: str | None
    total: Mix = field(default_factory=Mix)
    accounts: dict[str, Mix] = field(default_factory=dict)
    numbers: dict[str, Mix] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)  # why a call was not signed A
    by_day: dict[str, Mix] = field(default_factory=dict)
    at_risk: list[AtRisk] = field(default_factory=list)
    inbound: Mix = field(default_factory=Mix)
    failures: Counter[str] = field(default_factory=Counter)  # inbound verification, by code

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since, "until": self.until, "account": self.account,
            "total": self.total.as_json(),
            "accounts": {k: v.as_json() for k, v in sorted(self.accounts.items())},
            "numbers": {k: v.as_json() for k, v in sorted(self.numbers.items())},
            "not_a_reasons": dict(self.reasons.most_common()),
            "by_day": {k: v.as_json() for k, v in sorted(self.by_day.items())},
            "numbers_at_risk": [asdict(r) for r in self.at_risk],
            "inbound": self.inbound.as_json(),
            "verification_failures": dict(self.failures.most_common()),
        }


def build(records: Iterable[dict[str, Any]], health: dict[str, dict[str, Any]], *,
          limits: HealthLimits, since: float, until: float, account: str | None = None,
          owned: set[str] | None = None) -> Report:
    """``health``: each number's report (policy.health.NumberHealth.report); ``owned``: the
    numbers of ``account`` (only those are judged at risk when the report is for one)."""
    rep = Report(since=since, until=until, account=account)
    for r in records:
        if r["direction"] == "inbound":
            if account is None:
                rep.inbound.add(r)
                if r.get("verstat") == "TN-Validation-Failed":
                    rep.failures[str(r.get("verify_code") or "?")] += 1
            continue
        if account is not None and r.get("account") != account:
            continue
        rep.total.add(r)
        rep.accounts.setdefault(r.get("account") or "(none)", Mix()).add(r)
        rep.numbers.setdefault(r.get("presented") or r.get("orig") or "(none)", Mix()).add(r)
        day = time.strftime("%Y-%m-%d", time.gmtime(r["started"]))
        rep.by_day.setdefault(day, Mix()).add(r)
        if r.get("attest") != "A":
            rep.reasons[r.get("attest_reason") or "unknown"] += 1
    for tn, h in sorted(health.items()):
        if owned is not None and tn not in owned:
            continue
        why = _risk(h, limits)
        if why:
            rep.at_risk.append(AtRisk(tn=tn, state=str(h.get("state")), why=why))
    return rep


def _risk(h: dict[str, Any], limits: HealthLimits) -> str:
    if h.get("state") == State.QUARANTINED.value:
        return f"quarantined: {h.get('quarantine_reason') or 'by the operator'}"
    if float(h.get("calls_last_hour", 0)) >= 0.8 * limits.max_calls_per_hour:
        return (f"{h.get('calls_last_hour')} calls in the last hour (limit "
                f"{limits.max_calls_per_hour})")
    if float(h.get("attempts", 0)) >= limits.min_samples:
        if float(h.get("answer_ratio", 1)) < limits.min_answer_ratio * 1.25:
            return f"answer ratio {float(h['answer_ratio']):.2f} (limit {limits.min_answer_ratio})"
    if float(h.get("ended", 0)) >= limits.min_samples:
        if float(h.get("average_duration", 1e9)) < limits.min_average_duration * 1.25:
            return (f"average duration {float(h['average_duration']):.0f} s (limit "
                    f"{limits.min_average_duration:.0f} s)")
    return ""


# -- rendering ----------------------------------------------------------------------------

def _period(rep: Report) -> str:
    fmt = "%Y-%m-%d %H:%M UTC"
    start, end = time.gmtime(rep.since), time.gmtime(rep.until)
    return f"{time.strftime(fmt, start)} to {time.strftime(fmt, end)}"


def as_table(rep: Report) -> str:
    out = [f"Attestation audit, {_period(rep)}" + (f", account {rep.account}" if rep.account
                                                    else ""), ""]
    head = f"{'':<20}{'calls':>8}{'A':>7}{'B':>7}{'C':>7}{'unsigned':>9}{'A share':>9}{'ASR':>7}"
    for title, rows in (("by account", rep.accounts), ("by number", rep.numbers)):
        out += [title, head]
        for key, m in sorted(rows.items()):
            j = m.as_json()
            out.append(f"{key:<20}{j['calls']:>8}{j['A']:>7}{j['B']:>7}{j['C']:>7}"
                       f"{j['unsigned']:>9}{j['share_a']:>8.0%} {j['answer_ratio']:>6.0%}")
        out.append("")
    t = rep.total.as_json()
    out.append(f"total: {t['calls']} calls, {t['share_a']:.0%} A")
    if rep.reasons:
        out.append("not signed A: " + ", ".join(f"{k} {v}" for k, v in
                                                 rep.reasons.most_common()))
    out.append("numbers at risk: " + ("none" if not rep.at_risk else ""))
    out += [f"  {r.tn}  {r.state}  {r.why}" for r in rep.at_risk]
    if rep.inbound.calls:
        out.append(f"inbound: {rep.inbound.calls} calls verified; failures: "
                   + (", ".join(f"{k} {v}" for k, v in rep.failures.most_common()) or "none"))
    return "\n".join(out) + "\n"


def as_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "key", "calls", "A", "B", "C", "unsigned", "share_a", "answered",
                "answer_ratio", "average_duration"])
    for kind, rows in (("account", rep.accounts), ("number", rep.numbers), ("day", rep.by_day)):
        for key, m in sorted(rows.items()):
            j = m.as_json()
            w.writerow([kind, key, j["calls"], j["A"], j["B"], j["C"], j["unsigned"],
                        j["share_a"], j["answered"], j["answer_ratio"], j["average_duration"]])
    for r in rep.at_risk:
        w.writerow(["at_risk", r.tn, "", "", "", "", "", "", "", "", r.why])
    for code, n in rep.failures.most_common():
        w.writerow(["verification_failure", code, n])
    return buf.getvalue()


def as_json(rep: Report) -> str:
    return json.dumps(rep.as_json(), indent=2) + "\n"


def mix_chart(days: dict[str, Mix]) -> str:
    """Stacked bars of A/B/C/unsigned per day, inline SVG."""
    colours = {"A": "#2e7d32", "B": "#f9a825", "C": "#c62828", "unsigned": "#757575"}
    items = sorted(days.items())
    if not items:
        return "<p>No calls in this period.</p>"
    top = max(m.calls for _, m in items) or 1
    width, height, bar = 40 + 36 * len(items), 220, 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
             f'role="img" aria-label="attestation mix by day">']
    for i, (day, m) in enumerate(items):
        x, y = 30 + 36 * i, float(height)
        for level in ("A", "B", "C", "unsigned"):
            h = m.attest[level] / top * (height - 20)
            if h:
                y -= h
                parts.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" '
                             f'fill="{colours[level]}"><title>{day} {level}: '
                             f'{m.attest[level]}</title></rect>')
        parts.append(f'<text x="{x}" y="{height + 14}" font-size="9">{html.escape(day[5:])}'
                     "</text>")
    parts.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">&#9632; {k}</span>' for k, c in colours.items())
    return "".join(parts) + f"<p>{legend}</p>"


def as_html(rep: Report) -> str:
    e = html.escape

    def table(rows: dict[str, Mix], title: str) -> str:
        body = "".join(
            f"<tr><td>{e(k)}</td><td>{j['calls']}</td><td>{j['A']}</td><td>{j['B']}</td>"
            f"<td>{j['C']}</td><td>{j['unsigned']}</td><td>{j['share_a']:.0%}</td>"
            f"<td>{j['answer_ratio']:.0%}</td></tr>"
            for k, j in ((k, m.as_json()) for k, m in sorted(rows.items())))
        return (f"<h2>{e(title)}</h2><table><tr><th></th><th>calls</th><th>A</th><th>B</th>"
                f"<th>C</th><th>unsigned</th><th>A share</th><th>answer ratio</th></tr>"
                f"{body}</table>")

    risk = "".join(f"<li><b>{e(r.tn)}</b> ({e(r.state)}): {e(r.why)}</li>" for r in rep.at_risk)
    t = rep.total.as_json()
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Attestation audit</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child{text-align:left}</style></head><body>"
        f"<h1>Attestation audit</h1><p>{e(_period(rep))}"
        + (f", account {e(rep.account)}" if rep.account else "")
        + f". {t['calls']} calls, <b>{t['share_a']:.0%} attested A</b>.</p>"
        "<h2>Attestation mix by day</h2>" + mix_chart(rep.by_day)
        + table(rep.accounts, "By account") + table(rep.numbers, "By number")
        + "<h2>Why calls were not signed A</h2><ul>"
        + "".join(f"<li>{e(k)}: {v}</li>" for k, v in rep.reasons.most_common()) + "</ul>"
        + f"<h2>Numbers at risk</h2><ul>{risk or '<li>none</li>'}</ul>"
        + "<h2>Inbound verification failures</h2><ul>"
        + ("".join(f"<li>{e(k)}: {v}</li>" for k, v in rep.failures.most_common())
           or "<li>none</li>") + "</ul></body></html>\n")


RENDER = {"table": as_table, "csv": as_csv, "json": as_json, "html": as_html}


def parse_since(text: str, now: float) -> float:
    """``7d``, ``12h``, ``30m`` back from now, or a Unix time; raises ValueError."""
    units = {"d": 86400, "h": 3600, "m": 60}
    if text and text[-1] in units and text[:-1].isdigit():
        return now - int(text[:-1]) * units[text[-1]]
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


__all__ = ["RENDER", "Report", "build", "mix_chart", "parse_since"]
