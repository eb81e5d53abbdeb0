"""Fast paths of the per-call text checks give the answers of the general code they skip."""

from __future__ import annotations

import re
from urllib.parse import unquote

from hypothesis import assume, example, given
from hypothesis import strategies as st

from stirshaken_proxy.sip.numbers import canonical_digits
from stirshaken_proxy.sip.uri import is_token

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VISUAL = str.maketrans("", "", "-.() \t")

_USER = st.lists(st.sampled_from(
    [*"0123456789+-.() \t;=%2Bb", "%2B", "%20", "%3", "\u0663", "\u00b2", "tgrp=x"]),
    max_size=18).map("".join)


@example("%3-0", "44")  # (an escape made by dropping a separator)
@given(_USER, st.sampled_from(["1", "44"]))
def test_a_number_reads_the_same_with_or_without_the_fast_paths(user: str, cc: str) -> None:
    """canonical_digits skips unquote without a '%' and the separators' removal for a run
    of digits; given the text those steps make, it must answer the same."""
    number = user.partition(";")[0]
    assume(";" not in unquote(number))  # (an escaped ';' would end the number a second time)
    general = unquote(number).translate(_VISUAL)  # no separator left
    # A '%' left after unquoting is no digit: no number. (Read again, "%3-0" would become the
    # escape "%30" once its separator is gone.)
    expected = None if "%" in general else canonical_digits(general, country_code=cc)
    assert canonical_digits(user, country_code=cc) == expected


@given(st.text(alphabet=st.sampled_from([*"aZ09-.!%*_+`'~ ;:\"@", "\u00e9", "\u0663"]),
               max_size=12))
def test_a_token_of_letters_and_digits_skips_the_regex_alike(text: str) -> None:
    assert is_token(text) == (_TOKEN.match(text) is not None)
