"""The compiled core's TimerHeap against the reference (transaction/timers.py): the same
operations in the same order give the same answers and leave the same deadlines, for
random sequences of arming, re-arming, cancelling and advancing the clock (hypothesis),
including equal deadlines (first armed fires first) and code run during a pop that arms
more timers."""

from __future__ import annotations

import gc
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stirshaken_proxy.sip import message
from stirshaken_proxy.transaction import Event, TimerHeap, timer_heap

compiled = pytest.mark.skipif(not message.compiled_available(),
                              reason="the compiled core is not built in this install")
TIMERS = (Event.TIMER_A, Event.TIMER_B, Event.TIMER_C, Event.TIMER_M)


class Txn:
    __slots__ = ("deadlines", "name")

    def __init__(self, name: int) -> None:
        self.name = name
        self.deadlines: dict[Event, float] = {}

    def arm(self, heap: object, timer: Event, when: float) -> None:
        self.deadlines[timer] = when
        heap.push(when, self, timer)  # type: ignore[attr-defined]


def _compiled_heap() -> object:
    from stirshaken_proxy.sip import _cmessage  # type: ignore[attr-defined]

    return _cmessage.TimerHeap()


OPS = st.lists(st.one_of(
    st.tuples(st.just("arm"), st.integers(0, 5), st.sampled_from(TIMERS),
              st.sampled_from([0.0, 0.5, 1.0, 1.5, 4.0, 32.0, 180.0])),
    st.tuples(st.just("cancel"), st.integers(0, 5), st.sampled_from(TIMERS)),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 10.0, 200.0])),
    st.tuples(st.just("next"),), st.tuples(st.just("earliest"),),
), max_size=60)


def _run(heap: object, ops: list[tuple[object, ...]]) -> list[object]:
    txns = [Txn(i) for i in range(6)]
    now = 0.0
    seen: list[object] = []
    for op in ops:
        if op[0] == "arm":
            txns[op[1]].arm(heap, op[2], now + op[3])  # type: ignore[call-overload, operator]
        elif op[0] == "cancel":
            txns[op[1]].deadlines.pop(op[2], None)  # type: ignore[call-overload]
        elif op[0] == "advance":
            now += op[1]  # type: ignore[operator]
            seen.append([(t.name, e.name) for t, e in heap.pop_due(now)])  # type: ignore[attr-defined]
        elif op[0] == "next":
            seen.append(heap.next_deadline())  # type: ignore[attr-defined]
        else:
            seen.append(heap.earliest())  # type: ignore[attr-defined]
        seen.append(len(heap))  # type: ignore[arg-type]
    seen.append([sorted((e.name, w) for e, w in t.deadlines.items()) for t in txns])
    return seen


@compiled
@settings(max_examples=400, deadline=None, derandomize=True)
@given(OPS)
def test_the_same_answers_as_the_reference(ops: list[tuple[object, ...]]) -> None:
    assert _run(_compiled_heap(), ops) == _run(TimerHeap(), ops)


@compiled
def test_equal_deadlines_fire_in_the_order_armed_and_a_pop_may_arm_more() -> None:
    for heap in (TimerHeap(), _compiled_heap()):
        a, b = Txn(1), Txn(2)
        a.arm(heap, Event.TIMER_A, 1.0)
        b.arm(heap, Event.TIMER_A, 1.0)
        a.arm(heap, Event.TIMER_B, 0.5)
        assert [(t.name, e) for t, e in heap.pop_due(1.0)] == [  # type: ignore[attr-defined]
            (1, Event.TIMER_B), (1, Event.TIMER_A), (2, Event.TIMER_A)]
        assert a.deadlines == {} and len(heap) == 0  # type: ignore[arg-type]

        c = Txn(3)
        c.arm(heap, Event.TIMER_C, 2.0)

        class Key:
            def __init__(self, txn: Txn, heap: object) -> None:
                self.txn, self.heap = txn, heap

            def __hash__(self) -> int:
                return 7

            def __eq__(self, other: object) -> bool:
                self.txn.arm(self.heap, Event.TIMER_M, 2.0)  # runs during the lookup
                return self is other

        stored, looked_up = Key(c, heap), Key(c, heap)  # equal hashes: the lookup runs __eq__
        c.deadlines[stored] = 2.0  # type: ignore[index]
        heap.push(2.0, c, looked_up)  # type: ignore[attr-defined]
        due = heap.pop_due(2.0)  # type: ignore[attr-defined]
        assert [(t.name, e) for t, e in due] == [(3, Event.TIMER_C), (3, Event.TIMER_M)]


@compiled
def test_entries_hold_their_transactions_and_let_them_go() -> None:
    heap = _compiled_heap()
    txn = Txn(1)
    before = sys.getrefcount(txn)
    for i in range(3000):  # past the first allocation: the array grows
        txn.arm(heap, Event.TIMER_B, float(i))
    assert sys.getrefcount(txn) == before + 3000
    assert len(heap.pop_due(10_000.0)) == 1  # type: ignore[attr-defined, arg-type]
    assert sys.getrefcount(txn) == before and len(heap) == 0  # type: ignore[arg-type]
    # a cycle through the heap is found by the garbage collector
    loop = Txn(2)
    loop.deadlines = {Event.TIMER_A: 1.0}
    holder = _compiled_heap()
    holder.push(1.0, loop, Event.TIMER_A)  # type: ignore[attr-defined]
    loop.name = holder  # type: ignore[assignment]
    del holder, loop
    assert gc.collect() >= 2


@compiled
def test_bad_arguments_are_type_errors() -> None:
    heap = _compiled_heap()
    with pytest.raises(TypeError):
        heap.push("soon", Txn(1), Event.TIMER_A)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        heap.push(1.0)  # type: ignore[attr-defined]
    heap.push(1.0, object(), Event.TIMER_A)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        heap.pop_due(2.0)  # type: ignore[attr-defined]


def test_the_engines_heap_is_the_core_in_uses() -> None:
    before = message.core_in_use()
    try:
        message.use_core("python")
        assert type(timer_heap()) is TimerHeap
        if message.compiled_available():
            message.use_core("compiled")
            assert type(timer_heap()).__module__ == "stirshaken_proxy.sip._cmessage"
    finally:
        message.use_core(before)
