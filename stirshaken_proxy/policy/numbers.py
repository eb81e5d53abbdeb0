"""Numbers and ranges as operators write them, and the rules blocks must keep (pure)."""

from __future__ import annotations

from collections.abc import Iterator

from ..sip.numbers import canonical_digits
from .inventory import NumberBlock

RANGE_SEPARATORS = ("..", "\u2013")  # '..' or an en dash; a plain '-' is a visual separator


class NumberFormatError(ValueError):
    pass


def parse_block_text(text: str, *, country_code: str = "1") -> tuple[str, str]:
    """``+1 202 555 0100`` or a range ``12025550100..12025550199``; the last number of a range
    may be written as a suffix (``1202555 0100..0199``). Returns canonical (first, last)."""
    text = text.strip()
    for sep in RANGE_SEPARATORS:
        if sep in text:
            left, _, right = text.partition(sep)
            first = canonical_digits(left.strip(), country_code=country_code)
            if first is None:
                raise NumberFormatError(f"{left.strip()!r} is not a telephone number")
            digits = "".join(c for c in right if c in "0123456789")
            if not digits or any(c not in "0123456789+-(). " for c in right.strip()):
                raise NumberFormatError(f"{right.strip()!r} is not the end of a range")
            if len(digits) < len(first):
                last = first[: len(first) - len(digits)] + digits
            else:
                last = canonical_digits(right.strip(), country_code=country_code) or ""
            if len(last) != len(first):
                raise NumberFormatError(f"range ends {right.strip()!r} do not match {first}")
            if int(last) < int(first):
                raise NumberFormatError(f"range {first}..{last} ends before it starts")
            return first, last
    single = canonical_digits(text, country_code=country_code)
    if single is None:
        raise NumberFormatError(f"{text!r} is not a telephone number")
    return single, single


def block_text(block: NumberBlock) -> str:
    return block.first if block.first == block.last else f"{block.first}..{block.last}"


def overlaps(blocks: list[NumberBlock]) -> Iterator[tuple[NumberBlock, NumberBlock]]:
    """For every block that shares a number with an earlier one (in number order), the pair
    (the earlier block reaching furthest, that block)."""
    ordered = sorted(blocks, key=lambda b: (len(b.first), int(b.first)))
    widest: NumberBlock | None = None
    for b in ordered:
        if widest is not None and len(widest.first) == len(b.first) \
                and int(b.first) <= int(widest.last):
            yield widest, b
        if widest is None or len(widest.first) != len(b.first) or int(b.last) > int(widest.last):
            widest = b


def overlapping(blocks: list[NumberBlock]) -> tuple[NumberBlock, NumberBlock] | None:
    """The first pair of blocks that share a number, or None."""
    return next(overlaps(blocks), None)
