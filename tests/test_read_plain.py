"""The threaded chain's read in plain calls (``ChainPaths.read_through_plain``): the L2 hit's
path, and the rarer cases it hands to the steps (a stale copy, read on from the tier below
it; a miss everywhere, loaded). Each tier is read once per read, whichever way it goes."""

from __future__ import annotations

from collections.abc import Callable

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.recording import RecordingTier
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import Entry


def three_tiers(
    clock: FakeClock, source: DictSource, protection: Protection, ran: list[Callable[[], None]]
) -> tuple[TieredCache, list[RecordingTier]]:
    tiers = [
        RecordingTier(MemoryTier(name=name, max_entries=100, ttl=3600, clock=clock))
        for name in ("l1", "l2", "l3")
    ]
    cache = TieredCache(tiers, source, clock=clock, protection=protection, background=ran.append)
    return cache, tiers


def test_a_stale_copy_in_l2_is_read_once_and_a_fresh_one_in_l3_served_and_copied_up(
    clock: FakeClock,
) -> None:
    source = DictSource({"k": "source"})
    cache, (l1, l2, l3) = three_tiers(clock, source, Protection.never_stale(), [])
    now = clock()
    l2.inner.set("k", Entry("stale", now - 20, now - 10, now + 100))
    l3.inner.set("k", Entry("fresh", now - 1, now + 100, now + 200))
    assert cache.get("k") == "fresh"
    assert (l2.calls["get"], l3.calls["get"]) == (1, 1)
    assert l1.inner.get("k").value == "fresh"  # type: ignore[union-attr]
    assert l2.inner.get("k").value == "fresh"  # type: ignore[union-attr]
    assert source.loads == []
    assert cache.stats()["tiers"][2]["hits"] == 1


def test_a_stale_copy_in_l2_is_served_while_it_refreshes_and_read_once(
    clock: FakeClock,
) -> None:
    source = DictSource({"k": "new"})
    ran: list[Callable[[], None]] = []
    protection = Protection.never_stale(stale_while_revalidate=True)
    cache, (_, l2, l3) = three_tiers(clock, source, protection, ran)
    now = clock()
    l2.inner.set("k", Entry("old", now - 20, now - 10, now + 100))
    assert cache.get("k") == "old"
    assert (l2.calls["get"], l3.calls["get"]) == (1, 1)
    assert cache.stats()["stale_served"] == 1
    assert len(ran) == 1 and source.loads == []
    ran.pop()()  # the refresh
    assert source.loads == ["k"]
    assert cache.get("k") == "new"


def test_a_copy_past_its_hard_expiry_is_not_served_and_the_key_loads(clock: FakeClock) -> None:
    source = DictSource({"k": "new"})
    protection = Protection.never_stale(stale_while_revalidate=True)
    cache, (_, l2, l3) = three_tiers(clock, source, protection, [])
    now = clock()
    l2.inner.set("k", Entry("dead", now - 20, now - 10, now - 5))
    assert cache.get("k") == "new"
    assert (l2.calls["get"], l3.calls["get"]) == (1, 1)
    assert source.loads == ["k"]


def test_an_l2_hit_reads_each_tier_once_and_a_miss_everywhere_loads_once(
    clock: FakeClock,
) -> None:
    source = DictSource({"a": 1, "b": 2})
    cache, (_, l2, l3) = three_tiers(clock, source, Protection.never_stale(), [])
    now = clock()
    l2.inner.set("a", Entry(1, now, now + 100, now + 200))
    assert cache.get("a") == 1
    assert (l2.calls["get"], l3.calls["get"]) == (1, 0)
    assert cache.get("b") == 2
    assert (l2.calls["get"], l3.calls["get"]) == (2, 1)
    assert source.loads == ["b"]
