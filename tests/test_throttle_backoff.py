"""A throttled key's rest seen through the chain, threads and asyncio, on a fake clock:
what reaches the loader while keys rest (the rule itself: tests/test_throttle_rest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from tiered_cache import (
    AsyncTieredCache,
    MemoryTier,
    PartialBatchError,
    SourceResting,
    SourceThrottled,
    TieredCache,
)
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock


class Table:
    """A batch loader that records the keys of each call and throttles while ``throttling``."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.throttling = True

    def answer(self, keys: Sequence[str]) -> dict[str, Any]:
        self.calls.append(list(keys))
        if self.throttling:
            raise SourceThrottled("ProvisionedThroughputExceededException")
        return {key: key.upper() for key in keys}

    def __call__(self, keys: Sequence[str]) -> dict[str, Any]:
        return self.answer(keys)

    async def coroutine(self, keys: Sequence[str]) -> dict[str, Any]:
        return self.answer(keys)


def tiers(clock: FakeClock) -> list[MemoryTier]:
    return [MemoryTier(max_entries=100, ttl=60, clock=clock)]


def test_a_get_many_whose_keys_all_rest_calls_no_loader(clock: FakeClock) -> None:
    """Every key of the batch rests: each is answered SourceResting and the loader is not
    called (on 8ff69d3 it was called with no keys: a request, or an SQL ``IN ()``)."""
    table = Table()
    cache = TieredCache(tiers(clock), clock=clock, protection=Protection(lease="off"))
    with pytest.raises(PartialBatchError):
        cache.get_many(["a", "b"], table)
    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["a", "b"], table)
    assert all(isinstance(e, SourceResting) for e in caught.value.errors.values())
    assert table.calls == [["a", "b"]]


@pytest.mark.anyio
async def test_an_async_get_many_whose_keys_all_rest_calls_no_loader(clock: FakeClock) -> None:
    table = Table()
    cache = AsyncTieredCache(tiers(clock), clock=clock, protection=Protection(lease="off"))
    for _ in range(2):
        with pytest.raises(PartialBatchError):
            await cache.get_many(["a", "b"], table.coroutine)
    assert table.calls == [["a", "b"]]
    await cache.aclose()


#: A rest's length: throttle_backoff 1.25 s, so the first rest (a tenth) is one tick of the
#: clock and every length is a whole number of ticks (exact in binary: no rounding).
BACKOFF = 1.25
TICK = 0.125


def read_one(cache: TieredCache, key: str, how: str, table: Table) -> Any:
    """``key`` read by ``get`` or by ``get_many``: its value, or SourceThrottled."""
    try:
        if how == "get":
            return cache.get(key, lambda: table([key])[key])
        return cache.get_many([key], table)[key]
    except PartialBatchError as exc:
        assert isinstance(exc.errors[key], SourceThrottled)
        return SourceThrottled
    except SourceThrottled:
        return SourceThrottled


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_a_key_throttled_in_a_row_rests_twice_as_long_each_time_and_short_after_an_answer(
    clock: FakeClock, how: str
) -> None:
    """A never-cached key read on every tick while the table throttles: it is asked at
    ticks 0, 1, 3, 7, 15 (rests of 1, 2, 4, 8 ticks), then every 10 (throttle_backoff);
    once it answered, the next throttle rests the key one tick again. A fixed rest of
    throttle_backoff (8ff69d3) asked at ticks 0, 10, 20, 30, 40: each throttle that lifted
    sooner left the key failing for up to its whole second."""
    table = Table()
    protection = Protection(lease="off", max_stale=0.0, throttle_backoff=BACKOFF)
    cache = TieredCache(tiers(clock), ttl=0.5, clock=clock, protection=protection)
    asked: list[int] = []
    for tick in range(41):
        calls = len(table.calls)
        assert read_one(cache, "a", how, table) is SourceThrottled
        if len(table.calls) > calls:
            asked.append(tick)
        clock.advance(TICK)
    assert asked == [0, 1, 3, 7, 15, 25, 35]

    table.throttling = False  # the table answers from tick 41; the key rests to tick 45
    answers = []
    for _ in range(5):
        clock.advance(TICK)
        answers.append(read_one(cache, "a", how, table))
    assert answers == [SourceThrottled] * 3 + ["A"] * 2
    assert len(table.calls) == 8

    cache.invalidate("a")
    table.throttling = True
    assert read_one(cache, "a", how, table) is SourceThrottled
    clock.advance(TICK)
    assert read_one(cache, "a", how, table) is SourceThrottled  # asked again: one tick
    assert len(table.calls) == 10


class Unsayable(SourceThrottled):
    """A throttle whose message cannot be made (its ``__str__`` fails)."""

    def __str__(self) -> str:
        raise LookupError("no message")


def test_a_throttle_that_cannot_say_itself_rests_its_key_and_fails_no_batch(
    clock: FakeClock,
) -> None:
    """The rest's answer quoted the throttle's message: a throttle whose ``__str__`` raised
    turned every read of its key in the rest into that error (LookupError, not
    SourceResting), and a get_many with the key in it failed whole, the other keys unserved."""

    def load(keys: Sequence[str]) -> dict[str, Any]:
        if "a" in keys:
            raise Unsayable()
        return {key: key.upper() for key in keys}

    cache = TieredCache(tiers(clock), clock=clock, protection=Protection(lease="off"))
    with pytest.raises(Unsayable):
        cache.get("a", lambda: load(["a"]))
    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["a", "b"], load)
    assert caught.value.values == {"b": "B"}
    assert type(caught.value.errors["a"]) is SourceResting
    assert type(caught.value.errors["a"].__cause__) is Unsayable
