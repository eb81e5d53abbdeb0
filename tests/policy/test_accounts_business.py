"""A brand must be the business's own name (its legal name or a DBA)."""

from __future__ import annotations

import pytest

from stirshaken_proxy.policy.accounts import Business

ACME = Business(legal_name="Acme Widgets, LLC", dba=("Widget World",))


@pytest.mark.parametrize(("name", "ok"), [
    ("Acme", True), ("ACME Sales", True), ("Widget World Support", True),
    ("Widgets Inc", True), ("LLC Services", False), ("Best Deals", False), ("", False),
])
def test_brand_matches_the_business(name: str, ok: bool) -> None:
    assert (ACME.brand_problem(name) is None) is ok
