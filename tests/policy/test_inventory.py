"""The packed inventory: lookups agree with a plain reading of the blocks, whatever the mix
of widths, singles and ranges; the snapshot round-trips."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from stirshaken_proxy.policy.inventory import Inventory, NumberBlock, Packed, pack


def reference(blocks: list[NumberBlock], tn: str) -> str | None:
    for b in blocks:
        if len(b.first) == len(tn) and int(b.first) <= int(tn) <= int(b.last):
            return b.account
    return None


def make_blocks(rng: random.Random, count: int) -> list[NumberBlock]:
    taken: set[tuple[int, int]] = set()
    blocks = []
    for i in range(count):
        width = rng.choice([10, 11, 11, 11, 15])
        start = rng.randrange(10 ** (width - 1), 10**width - 50)
        size = rng.choice([1, 1, 1, 5, 20])
        if any((width, n) in taken for n in range(start, start + size)):
            continue
        taken.update((width, n) for n in range(start, start + size))
        blocks.append(NumberBlock(first=str(start), last=str(start + size - 1),
                                  account=f"a{i % 7}"))
    return blocks


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 300))
def test_lookups_agree_with_the_blocks(seed: int, count: int) -> None:
    rng = random.Random(seed)
    blocks = make_blocks(rng, count)
    half = len(blocks) // 2
    inventory = Inventory(blocks[:half], packed=pack(blocks[half:]))
    assert len(inventory) == len(blocks)
    probes = [b.first for b in blocks] + [b.last for b in blocks]
    probes += [str(int(b.last) + 1) for b in blocks] + [str(int(b.first) - 1) for b in blocks]
    probes += ["0" + b.first for b in blocks[:5]] + ["", "x", "1" * 16]
    for tn in probes:
        assert inventory.owner(tn) == (reference(blocks, tn) if tn.isdigit() and
                                       len(tn) <= 15 else None), tn


def test_snapshot_round_trips_and_numbers_of() -> None:
    blocks = [NumberBlock(first="12025550100", last="12025550102", account="a"),
              NumberBlock(first="12025550200", last="12025550200", account="a"),
              NumberBlock(first="0123", last="0123", account="b")]
    packed = Packed.from_bytes(pack(blocks).to_bytes())
    inventory = Inventory(packed=packed)
    assert inventory.owner("0123") == "b" and inventory.owner("123") is None
    assert inventory.numbers_of("a") == ["12025550200", "12025550100", "12025550101",
                                         "12025550102"]
    assert inventory.numbers_of("a", limit=2) == ["12025550200", "12025550100"]
    assert inventory.numbers_of("nobody") == []
