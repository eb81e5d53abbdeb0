"""TN canonicalisation (RFC 8224 §8.3, RFC 8588): digits only, no '+', NANP 11 digits."""

from __future__ import annotations

import pytest

from stirshaken_proxy.sip.numbers import canonical_tn

CASES = [
    ("sip:+12025550100@example.com", "12025550100"),  # E.164
    ("sip:+1-202-555-0100@example.com;user=phone", "12025550100"),  # visual separators
    ("sip:+1(202)555.0100@example.com", "12025550100"),
    ("sip:2025550100@example.com", "12025550100"),  # national NANP
    ("sip:12025550100@example.com", "12025550100"),
    ("tel:+12025550100", "12025550100"),
    ("tel:+1-202-555-0100;phone-context=example.com", "12025550100"),
    ("sip:+12025550100;tgrp=TG-1;trunk-context=example.com@example.com;user=phone",
     "12025550100"),  # RFC 4904 parameters in the user part
    ("sip:%2B12025550100@example.com", "12025550100"),  # escaped +
    ("sips:+442071838750@example.com", "442071838750"),  # international
    ("sip:anonymous@anonymous.invalid", None),  # anonymous caller
    ("sip:example.com", None),  # no user part
    ("sip:alice@example.com", None),  # not a number
    ("sip:555@example.com", None),  # too short for NANP
    ("sip:1202555010@example.com", None),  # 10 digits starting with 1
    ("sip:+1234567890123456@x", None),  # longer than E.164 allows
    ("mailto:a@b", None),
    ("", None),
]


@pytest.mark.parametrize(("uri", "expected"), CASES)
def test_canonical_tn(uri: str, expected: str | None) -> None:
    assert canonical_tn(uri) == expected


# From / P-Asserted-Identity values whose number a memo must never confuse: the same value
# with other tags, a ';tag=' inside the URI (part of the user, or a URI parameter), a quoted
# display name holding ';tag=', addr-spec form, tel URIs, no number, malformed.
MEMO_VALUES = [
    '"Sales" <sip:+12025550100@127.0.0.1:5070;user=phone>;tag=a1',
    '"Sales" <sip:+12025550100@127.0.0.1:5070;user=phone>;tag=b2',
    '"Sales" <sip:+12025550100@127.0.0.1:5070;user=phone>',
    "<sip:+12025550101;tag=1@h>",
    "<sip:+12025550102;tag=1@h>",
    "<sip:+12025550103@h;tag=1>",
    "<sip:+12025550104@h;tag=1>;tag=2",
    '"x;tag=1" <sip:+12025550105@h>;tag=2',
    '"x;tag=1" <sip:+12025550106@h>;tag=2',
    "sip:+12025550107@h;tag=9",
    "sip:2025550108@h;tag=9",
    "<tel:+1-202-555-0109>;tag=3",
    "<tel:+1-202-555-0110>",
    "<sip:alice@h>;tag=4",
    "<sip:+12025550111@h>;TAG=5",
    "<sip:+12025550112@h>;tag=6;tag=7",
    "<sip:+12025550113@h>;tag=",
    "<sip:+12025550114@h",
    "garbage;tag=1",
    "",
]


@pytest.mark.parametrize("country_code", ["1", "44"])
def test_the_calling_number_memo_answers_as_a_fresh_parse(country_code: str) -> None:
    import random

    from stirshaken_proxy.sip.numbers import TnMemo, calling_tn

    memo = TnMemo()
    rng = random.Random(3)
    for _ in range(3000):
        from_value = rng.choice(MEMO_VALUES)
        if rng.random() < 0.5 and ";tag=" in from_value:  # another call: another tag
            from_value = from_value.rsplit(";tag=", 1)[0] + f";tag={rng.randrange(10**6)}"
        pai = rng.sample(MEMO_VALUES, rng.choice([0, 0, 1, 2]))
        fresh = calling_tn(pai, from_value, country_code=country_code)
        assert calling_tn(pai, from_value, country_code=country_code, memo=memo) == fresh, (
            pai, from_value)


def test_the_memo_forgets_when_the_country_code_changes() -> None:
    from stirshaken_proxy.sip.numbers import TnMemo, calling_tn

    memo = TnMemo()
    value = "<sip:2025550100@h>;tag=1"
    assert calling_tn([], value, memo=memo) == "12025550100"
    assert calling_tn([], value, country_code="44", memo=memo) == "2025550100"
    assert calling_tn([], value, memo=memo) == "12025550100"
