"""The slots' own recency lists (``SlotList``): the policy's segments without a node per key."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.slot import DETACHED, Slot, SlotList
from tiered_cache.testing import FakeClock
from tiered_cache.tier import Entry


class Value:
    """A value a weak reference can watch."""


def slot() -> Slot:
    return Slot(Entry(None, 0.0), 10.0)


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counting frees objects: a cycle left behind would stay."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_the_list_keeps_recency_order() -> None:
    order = SlotList(7)
    a, b, c = slot(), slot(), slot()
    for key, item in (("a", a), ("b", b), ("c", c)):
        order.append(key, item)
    order.move_to_end(a)
    assert order.oldest_keys(8) == ["b", "c", "a"]
    assert order.oldest_keys(2) == ["b", "c"]
    assert (len(order), a.segment, a.key) == (3, 7, "a")
    assert order.pop_oldest() is b
    order.remove(a)
    assert order.oldest_keys(8) == ["c"]
    assert len(order) == 1
    assert (a.prev, a.next, a.segment) == (None, None, DETACHED)
    d = slot()
    order.replace(c, d)
    assert (order.oldest() is d, d.key, c.prev, c.segment) == (True, "c", None, DETACHED)
    order.clear()
    assert (len(order), bool(order), order.oldest_keys(8)) == (0, False, [])
    assert (d.prev, d.next) == (None, None)


def test_a_slot_offered_under_two_keys_keeps_both(clock: FakeClock) -> None:
    policy = TinyLfuPolicy(10, clock=clock)
    shared = slot()
    policy.put("a", shared)
    policy.put("b", shared)
    assert sorted(policy.keys()) == ["a", "b"]
    assert policy.pop("a") is not None
    assert policy.segment_of("b") == "window"
    assert len(policy) == 1


@pytest.mark.usefixtures("no_collector")
def test_evicted_and_cleared_values_are_freed_at_once(clock: FakeClock) -> None:
    # The segments link the slots into rings; what leaves them must leave no cycle behind, or
    # every evicted value would wait for the cycle collector.
    policy = TinyLfuPolicy(100, clock=clock)
    watched = []
    for index in range(300):  # 200 evictions
        value = Value()
        watched.append(weakref.ref(value))
        policy.put(f"k{index}", Slot(Entry(value, 0.0), 10.0))
        del value
    assert sum(ref() is not None for ref in watched) == 100
    policy.pop(policy.keys()[0])
    assert sum(ref() is not None for ref in watched) == 99
    policy.clear()
    assert sum(ref() is not None for ref in watched) == 0
