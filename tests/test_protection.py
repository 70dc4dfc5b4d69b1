"""Source protection without a shared tier: stale-while-revalidate, fail-safe, XFetch early
refresh, load timeouts, and late loads that must not resurrect invalidated values."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import (
    AsyncTieredCache,
    LoadTimeout,
    MemoryTier,
    PartialBatchError,
    PartialLoadError,
    SourceError,
    SourceThrottled,
    TieredCache,
)
from tiered_cache.protection import Protection, xfetch_due
from tiered_cache.testing import FakeClock
from tiered_cache.testing.loads import Background, Loader


def stale_protection(**options: Any) -> Protection:
    """Values servable stale 100 s past their TTL, no early refresh, no soft timeout (real
    seconds): ``options`` over these."""
    return Protection(
        **{"max_stale": 100.0, "early_refresh_beta": 0.0, "soft_timeout": None, **options}
    )


def make_cache(
    clock: FakeClock, background: Callable[..., object] | None, **options: Any
) -> TieredCache:
    """One memory tier, values fresh 10 s and servable 100 s more (:func:`stale_protection`
    with ``options``)."""
    return TieredCache(
        [MemoryTier(max_entries=100, ttl=1000, clock=clock)],
        ttl=10,
        clock=clock,
        protection=stale_protection(**options),
        background=background,
    )


def test_stale_value_is_served_while_one_refresh_runs(clock: FakeClock) -> None:
    background = Background()
    cache = make_cache(clock, background)
    loader = Loader()
    assert cache.get("k", loader) == "v1"
    clock.advance(11)  # past freshness, within max_stale
    for _ in range(50):
        assert cache.get("k", loader) == "v1"
    assert loader.calls == 1
    assert len(background.tasks) == 1  # fifty stale reads, one refresh
    assert background.run() == 1
    assert cache.get("k", loader) == "v2"
    stats = cache.stats()
    assert stats["stale_served"] == 50
    assert stats["refreshes"] == 1


def test_past_max_stale_the_read_waits_for_the_load(clock: FakeClock) -> None:
    background = Background()
    cache = make_cache(clock, background)
    loader = Loader()
    cache.get("k", loader)
    clock.advance(10 + 100 + 1)
    assert cache.get("k", loader) == "v2"
    assert background.tasks == []


def test_fail_safe_serves_stale_when_the_source_throttles(clock: FakeClock) -> None:
    background = Background()
    cache = make_cache(clock, background, stale_while_revalidate=False, fail_safe_throttle=5.0)
    loader = Loader()
    cache.get("k", loader)
    clock.advance(11)
    loader.error = SourceThrottled("ProvisionedThroughputExceededException")
    assert cache.get("k", loader) == "v1"
    assert loader.calls == 2
    # for fail_safe_throttle seconds the stale value counts as fresh: the source gets a rest
    for _ in range(20):
        assert cache.get("k", loader) == "v1"
    assert loader.calls == 2
    clock.advance(6)
    assert cache.get("k", loader) == "v1"
    assert loader.calls == 3
    stats = cache.stats()
    assert stats["stale_served_on_error"] == 2
    assert stats["tiers"][0]["errors"] == 0  # and nothing was written to tier 0 for it


def test_a_key_never_cached_surfaces_the_source_error(clock: FakeClock) -> None:
    cache = make_cache(clock, Background())
    loader = Loader()
    loader.error = SourceThrottled("throttled")
    with pytest.raises(SourceThrottled):
        cache.get("never", loader)


def test_past_max_stale_a_failure_reaches_the_caller(clock: FakeClock) -> None:
    cache = make_cache(clock, Background(), stale_while_revalidate=False)
    loader = Loader()
    cache.get("k", loader)
    clock.advance(200)
    loader.error = ConnectionError("down")
    with pytest.raises(ConnectionError):
        cache.get("k", loader)


@pytest.mark.parametrize("written", [False, True], ids=["kept", "written before it ran"])
def test_failed_background_refresh_keeps_the_stale_value(clock: FakeClock, written: bool) -> None:
    """The source rests on the stale value (served as fresh for ``fail_safe_throttle``),
    unless a write invalidated it between the read that served it and started the refresh,
    and the refresh's run (on a pool thread, or a task): the rest was judged by the
    refresh's own fence mark, taken when it ran, after the write, and put the written-over
    value back. It is judged by the mark the stale value was read under."""
    background = Background()
    cache = make_cache(clock, background)
    loader = Loader()
    cache.get("k", loader)
    clock.advance(11)
    loader.error = ConnectionError("down")
    assert cache.get("k", loader) == "v1"  # stale: the refresh is queued
    if written:
        cache.invalidate("k")
    background.run()
    assert cache.stats()["refresh_failures"] == 1
    loader.error = None
    assert cache.get("k", loader) == ("v3" if written else "v1")


def test_an_async_failed_refresh_rests_on_no_stale_value_invalidated_before_it_ran(
    clock: FakeClock,
) -> None:
    """The asyncio chain's refresh is a task, run after the read that spawned it: the
    invalidation here comes before the task's first step (the fence's own, which cannot
    yield to the loop in between)."""

    async def main() -> None:
        cache = AsyncTieredCache(
            [MemoryTier(max_entries=100, ttl=1000, clock=clock)],
            ttl=10,
            clock=clock,
            protection=stale_protection(),
        )
        calls: list[str] = []

        async def load() -> str:
            calls.append("load")
            if len(calls) == 2:
                raise ConnectionError("down")
            return f"v{len(calls)}"

        try:
            assert await cache.get("k", load) == "v1"
            clock.advance(11)
            assert await cache.get("k", load) == "v1"  # stale: the refresh task spawned
            cache._fence.invalidate(["k"])  # a write, before the task runs
            assert await cache.wait_background(10)
            assert cache.stats()["refresh_failures"] == 1
            assert await cache.get("k", load) == "v3"  # not v1
        finally:
            await cache.aclose()

    asyncio.run(main())


def test_xfetch_rule() -> None:
    # far from expiry nothing fires, even with the most eager draw the window allows
    assert not xfetch_due(now=0.0, soft_expiry=100.0, load_duration=1.0, beta=1.0, u=0.5)
    # -ln(u) * delta * beta reaches past the expiry: refresh
    assert xfetch_due(now=99.0, soft_expiry=100.0, load_duration=1.0, beta=1.0, u=0.1)
    assert not xfetch_due(now=99.0, soft_expiry=100.0, load_duration=1.0, beta=1.0, u=0.9)
    # a larger beta refreshes earlier
    assert xfetch_due(now=95.0, soft_expiry=100.0, load_duration=1.0, beta=10.0, u=0.5)


def test_hot_entry_refreshes_early_so_it_never_expires(clock: FakeClock) -> None:
    background = Background()
    draws = iter([0.9, 0.9, 0.001])  # the third read near expiry wins the draw
    protection = Protection(max_stale=0.0, early_refresh_beta=1.0, soft_timeout=None)
    cache = TieredCache(
        [MemoryTier(clock=clock)],
        ttl=10,
        clock=clock,
        protection=protection,
        background=background,
        rng=lambda: next(draws),
    )
    loads: list[int] = []

    def loader() -> str:
        loads.append(1)
        clock.advance(0.1)  # the load took 100 ms: XFetch's delta
        return f"v{len(loads)}"

    assert cache.get("hot", loader) == "v1"
    clock.advance(3)  # 7 s before expiry, beyond 20 x delta: no draw (the rng is not consumed)
    assert cache.get("hot", loader) == "v1"
    clock.advance(6.5)  # now 0.5 s before the soft expiry
    assert cache.get("hot", loader) == "v1"  # draw 0.9: no refresh
    assert cache.get("hot", loader) == "v1"  # draw 0.9: no refresh
    assert background.tasks == []
    assert cache.get("hot", loader) == "v1"  # draw 0.001: refresh queued, value still served
    assert len(background.tasks) == 1
    background.run()
    clock.advance(1)  # past the first entry's expiry: the refreshed entry is served
    assert cache.get("hot", loader) == "v2"
    assert cache.stats()["early_refreshes"] == 1


class BlockingLoader:
    """A loader that blocks until released: a slow source under the test's control."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        assert self.release.wait(timeout=10), "the test never released the load"
        return self.value


def test_soft_timeout_serves_stale_and_the_load_fills_later(clock: FakeClock) -> None:
    cache = make_cache(clock, Background(), stale_while_revalidate=False, soft_timeout=0.05)
    cache.get("k", lambda: "old")
    clock.advance(11)
    slow = BlockingLoader("new")
    assert cache.get("k", slow) == "old"  # the load is still running
    assert cache.stats()["soft_timeouts"] == 1
    slow.release.set()
    assert cache.wait_background(timeout=10)
    assert cache.tiers[0].get("k").value == "new"  # type: ignore[union-attr]
    assert slow.calls == 1


def test_hard_timeout_raises_and_the_late_value_is_kept(clock: FakeClock) -> None:
    cache = make_cache(clock, Background(), hard_timeout=0.05)
    slow = BlockingLoader("late")
    with pytest.raises(LoadTimeout, match="hard timeout"):
        cache.get("k", slow)
    slow.release.set()
    assert cache.wait_background(timeout=10)
    assert cache.tiers[0].get("k").value == "late"  # type: ignore[union-attr]
    assert cache.stats()["hard_timeouts"] == 1


def test_a_late_load_does_not_bring_back_an_invalidated_value(clock: FakeClock) -> None:
    cache = make_cache(clock, Background(), hard_timeout=0.05)
    slow = BlockingLoader("read-before-the-write")
    with pytest.raises(LoadTimeout):
        cache.get("k", slow)
    cache.invalidate("k")  # a writer changed the source after the load read it
    slow.release.set()
    assert cache.wait_background(timeout=10)
    assert cache.tiers[0].get("k").__bool__() is False


def test_500_threads_on_one_cold_key_read_the_source_once() -> None:
    cache = TieredCache([MemoryTier(max_entries=10)])
    slow = BlockingLoader("tweet")
    results: list[str] = []
    barrier = threading.Barrier(500)

    def reader() -> None:
        barrier.wait()
        results.append(cache.get("tweet:viral", slow))

    threads = [threading.Thread(target=reader) for _ in range(500)]
    for thread in threads:
        thread.start()
    assert slow.started.wait(timeout=10)
    # Wait (boundedly: a regression must fail, not hang) until the other 499 have joined.
    flight = cache._loader.flights.in_flight("tweet:viral")
    deadline = time.monotonic() + 10
    try:
        while flight is not None and flight.waiters < 499:
            assert time.monotonic() < deadline, f"only {flight.waiters} of 499 readers joined"
            threading.Event().wait(0.005)
    finally:
        slow.release.set()
    for thread in threads:
        thread.join()
    assert slow.calls == 1
    assert results == ["tweet"] * 500
    cache.close()


def test_get_many_serves_stale_entries_and_refreshes_them(clock: FakeClock) -> None:
    background = Background()
    source = {"a": "a1", "b": "b1"}
    loads: list[list[str]] = []

    class Source:
        name = "dict"

        def load(self, key: str) -> str:
            loads.append([key])
            return source[key]

        def load_many(self, keys: list[str]) -> dict[str, str]:
            loads.append(list(keys))
            return {key: source[key] for key in keys if key in source}

        def store(self, key: str, value: str) -> None: ...

        def remove(self, key: str) -> None: ...

        def close(self) -> None: ...

    cache = TieredCache(
        [MemoryTier(clock=clock)],
        Source(),
        ttl=10,
        clock=clock,
        protection=stale_protection(),
        background=background,
    )
    assert cache.get_many(["a", "b"]) == {"a": "a1", "b": "b1"}
    clock.advance(11)
    source.update({"a": "a2", "b": "b2", "c": "c1"})
    assert cache.get_many(["a", "b", "c"]) == {"a": "a1", "b": "b1", "c": "c1"}
    assert loads == [["a", "b"], ["c"]]
    assert background.run() == 2
    assert cache.get_many(["a", "b"]) == {"a": "a2", "b": "b2"}


def test_get_many_fail_safe_when_every_missing_key_has_a_stale_value(clock: FakeClock) -> None:
    cache = make_cache(clock, Background(), stale_while_revalidate=False)
    cache.get_many(["a", "b"], lambda keys: {key: key.upper() for key in keys})

    def failing(keys: object) -> dict[str, str]:
        raise SourceThrottled("throttled")

    clock.advance(11)
    assert cache.get_many(["a", "b"], failing) == {"a": "A", "b": "B"}
    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["a", "new"], failing)
    assert isinstance(caught.value.errors["new"], SourceThrottled)


def test_get_many_serves_what_it_can_and_reports_only_the_keys_it_cannot(
    clock: FakeClock,
) -> None:
    """A throttled batch mixing keys with and without a stale copy: the stale keys and the
    keys that are fresh are served; only the keys with nothing to serve are reported."""
    cache = make_cache(clock, Background(), stale_while_revalidate=False)
    cache.get_many(["a", "b"], lambda keys: {key: key.upper() for key in keys})
    clock.advance(11)  # a and b go stale
    cache.get_many(["fresh"], lambda keys: {"fresh": "F"})
    throttled = SourceThrottled("throttled")

    def failing(keys: object) -> dict[str, str]:
        raise throttled

    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["a", "new", "fresh", "b", "other"], failing)
    error = caught.value
    assert error.values == {"a": "A", "fresh": "F", "b": "B"}
    assert error.errors == {"new": throttled, "other": throttled}
    assert isinstance(error, SourceError)
    assert "new" in str(error) and "other" in str(error)


def test_get_many_keeps_what_a_failing_batch_read_before_it_failed(clock: FakeClock) -> None:
    cache = make_cache(clock, Background(), stale_while_revalidate=False)

    def half_read(keys: object) -> dict[str, str]:
        raise PartialLoadError("throttled half-way", found={"a": "A", "gone": None}, left=1)

    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["a", "gone", "b"], half_read)
    assert caught.value.values == {"a": "A", "gone": None}
    assert list(caught.value.errors) == ["b"]
    # what the batch read is cached like any other load
    assert cache.get_many(["a", "gone"], lambda keys: {}) == {"a": "A", "gone": None}


def test_keys_a_failing_batch_read_are_not_refreshed_early(clock: FakeClock) -> None:
    """A batch that failed part way has no load time for the keys it read (it is not known
    how much of the time was theirs): they record none, so early refresh leaves them be."""
    background = Background()
    cache = TieredCache(
        [MemoryTier(max_entries=100, ttl=1000, clock=clock)],
        ttl=10,
        clock=clock,
        protection=Protection(max_stale=0.0, early_refresh_beta=1.0, soft_timeout=None),
        background=background,
        rng=lambda: 1e-9,  # the draw says "refresh now" whenever the entry's window allows
    )

    def half_read(keys: object) -> dict[str, str]:
        clock.advance(1.0)  # the batch took 1 s before it failed
        raise PartialLoadError("throttled half-way", found={"a": "A"}, left=1)

    with pytest.raises(PartialBatchError):
        cache.get_many(["a", "b"], half_read)
    clock.advance(9.9)
    assert cache.get("a") == "A"
    assert cache.stats()["early_refreshes"] == 0 and background.tasks == []


def test_without_a_throttle_fail_safe_asks_the_source_again_on_the_next_read(
    clock: FakeClock,
) -> None:
    cache = make_cache(clock, Background(), stale_while_revalidate=False, fail_safe_throttle=0.0)
    loader = Loader()
    assert cache.get("k", loader) == "v1"
    clock.advance(11)  # stale, within max_stale
    loader.error = ConnectionError("source down")
    assert cache.get("k", loader) == "v1"
    assert cache.get("k", loader) == "v1"  # nothing rests the source: asked again
    assert loader.calls == 3
    stats = cache.stats()
    assert stats["stale_served_on_error"] == 2
    assert stats["tiers"][0]["errors"] == 0  # and nothing was written to tier 0 for it


def test_what_a_failing_batch_read_keeps_the_ttl_the_read_asked_for(clock: FakeClock) -> None:
    """The keys a batch read before it failed are entries like any other load's: the ttl of
    the call (not the chain's 10 s), a load time, served by a plain get from memory."""
    cache = make_cache(clock, Background(), stale_while_revalidate=False, max_stale=0.0)

    def half_read(keys: object) -> dict[str, str]:
        raise PartialLoadError("throttled half-way", found={"a": "A"}, left=1)

    with pytest.raises(PartialBatchError):
        cache.get_many(["a", "b"], half_read, ttl=30)
    clock.advance(20)  # past the chain's ttl, within the call's
    assert cache.get("a", lambda: "A2") == "A"
    clock.advance(11)
    assert cache.get("a", lambda: "A2") == "A2"


def test_never_stale_honours_its_overrides() -> None:
    plain = Protection.never_stale()
    assert (plain.max_stale, plain.early_refresh_beta, plain.soft_timeout) == (0.0, 0.0, None)
    assert not plain.stale_while_revalidate and not plain.fail_safe
    tuned = Protection.never_stale(lease="off", max_stale=30.0, hard_timeout=2.0)
    assert (tuned.lease, tuned.max_stale, tuned.hard_timeout) == ("off", 30.0, 2.0)
    # what is not overridden stays plain read-through
    assert (tuned.early_refresh_beta, tuned.stale_while_revalidate) == (0.0, False)


def test_early_refresh_is_on_by_default(clock: FakeClock) -> None:
    """With no protection options at all, a hot entry near its expiry is refreshed early: the
    default XFetch beta must not silently turn the feature off."""
    assert Protection().early_refresh_beta > 0
    background = Background()
    cache = TieredCache(
        [MemoryTier(clock=clock)],
        ttl=10,
        clock=clock,
        background=background,
        rng=lambda: 1e-6,  # a draw that refreshes for any beta above about 0.1
    )
    loads: list[int] = []

    def loader() -> str:
        loads.append(1)
        clock.advance(1.0)  # a load of one second: XFetch's delta
        return f"v{len(loads)}"

    assert cache.get("hot", loader) == "v1"
    clock.advance(8.5)  # half a second before the soft expiry, the value still fresh
    assert cache.get("hot", loader) == "v1"
    assert cache.stats()["early_refreshes"] == 1
    assert background.run() == 1
    assert loads == [1, 1]
    clock.advance(1.0)  # past the first entry's expiry: the early refresh is what is served
    assert cache.get("hot", loader) == "v2"


def test_xfetch_at_the_bounds_of_its_draw() -> None:
    # random() may return 0.0, where ln(u) has no value: that draw refreshes, it does not raise.
    assert xfetch_due(now=50.0, soft_expiry=100.0, load_duration=1.0, beta=1.0, u=0.0)
    # u = 1 adds nothing: due exactly at the soft expiry, not a moment before
    assert xfetch_due(now=100.0, soft_expiry=100.0, load_duration=1.0, beta=1.0, u=1.0)
    assert not xfetch_due(now=99.999, soft_expiry=100.0, load_duration=1.0, beta=1.0, u=1.0)
