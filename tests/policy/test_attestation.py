"""The attestation decision and the inventory lookups it relies on."""

from __future__ import annotations

import pytest

from stirshaken_proxy.policy.accounts import Account, AccountDirectory
from stirshaken_proxy.policy.attestation import Reason, decide
from stirshaken_proxy.policy.inventory import Inventory, NumberBlock
from stirshaken_proxy.policy.numbers import NumberFormatError, parse_block_text
from stirshaken_proxy.stir.passport import Attestation

ACME = Account(name="acme", origid="6a1b3f8e-7c2d-4e5f-9a0b-1c2d3e4f5a6b",
               sources=("192.0.2.0/24",))
RESELLER = Account(name="reseller", origid="0f0e0d0c-0b0a-4909-8807-060504030201",
                   sources=("198.51.100.7/32",), signing="reseller")
GATEWAY = Account(name="gw", origid="11111111-2222-4333-8444-555555555555",
                  sources=("203.0.113.0/28",), gateway=True)
INVENTORY = Inventory([
    NumberBlock(first="12025550100", last="12025550199", account="acme"),
    NumberBlock(first="13105550000", last="13105550000", account="reseller"),
    NumberBlock(first="442071838750", last="442071838759", account="acme"),
])

TABLE = [
    (ACME, "12025550100", Attestation.A, Reason.OWNED_NUMBER),
    (ACME, "12025550199", Attestation.A, Reason.OWNED_NUMBER),  # range end
    (ACME, "12025550200", Attestation.B, Reason.NUMBER_NOT_IN_INVENTORY),  # just past it
    (ACME, "12025550099", Attestation.B, Reason.NUMBER_NOT_IN_INVENTORY),
    (ACME, "13105550000", Attestation.B, Reason.NUMBER_OF_ANOTHER_ACCOUNT),  # never A
    (RESELLER, "12025550150", Attestation.B, Reason.NUMBER_OF_ANOTHER_ACCOUNT),
    (RESELLER, "13105550000", Attestation.A, Reason.OWNED_NUMBER),
    (ACME, "442071838755", Attestation.A, Reason.OWNED_NUMBER),  # international range
    (ACME, "44207183875", Attestation.B, Reason.NUMBER_NOT_IN_INVENTORY),  # other length
    (GATEWAY, "12025550100", Attestation.C, Reason.GATEWAY),
    (GATEWAY, "19995550000", Attestation.C, Reason.GATEWAY),
]


@pytest.mark.parametrize(("account", "tn", "level", "reason"), TABLE)
def test_decision(account: Account, tn: str, level: Attestation, reason: Reason) -> None:
    decision = decide(account, tn, INVENTORY)
    assert (decision.level, decision.reason, decision.account) == (level, reason, account.name)


def test_directory_most_specific_source_wins() -> None:
    narrow = Account(name="narrow", origid="22222222-2222-4222-8222-222222222222",
                     sources=("192.0.2.5/32",))
    directory = AccountDirectory([ACME, narrow, GATEWAY])
    assert directory.by_source("192.0.2.5") is narrow
    assert directory.by_source("192.0.2.6") is ACME
    assert directory.by_source("203.0.113.1") is GATEWAY
    assert directory.by_source("127.0.0.9") is None
    assert directory.by_source("not-an-ip") is None


@pytest.mark.parametrize(("text", "expected"), [
    ("+1 202 555 0100", ("12025550100", "12025550100")),
    ("+1 202 555 0100..0199", ("12025550100", "12025550199")),
    ("1202555 0100\u20130199", ("12025550100", "12025550199")),  # en dash, suffix end
    ("12025550100..12025550199", ("12025550100", "12025550199")),
    ("202-555-0100", ("12025550100", "12025550100")),  # '-' is a visual separator
])
def test_block_text(text: str, expected: tuple[str, str]) -> None:
    assert parse_block_text(text) == expected


@pytest.mark.parametrize("text", ["abc", "+1 202 555 0199..0100", "12025550100..x",
                                  "12025550100..123456789012", ""])
def test_bad_block_text(text: str) -> None:
    with pytest.raises(NumberFormatError):
        parse_block_text(text)
