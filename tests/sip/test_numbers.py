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
