"""An account's numbers with the business behind them, in the files the analytics engines'
registration portals take, so registering them (with Hiya, TNS and First Orion, each directly
or through the Free Caller Registry) is an upload rather than typing.

Two forms:
- ``registry``: one row per number with every field those registrations ask of a business
  (legal name, DBA, EIN, address, contact, call purpose, the caller name shown), headed;
- ``first-orion``: First Orion's Customer Portal upload as its documentation gives it: two
  columns (phone number with area code, call purpose), no header, at most 500 numbers a file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

from .accounts import Account

# First Orion's call purposes (its Customer Portal's list); registrations elsewhere use the
# same categories.
CALL_PURPOSES = ("Charity", "Customer Service", "Debt Collection", "Informational/Notification",
                 "Multi-Use Line", "Political", "Prison", "Survey", "Telemarketing",
                 "Do Not Originate")
FIRST_ORION_MAX_ROWS = 500

REGISTRY_COLUMNS = ("phone_number", "business_name", "dba", "ein", "address", "contact",
                    "call_purpose", "caller_name")


def call_purpose(text: str) -> str | None:
    """The listed call purpose ``text`` names (any case), or None."""
    for purpose in CALL_PURPOSES:
        if purpose.lower() == text.strip().lower():
            return purpose
    return None


def national(tn: str) -> str | None:
    """A canonical NANP number (1 and ten digits) as the ten digits the portals take; None
    for any other country (US analytics engines register North American numbers only)."""
    if len(tn) == 11 and tn.startswith("1") and tn.isdigit():
        return tn[1:]
    return None


def _north_american(numbers: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(number, its ten digits) of each North American number, and the others."""
    kept: list[tuple[str, str]] = []
    skipped: list[str] = []
    for tn in numbers:
        ten = national(tn)
        if ten is None:
            skipped.append(tn)
        else:
            kept.append((tn, ten))
    return kept, skipped


@dataclass(frozen=True, kw_only=True)
class Export:
    files: list[str]  # CSV texts, in order
    rows: int  # numbers written
    skipped: list[str]  # numbers that cannot be registered there (not North American)


def registry(account: Account, numbers: Iterable[str], caller_names: dict[str, str],
             default_name: str) -> Export:
    """``caller_names``: a number's own brand name where it has one, else ``default_name``
    (the account's)."""
    business = account.business
    assert business is not None, "the caller checks that the account has a business"
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(REGISTRY_COLUMNS)
    kept, skipped = _north_american(numbers)
    for tn, ten in kept:
        w.writerow((ten, business.legal_name, "; ".join(business.dba), business.ein,
                    business.address, business.contact, business.call_purpose,
                    caller_names.get(tn, default_name)))
    return Export(files=[out.getvalue()], rows=len(kept), skipped=skipped)


def first_orion(account: Account, numbers: Iterable[str]) -> Export:
    business = account.business
    assert business is not None, "the caller checks that the account has a business"
    kept, skipped = _north_american(numbers)
    tens = [ten for _, ten in kept]
    files = []
    for start in range(0, len(tens), FIRST_ORION_MAX_ROWS):
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        for ten in tens[start:start + FIRST_ORION_MAX_ROWS]:
            w.writerow((ten, business.call_purpose))
        files.append(out.getvalue())
    return Export(files=files, rows=len(tens), skipped=skipped)
