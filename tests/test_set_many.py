"""``set_many`` on both chains: set's order of source, fence and tiers, for several keys; and
what ``set`` and ``set_many`` share (ttl, write-around, loads in flight, the bus)."""

from __future__ import annotations

from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.loads import Background
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MISSING, Entry

STRICT = Protection.never_stale(lease="off")


def tiers(clock: FakeClock) -> list[MemoryTier]:
    return [
        MemoryTier(name="l1", max_entries=100, clock=clock),
        MemoryTier(name="l2", max_entries=100, clock=clock),
    ]


class FailingAt(DictSource):
    """A source whose ``store`` fails for one key (after storing the ones before it)."""

    def __init__(self, items: dict[str, Any], failing: str) -> None:
        super().__init__(items)
        self.failing = failing

    def store(self, key: str, value: Any) -> None:
        if key == self.failing:
            raise RuntimeError(f"cannot write {key}")
        super().store(key, value)


#: The two writes: ``set`` once per key, or ``set_many`` once.
WRITES = ["set", "set_many"]


def write(cache: TieredCache, how: str, items: dict[str, Any], ttl: float | None = None) -> None:
    if how == "set_many":
        cache.set_many(items, ttl=ttl)
        return
    for key, value in items.items():
        cache.set(key, value, ttl=ttl)


def values(tier: MemoryTier, keys: list[str]) -> list[Any]:
    return [entry.value if isinstance(entry := tier.get(key), Entry) else MISSING for key in keys]


def test_set_many_writes_the_source_then_every_tier(clock: FakeClock) -> None:
    source = DictSource({"a": 0})
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT)
    assert cache.get("a") == 0
    cache.set_many({"a": 1, "b": 2})
    assert source.items == {"a": 1, "b": 2}
    assert values(l1, ["a", "b"]) == [1, 2] and values(l2, ["a", "b"]) == [1, 2]
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert source.loads == ["a"]


def test_a_source_failing_part_way_drops_the_keys_it_took(clock: FakeClock) -> None:
    source = FailingAt({"a": 0, "b": 0, "c": 0}, failing="b")
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT)
    cache.get_many(["a", "b", "c"])
    with pytest.raises(RuntimeError, match="cannot write b"):
        cache.set_many({"a": 1, "b": 2, "c": 3})
    assert source.items == {"a": 1, "b": 0, "c": 0}
    # "a" changed at the source: no tier may serve its old value; "b" and "c" did not.
    assert values(l1, ["a", "b", "c"]) == [MISSING, 0, 0]
    assert values(l2, ["a", "b", "c"]) == [MISSING, 0, 0]
    assert cache.get("a") == 1


def test_a_bad_ttl_is_refused_before_the_source_takes_the_values(clock: FakeClock) -> None:
    """The ttl was read as the entries were stamped, after the source took the values (the
    keys were then invalidated in every tier, which kept the old values); it is checked before
    anything is written: the source and the tiers keep the old values."""
    source = DictSource({"a": 0, "b": 0})
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT)
    assert cache.get_many(["a", "b"]) == {"a": 0, "b": 0}
    with pytest.raises(ValueError, match="duration"):
        cache.set_many({"a": 1, "b": 2}, ttl="soon")
    assert source.items == {"a": 0, "b": 0}
    assert cache.get_many(["a", "b"]) == {"a": 0, "b": 0}


@pytest.mark.parametrize("how", WRITES)
def test_a_load_in_flight_during_a_write_does_not_fill_what_it_read(
    clock: FakeClock, how: str
) -> None:
    source = DictSource({"k": "old"})
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT)

    def read_then_overtaken() -> str:
        value = source.items["k"]
        write(cache, how, {"k": "new", "j": "new"})  # a writer, while this load is in flight
        return value

    assert cache.get("k", read_then_overtaken) == "old"
    assert values(l1, ["k", "j"]) == ["new", "new"] and values(l2, ["k", "j"]) == ["new", "new"]
    assert cache.get("k") == "new"


@pytest.mark.parametrize("how", WRITES)
def test_a_write_keeps_the_ttl_it_was_given(clock: FakeClock, how: str) -> None:
    source = DictSource()
    cache = TieredCache(tiers(clock), source, clock=clock, ttl=60, protection=STRICT)
    write(cache, how, {"a": 1, "b": 2}, ttl=5)
    source.items.update({"a": 10, "b": 20})  # changed behind the cache's back
    clock.advance(4)
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    clock.advance(2)  # past the 5 s given, well within the chain's 60 s
    assert cache.get_many(["a", "b"]) == {"a": 10, "b": 20}


@pytest.mark.parametrize("how", WRITES)
def test_written_values_are_not_refreshed_early(clock: FakeClock, how: str) -> None:
    """Early refresh (XFetch) scales with how long a load took; a written value was not
    loaded, so it records no load time and is never refreshed before it expires."""
    background = Background()
    cache = TieredCache(
        tiers(clock),
        DictSource(),
        clock=clock,
        protection=Protection.never_stale(lease="off", early_refresh_beta=1.0),
        background=background,
        rng=lambda: 1e-9,  # the draw says "refresh now" whenever the entry's window allows
    )
    write(cache, how, {"a": 1}, ttl=10)
    clock.advance(9.9)
    assert cache.get("a") == 1
    assert cache.stats()["early_refreshes"] == 0 and background.tasks == []


@pytest.mark.parametrize("how", WRITES)
def test_a_write_around_writes_the_source_and_drops_every_copy(clock: FakeClock, how: str) -> None:
    source = DictSource({"a": 0, "b": 0})
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT, write_policy="around")
    cache.get_many(["a", "b"])
    write(cache, how, {"a": 1, "b": 2})
    assert source.items == {"a": 1, "b": 2}
    assert values(l1, ["a", "b"]) == [MISSING, MISSING]
    assert values(l2, ["a", "b"]) == [MISSING, MISSING]
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert source.batches == [["a", "b"], ["a", "b"]]


def test_set_many_around_failing_part_way_still_drops_the_copies(clock: FakeClock) -> None:
    """Write-around drops every key it was given, also when the source failed part way:
    "a" changed there, and no tier may serve its old value."""
    source = FailingAt({"a": 0, "b": 0}, failing="b")
    l1, l2 = tiers(clock)
    cache = TieredCache([l1, l2], source, clock=clock, protection=STRICT, write_policy="around")
    cache.get_many(["a", "b"])
    with pytest.raises(RuntimeError, match="cannot write b"):
        cache.set_many({"a": 1, "b": 2})
    assert values(l1, ["a", "b"]) == [MISSING, MISSING]
    assert values(l2, ["a", "b"]) == [MISSING, MISSING]
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": 0}


@pytest.mark.parametrize("how", WRITES)
def test_a_write_tells_the_other_processes_which_keys_changed(clock: FakeClock, how: str) -> None:
    """Two chains with their own memory and one bus stand for two processes."""
    bus = LocalBus()
    heard: list[Any] = []
    bus.subscribe(Recorder(heard))
    source = DictSource({"a": 0, "b": 0, "other": 0})
    writer, reader = (
        TieredCache(tiers(clock), source, clock=clock, protection=STRICT, bus=bus) for _ in range(2)
    )
    assert reader.get_many(["a", "b", "other"]) == {"a": 0, "b": 0, "other": 0}
    write(writer, how, {"a": 1, "b": 2})
    told = [(message.keys, message.clear) for message in heard]
    if how == "set":
        assert told == [(("a",), False), (("b",), False)]
    else:
        assert told == [(("a", "b"), False)]
    # The reader drops the two keys (and reads them again), and keeps the other.
    assert reader.get_many(["a", "b", "other"]) == {"a": 1, "b": 2, "other": 0}
    assert source.batches == [["a", "b", "other"], ["a", "b"]]


class Recorder:
    """A bus listener that keeps what it hears."""

    def __init__(self, heard: list[Any]) -> None:
        self.heard = heard

    def on_message(self, message: Any) -> None:
        self.heard.append(message)

    def on_disconnect(self) -> None:
        pass

    def on_reconnect(self) -> None:
        pass

    def on_error(self, error: Exception) -> None:
        pass


@pytest.mark.anyio
async def test_the_async_chain_has_the_same_set_many(clock: FakeClock) -> None:
    source = FailingAt({"a": 0, "b": 0}, failing="zz")
    l1, l2 = tiers(clock)
    with pytest.warns(match="source 'dict'"):
        cache = AsyncTieredCache([l1, l2], source, clock=clock, protection=STRICT)
    await cache.set_many({"a": 1, "b": 2})
    assert source.items == {"a": 1, "b": 2}
    assert values(l2, ["a", "b"]) == [1, 2]
    assert await cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert source.loads == []
    await cache.aclose()
