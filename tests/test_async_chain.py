"""AsyncTieredCache: the chain's behaviour with coroutines, on the shared parts."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tiered_cache import (
    AsyncTieredCache,
    BlockingTierWarning,
    MemoryTier,
    PartialBatchError,
    TieredCacheError,
)
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.recording import RecordingTier
from tiered_cache.testing.sources import AsyncDictSource
from tiered_cache.tier import MISSING, Entry

pytestmark = pytest.mark.anyio

STRICT = Protection.never_stale(lease="off")


def two_tiers(clock: FakeClock) -> list[MemoryTier]:
    return [
        MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock),
        MemoryTier(name="l2", max_entries=1000, ttl=3600, clock=clock),
    ]


async def test_read_through_fills_every_tier_and_hits_l1_next(clock: FakeClock) -> None:
    source = AsyncDictSource({"t:1": "hi"})
    l1, l2 = two_tiers(clock)
    async with AsyncTieredCache([l1, l2], source, clock=clock, protection=STRICT) as cache:
        assert await cache.get("t:1") == "hi"
        assert await cache.get("t:1") == "hi"
        assert source.inner.loads == ["t:1"]
        assert l1.get("t:1") is not MISSING and l2.get("t:1") is not MISSING
        l1.clear()
        assert await cache.get("t:1") == "hi"  # from l2, copied back up
        assert l1.get("t:1") is not MISSING
        assert source.inner.loads == ["t:1"]
        stats = cache.stats()
        assert stats["tiers"][0]["hits"] == 1
        assert stats["tiers"][1]["hits"] == 1


async def test_a_thousand_concurrent_misses_of_one_key_load_once(clock: FakeClock) -> None:
    source = AsyncDictSource({"hot": "value"})
    source.gate = asyncio.Event()
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=STRICT)
    readers = [asyncio.create_task(cache.get("hot")) for _ in range(1000)]
    await asyncio.sleep(0)  # every reader has missed and joined the flight
    source.gate.set()
    assert await asyncio.gather(*readers) == ["value"] * 1000
    assert source.inner.loads == ["hot"]
    assert cache.stats()["singleflight_waits"] == 999
    await cache.aclose()


async def test_a_cancelled_leader_hands_the_flight_to_a_waiter(clock: FakeClock) -> None:
    source = AsyncDictSource({"k": "v"})
    source.gate = asyncio.Event()
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=STRICT)
    leader = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(cache.get("k")) for _ in range(5)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    source.gate.set()
    assert await asyncio.gather(*waiters) == ["v"] * 5
    assert leader.cancelled()
    assert source.inner.loads == ["k"]  # the cancelled leader never reached the source
    await cache.aclose()


def test_threads_each_running_their_own_loop_share_one_load(clock: FakeClock) -> None:
    threads_n, per_thread = 4, 50
    loads = 0
    joined = threading.Event()
    cache = AsyncTieredCache(two_tiers(clock), clock=clock, protection=STRICT)

    async def loader() -> str:
        nonlocal loads
        loads += 1

        # Hold the flight until every reader of every loop has joined it.
        def all_joined() -> bool:
            flight = cache._loader.flights.in_flight("shared")
            return flight is not None and flight.waiters == threads_n * per_thread - 1

        await async_until(all_joined, "every reader of every loop joined the flight")
        joined.set()
        return "value"

    results: list[list[Any]] = []

    def run_loop() -> None:
        async def readers() -> list[Any]:
            return list(
                await asyncio.gather(*(cache.get("shared", loader) for _ in range(per_thread)))
            )

        results.append(asyncio.run(readers()))

    threads = [threading.Thread(target=run_loop) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert joined.is_set()
    assert loads == 1
    assert results == [["value"] * per_thread] * threads_n


async def test_get_many_reads_each_tier_once_and_loads_the_rest_in_one_batch(
    clock: FakeClock,
) -> None:
    source = AsyncDictSource({"a": 1, "b": 2, "c": 3})
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=STRICT)
    await cache.get("a")
    assert await cache.get_many(["a", "b", "c", "missing", "b"]) == {
        "a": 1,
        "b": 2,
        "c": 3,
        "missing": None,
    }
    assert source.inner.batches == [["b", "c", "missing"]]
    assert await cache.get_many(["b", "missing"]) == {"b": 2, "missing": None}
    assert source.inner.reads == 2
    await cache.aclose()


async def test_get_many_with_a_batch_loader_and_partial_failures(clock: FakeClock) -> None:
    source = AsyncDictSource({})
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=STRICT)

    async def batch(keys: Sequence[str]) -> dict[str, Any]:
        return {key: key.upper() for key in keys}

    assert await cache.get_many(["x", "y"], batch) == {"x": "X", "y": "Y"}
    source.failure = RuntimeError("down")
    with pytest.raises(PartialBatchError) as caught:
        await cache.get_many(["x", "z"])
    assert caught.value.values == {"x": "X"}
    assert list(caught.value.errors) == ["z"]
    await cache.aclose()


async def test_set_writes_the_source_then_every_tier(clock: FakeClock) -> None:
    source = AsyncDictSource({"k": "old"})
    l1, l2 = two_tiers(clock)
    cache = AsyncTieredCache([l1, l2], source, clock=clock, protection=STRICT)
    assert await cache.get("k") == "old"
    await cache.set("k", "new")
    assert source.inner.items["k"] == "new"
    assert await cache.get("k") == "new"
    assert source.inner.loads == ["k"]
    entry = l2.get("k")
    assert isinstance(entry, Entry) and entry.value == "new"
    await cache.aclose()


async def test_invalidations_reach_every_tier(clock: FakeClock) -> None:
    source = AsyncDictSource({"user:1:a": 1, "user:1:b": 2, "user:2:a": 3})
    l1, l2 = two_tiers(clock)
    cache = AsyncTieredCache([l1, l2], source, clock=clock, protection=STRICT)
    await cache.get_many(["user:1:a", "user:1:b", "user:2:a"])
    await cache.invalidate("user:2:a")
    assert l1.get("user:2:a") is MISSING and l2.get("user:2:a") is MISSING
    await cache.invalidate_prefix("user:1:")
    assert [tier.get("user:1:b") for tier in (l1, l2)] == [MISSING, MISSING]
    await cache.get("user:1:a")
    await cache.invalidate_many(["user:1:a"])
    assert l2.get("user:1:a") is MISSING
    await cache.get("user:1:a")
    await cache.clear()
    assert len(l1) == 0 and len(l2) == 0
    await cache.aclose()


async def test_an_invalidation_during_a_load_keeps_its_value_out_of_the_tiers(
    clock: FakeClock,
) -> None:
    source = AsyncDictSource({"k": "old"})
    source.gate = asyncio.Event()
    l1, l2 = two_tiers(clock)
    cache = AsyncTieredCache([l1, l2], source, clock=clock, protection=STRICT)
    reader = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    source.inner.items["k"] = "new"
    await cache.invalidate("k")
    source.gate.set()
    await reader  # it read before the invalidation: served, but not cached
    assert l1.get("k") is MISSING and l2.get("k") is MISSING
    assert cache.stats()["fills_refused"] >= 1
    assert await cache.get("k") == "new"
    await cache.aclose()


async def test_fail_safe_serves_the_stale_value_when_the_source_fails(clock: FakeClock) -> None:
    source = AsyncDictSource({"k": "v1"})
    protection = Protection(
        max_stale=600, stale_while_revalidate=False, soft_timeout=None, lease="off"
    )
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, ttl=10, protection=protection)
    assert await cache.get("k") == "v1"
    clock.advance(11)
    source.failure = RuntimeError("throttled")
    assert await cache.get("k") == "v1"
    assert cache.stats()["stale_served_on_error"] == 1
    assert await cache.get("k") == "v1"  # tier 0 rests the source for a while
    assert source.inner.loads == ["k"]
    await cache.aclose()


async def test_stale_while_revalidate_serves_at_once_and_refreshes_in_a_task(
    clock: FakeClock,
) -> None:
    source = AsyncDictSource({"k": "v1"})
    protection = Protection(max_stale=600, soft_timeout=None, lease="off", early_refresh_beta=0)
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, ttl=10, protection=protection)
    assert await cache.get("k") == "v1"
    source.inner.items["k"] = "v2"
    clock.advance(11)
    assert await cache.get("k") == "v1"
    assert await cache.wait_background(5)
    assert await cache.get("k") == "v2"
    assert cache.stats()["refreshes"] == 1
    await cache.aclose()


async def test_a_soft_timeout_serves_stale_and_the_slow_load_fills_later(
    clock: FakeClock,
) -> None:
    source = AsyncDictSource({"k": "v1"})
    protection = Protection(
        max_stale=600, stale_while_revalidate=False, soft_timeout=0.01, lease="off"
    )
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, ttl=10, protection=protection)
    assert await cache.get("k") == "v1"
    source.inner.items["k"] = "v2"
    source.gate = asyncio.Event()
    clock.advance(11)
    assert await cache.get("k") == "v1"
    assert cache.stats()["soft_timeouts"] == 1
    source.gate.set()
    assert await cache.wait_background(5)
    assert await cache.get("k") == "v2"
    await cache.aclose()


async def test_no_source_and_no_loader_is_an_error(clock: FakeClock) -> None:
    cache = AsyncTieredCache(two_tiers(clock), clock=clock, protection=STRICT)
    with pytest.raises(TieredCacheError, match="no source"):
        await cache.get("k")
    await cache.aclose()


async def test_a_sync_tier_that_is_not_in_process_runs_in_threads_with_one_warning(
    clock: FakeClock,
) -> None:
    remote = RecordingTier(MemoryTier(name="remote", max_entries=10, clock=clock))
    with pytest.warns(BlockingTierWarning, match="'remote'"):
        cache = AsyncTieredCache(
            [MemoryTier(max_entries=10, clock=clock), remote],
            AsyncDictSource({"k": "v"}),
            clock=clock,
            protection=STRICT,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert await cache.get("k") == "v"
        assert await cache.get("k") == "v"
    assert remote.calls["get"] == 1
    await cache.aclose()


async def test_from_config_builds_the_async_chain_from_the_same_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = tmp_path / "tiered_cache.toml"
    config.write_text(
        '[tiered_cache]\nnamespace = "tweets"\nttl = "5m"\n\n'
        '[[tiered_cache.tiers]]\nkind = "memory"\nmax_entries = 100\n'
    )
    cache = AsyncTieredCache.from_config(config, clock=clock)
    assert isinstance(cache, AsyncTieredCache)
    assert cache.namespace == "tweets"

    async def load() -> str:
        return "loaded"

    assert await cache.get("k", load) == "loaded"
    assert await cache.get("k", load) == "loaded"
    assert cache.stats()["loads"] == 1
    await cache.aclose()
    await cache.aclose()  # idempotent


async def until_it_waits_for_the_load(
    cache: AsyncTieredCache, request: asyncio.Task[Any], *, first: bool
) -> None:
    """Until ``request`` (a miss of "k") waits for a timed load's task: the ``first`` starts
    it (spawned the moment before it awaits it, with no step between); the next ones join
    the one an earlier caller left running."""

    def waits() -> bool:
        if first:
            return bool(cache._loader._timed)
        left = cache._loader._abandoned.get("k")
        return left is not None and any(wait.caller is request for wait in left[2].waits)

    await async_until(waits, "the request waits for the load's task")


async def test_callers_cancelled_while_a_timed_load_runs_leave_one_load_to_join(
    clock: FakeClock,
) -> None:
    """Clients that give up before a slow source answers (a request timeout shorter than the
    load): each cancelled caller leaves its timed load running, and the next miss joins it,
    so the source sees one load, not one per impatient client."""
    source = AsyncDictSource({"k": "v"})
    source.gate = asyncio.Event()
    timed = Protection.never_stale(lease="off", hard_timeout=60.0)
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=timed)
    for attempt in range(5):
        request = asyncio.create_task(cache.get("k"))
        await until_it_waits_for_the_load(cache, request, first=attempt == 0)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    source.gate.set()
    assert await cache.get("k") == "v"
    assert source.inner.loads == ["k"]
    assert cache.stats()["abandoned_loads"] == 1
    await cache.aclose()


def waiters(cache: AsyncTieredCache, key: str) -> int:
    flight = cache._loader.flights.in_flight(key)
    return 0 if flight is None else flight.waiters


async def test_a_cancelled_batch_leader_hands_its_keys_to_their_waiters(clock: FakeClock) -> None:
    """A ``get_many`` cancelled while it loads (its client went away) does not cancel the
    others waiting for its keys: a ``get`` and a ``get_many`` that joined its flights are
    told their leader is gone and load the keys themselves."""
    source = AsyncDictSource({"a": "A", "b": "B"})
    gate = asyncio.Event()
    batches: list[list[str]] = []

    async def batch(keys: Sequence[str]) -> dict[str, str]:
        batches.append(list(keys))
        await gate.wait()
        return {key: key.upper() for key in keys}

    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=STRICT)
    leader = asyncio.create_task(cache.get_many(["a", "b"], batch))
    await async_until(lambda: batches == [["a", "b"]], "the leader waits in its loader")
    one = asyncio.create_task(cache.get("a"))
    many = asyncio.create_task(cache.get_many(["b"], batch))
    await async_until(
        lambda: [waiters(cache, key) for key in "ab"] == [1, 1], "both joined the leader"
    )
    leader.cancel()
    gate.set()
    assert await one == "A"
    assert await many == {"b": "B"}
    assert leader.cancelled() and not one.cancelled() and not many.cancelled()
    assert source.inner.loads == ["a"]
    assert batches == [["a", "b"], ["b"]]
    await cache.aclose()


class SlowToAnswerSource(AsyncDictSource):
    """Its writes land at once; the answer comes when ``answered`` is set."""

    def __init__(self, items: dict[str, Any]) -> None:
        super().__init__(items)
        self.answered = asyncio.Event()

    async def store(self, key: str, value: Any) -> None:
        self.inner.store(key, value)
        await self.answered.wait()


@pytest.mark.parametrize("write", ["set", "set_many"])
async def test_a_write_whose_caller_is_cancelled_leaves_no_old_copy(
    clock: FakeClock, write: str
) -> None:
    """A request cancelled while the source is being written (a client timeout): the write
    may have landed at the source, so the chain finishes it -- no tier keeps serving the
    value from before it."""
    source = SlowToAnswerSource({"k": "old"})
    l1, l2 = two_tiers(clock)
    cache = AsyncTieredCache([l1, l2], source, clock=clock, protection=STRICT)
    assert await cache.get("k") == "old"
    request = asyncio.create_task(
        cache.set("k", "new") if write == "set" else cache.set_many({"k": "new"})
    )
    await async_until(lambda: source.inner.items["k"] == "new", "inside the source's write")
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    source.answered.set()
    assert await cache.wait_background(5.0)
    assert await cache.get("k") == "new"
    for tier in (l1, l2):
        entry = tier.get("k")
        assert entry is MISSING or entry.value == "new"
    await cache.aclose()


async def test_aclose_lets_a_write_in_flight_finish(clock: FakeClock) -> None:
    """A shutdown (``async with`` exit) while a request writes: the write runs to its end
    and its caller gets its answer, not a cancellation that was not its own."""
    source = AsyncDictSource({})
    writing, answered = asyncio.Event(), asyncio.Event()
    written: list[str] = []

    async def store(key: str, value: Any) -> None:
        writing.set()
        await answered.wait()
        written.append(key)

    source.store = store  # type: ignore[method-assign]
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=STRICT)
    request = asyncio.create_task(cache.set("k", "v"))
    await asyncio.wait_for(writing.wait(), 10)  # inside the source's write
    closing = asyncio.create_task(cache.aclose())
    await asyncio.sleep(0.01)
    assert not closing.done()  # it waits for the write
    answered.set()
    await request
    await closing
    assert written == ["k"] and not request.cancelled()


async def test_a_gets_ttl_is_what_its_loaded_value_goes_stale_by(clock: FakeClock) -> None:
    """``get(key, loader, ttl=5)`` on a chain whose TTL is an hour: the value it loaded is
    loaded again 6 s later (the per-call TTL reaches the load the miss leads)."""
    loads: list[str] = []

    async def load() -> str:
        loads.append("load")
        return f"v{len(loads)}"

    async with AsyncTieredCache(
        two_tiers(clock), clock=clock, ttl=3600, protection=STRICT
    ) as cache:
        assert await cache.get("k", load, ttl=5) == "v1"
        clock.advance(4)
        assert await cache.get("k", load, ttl=5) == "v1"
        clock.advance(2)
        assert await cache.get("k", load, ttl=5) == "v2"


async def test_a_miss_counts_each_tiers_look_once(clock: FakeClock) -> None:
    """The asyncio chain's miss walks the tiers with ``read_through`` (the threaded chain's, with
    its own plain walk): tier 0, just missed by the chain's first look, is looked at again
    quietly (one miss counted, not two); every other tier's miss is counted."""
    source = AsyncDictSource({"k": "v"})
    cache = AsyncTieredCache(two_tiers(clock), source, clock=clock, protection=STRICT)
    assert await cache.get("k") == "v"
    assert [tier["misses"] for tier in cache.stats()["tiers"]] == [1, 1]
    await cache.aclose()


async def test_a_miss_past_a_bypassed_memory_tier_reads_the_shared_tier(clock: FakeClock) -> None:
    """While the bus is down and memory is bypassed (no bound), the walk of a miss skips the
    memory tier and reads the shared tier below it: no load for a key it holds."""
    l1, l2 = two_tiers(clock)
    l2.local = False  # standing for Redis: not bypassed while the bus is down
    source = AsyncDictSource({"k": "v"})
    bus = CuttableBus()
    with pytest.warns(BlockingTierWarning):  # a sync tier not in-process: calls in threads
        cache = AsyncTieredCache(
            [l1, l2], source, clock=clock, protection=STRICT, bus=bus, max_stale_when_disconnected=0
        )
    assert await cache.get("k") == "v"  # in both tiers now
    bus.cut()
    assert await cache.get("k") == "v"
    assert source.inner.loads == ["k"]
    assert cache.stats()["tiers"][1]["hits"] == 1
    await cache.aclose()
