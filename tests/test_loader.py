"""The loader's background work and fail-safe rest, as a caller of the chain sees them.

Refreshes, the rest a failing source gets, per-call TTLs on every path a value is loaded by,
the bounds on background work (``refresh_workers``, ``wait_background``'s timeout) and batches
that fail while other callers wait for them. Background work runs on the chain's own pool
where its threads matter, and under the test's control elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tiered_cache import (
    AsyncTieredCache,
    CodecError,
    LoadTimeout,
    MemoryTier,
    PartialBatchError,
    TieredCache,
)
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.loads import Background, Loader
from tiered_cache.testing.polling import until
from tiered_cache.testing.sources import DictSource

from .test_protection import make_cache, stale_protection


def soft_expiry(cache: TieredCache, key: str) -> float:
    (entry,) = cache.lookup_many([key]).values()
    return entry.soft_expiry


# -- the rest a failing source gets (fail_safe_throttle)


def failed_once(clock: FakeClock, throttle: float, tiers: int = 1) -> tuple[TieredCache, Loader]:
    """A cache whose loader failed once for a stale key (served stale under fail-safe)."""
    memory = [
        MemoryTier(name=f"t{n}", max_entries=100, ttl=1000, clock=clock) for n in range(tiers)
    ]
    cache = TieredCache(
        memory,
        ttl=10,
        clock=clock,
        protection=stale_protection(stale_while_revalidate=False, fail_safe_throttle=throttle),
    )
    loader = Loader()
    cache.get("k", loader)
    clock.advance(11)
    loader.error = ConnectionError("source down")
    assert cache.get("k", loader) == "v1"
    assert loader.calls == 2
    return cache, loader


def test_without_a_fail_safe_throttle_every_read_asks_the_failing_source(clock: FakeClock) -> None:
    cache, loader = failed_once(clock, throttle=0.0)
    assert cache.get("k", loader) == "v1"
    assert loader.calls == 3
    stats = cache.stats()
    assert stats["stale_served_on_error"] == 2
    assert stats["tiers"][0]["fills"] == 1  # the first load's; a failed load fills nothing


def test_a_fail_safe_throttle_under_a_second_rests_the_source_that_long(clock: FakeClock) -> None:
    cache, loader = failed_once(clock, throttle=0.5)
    assert cache.get("k", loader) == "v1"
    assert loader.calls == 2
    clock.advance(0.5)
    assert cache.get("k", loader) == "v1"
    assert loader.calls == 3


def test_the_fail_safe_rest_stays_in_this_process(clock: FakeClock) -> None:
    """Only tier 0 serves the stale value as fresh: a shared tier keeps it stale, so other
    processes still try the source themselves."""
    cache, _ = failed_once(clock, throttle=5.0, tiers=2)
    shared = cache.tiers[1].get("k")
    assert shared.soft_expiry < clock()  # type: ignore[union-attr]
    assert soft_expiry(cache, "k") == clock() + 5.0


def test_a_failed_early_refresh_keeps_the_fresh_value_and_is_counted(clock: FakeClock) -> None:
    """An early (XFetch) refresh has no stale value to fall back to: its failure is counted
    and the entry it was refreshing stays as it was."""
    background = Background()
    cache = TieredCache(
        [MemoryTier(max_entries=100, ttl=1000, clock=clock)],
        ttl=10,
        clock=clock,
        protection=Protection(max_stale=100.0, early_refresh_beta=1.0, soft_timeout=None),
        background=background,
        rng=lambda: 1e-9,  # the draw always says "refresh now"
    )
    loader = Loader()

    def slow() -> str:
        clock.advance(1.0)  # the load took 1 s: XFetch refreshes within ~20 s of the expiry
        return loader()

    assert cache.get("k", slow) == "v1"
    expiry = soft_expiry(cache, "k")
    loader.error = ConnectionError("source down")
    assert cache.get("k", slow) == "v1"
    assert background.run() == 1
    stats = cache.stats()
    assert (stats["early_refreshes"], stats["refresh_failures"]) == (1, 1)
    assert soft_expiry(cache, "k") == expiry


# -- refreshes


def test_a_key_refreshes_again_once_its_refresh_is_done(clock: FakeClock) -> None:
    background = Background()
    cache = make_cache(clock, background)
    loader = Loader()
    cache.get("k", loader)
    for expected in ("v2", "v3"):
        clock.advance(11)
        cache.get("k", loader)
        assert background.run() == 1
        assert cache.get("k", loader) == expected
    assert cache.stats()["refreshes"] == 2


def test_a_failed_refresh_does_not_stop_the_next_one(clock: FakeClock) -> None:
    background = Background()
    cache = make_cache(clock, background, fail_safe_throttle=0.0)
    loader = Loader()
    cache.get("k", loader)
    clock.advance(11)
    loader.error = ConnectionError("source down")
    cache.get("k", loader)
    assert background.run() == 1
    loader.error = None
    cache.get("k", loader)
    assert background.run() == 1
    assert cache.get("k", loader) == "v3"


def test_a_refresh_the_background_runner_refused_is_asked_for_again(clock: FakeClock) -> None:
    accepted: list[Callable[[], None]] = []
    refusals = [RuntimeError("cannot schedule new futures after shutdown")]

    def runner(task: Callable[[], None]) -> None:
        if refusals:
            raise refusals.pop()
        accepted.append(task)

    cache = make_cache(clock, runner)
    loader = Loader()
    cache.get("k", loader)
    clock.advance(11)
    assert cache.get("k", loader) == "v1"  # the runner refused this one
    assert cache.get("k", loader) == "v1"
    assert len(accepted) == 1


def test_a_refresh_keeps_the_ttl_its_read_asked_for(clock: FakeClock) -> None:
    background = Background()
    cache = make_cache(clock, background)
    loader = Loader()
    cache.get("k", loader, ttl=3)
    assert soft_expiry(cache, "k") == clock() + 3
    clock.advance(4)
    assert cache.get("k", loader, ttl=3) == "v1"
    assert background.run() == 1
    assert soft_expiry(cache, "k") == clock() + 3


def test_a_batch_keeps_the_ttl_its_read_asked_for(clock: FakeClock) -> None:
    cache = make_cache(clock, Background())
    cache.get_many(["a", "b"], lambda keys: {key: key.upper() for key in keys}, ttl=3)
    assert {key: entry.soft_expiry for key, entry in cache.lookup_many(["a", "b"]).items()} == {
        "a": clock() + 3,
        "b": clock() + 3,
    }


def test_a_refresh_is_not_bounded_by_the_hard_timeout(clock: FakeClock) -> None:
    """A refresh has no caller waiting: a slow one finishes and fills, it never times out."""
    cache = make_cache(clock, None, hard_timeout=0.05)
    loader = Loader()
    cache.get("k", loader)
    clock.advance(11)

    def slow() -> str:
        time.sleep(0.3)
        return loader()

    assert cache.get("k", slow) == "v1"
    assert cache.wait_background(10)
    stats = cache.stats()
    assert (stats["hard_timeouts"], stats["refresh_failures"]) == (0, 0)
    assert stats.get("abandoned_loads", 0) == 0
    assert cache.get("k", loader) == "v2"
    cache.close()


def test_refreshes_of_two_keys_at_once_each_load_their_own_key(clock: FakeClock) -> None:
    cache = make_cache(clock, None)
    for key in ("a", "b"):
        cache.get(key, lambda key=key: f"{key}1")  # type: ignore[misc]
    clock.advance(11)
    release = threading.Event()
    started = threading.Event()

    def slow_a() -> str:
        started.set()
        release.wait(10)
        return "a2"

    assert cache.get("a", slow_a) == "a1"
    assert started.wait(10)
    assert cache.get("b", lambda: "b2") == "b1"  # refreshed while a's refresh still runs
    release.set()
    assert cache.wait_background(10)
    assert (cache.get("a", lambda: "?"), cache.get("b", lambda: "?")) == ("a2", "b2")
    cache.close()


def test_refresh_workers_bounds_the_refreshes_running_at_once(clock: FakeClock) -> None:
    cache = make_cache(clock, None, refresh_workers=1)
    keys = ["a", "b", "c"]
    for key in keys:
        cache.get(key, lambda: "old")
    clock.advance(11)
    release = threading.Event()
    running: list[str] = []
    most = [0]
    lock = threading.Lock()

    def slow(key: str) -> str:
        with lock:
            running.append(key)
            most[0] = max(most[0], len(running))
        release.wait(10)
        with lock:
            running.remove(key)
        return "new"

    for key in keys:
        assert cache.get(key, lambda key=key: slow(key)) == "old"  # type: ignore[misc]
    until(lambda: len(running) == 1, "the first refresh")
    time.sleep(0.2)  # time for a second worker, if there were one, to start
    release.set()
    assert cache.wait_background(10)
    assert most[0] == 1
    assert [cache.get(key, lambda: "?") for key in keys] == ["new"] * 3
    cache.close()


def test_wait_background_gives_up_after_its_timeout(clock: FakeClock) -> None:
    cache = make_cache(clock, None)
    cache.get("k", lambda: "old")
    clock.advance(11)
    release = threading.Event()
    assert cache.get("k", lambda: "new" if release.wait(10) else "?") == "old"
    started = time.monotonic()
    assert cache.wait_background(0.1) is False
    assert time.monotonic() - started < 5
    release.set()
    assert cache.wait_background(10) is True
    cache.close()


# -- get_many and stale entries


def batch_loader(version: str) -> Callable[[Sequence[str]], dict[str, str]]:
    return lambda keys: {key: f"{key}{version}" for key in keys}


def stale_pair(clock: FakeClock, background: Background, **options: Any) -> TieredCache:
    """A cache holding "a" and "b" (version 1), both stale now."""
    cache = make_cache(clock, background, **options)
    cache.get_many(["a", "b"], batch_loader("1"), ttl=3)
    clock.advance(4)
    return cache


def test_get_many_serves_stale_keys_counts_them_and_refreshes_with_its_ttl(
    clock: FakeClock,
) -> None:
    background = Background()
    cache = stale_pair(clock, background)
    source = {"a": "a2", "b": "b2"}
    cache = TieredCache(
        [cache.tiers[0]],
        source=DictSource(source),
        ttl=10,
        clock=clock,
        protection=stale_protection(),
        background=background,
    )
    assert cache.get_many(["a", "b"], ttl=3) == {"a": "a1", "b": "b1"}
    assert cache.stats()["stale_served"] == 2
    assert background.run() == 2
    assert cache.get_many(["a", "b"]) == {"a": "a2", "b": "b2"}
    assert soft_expiry(cache, "a") == clock() + 3


def test_get_many_with_a_loader_loads_stale_keys_instead_of_serving_them(
    clock: FakeClock,
) -> None:
    background = Background()
    cache = stale_pair(clock, background)
    assert cache.get_many(["a", "b"], batch_loader("2")) == {"a": "a2", "b": "b2"}
    assert background.tasks == []


def test_get_many_without_stale_while_revalidate_loads_stale_keys(clock: FakeClock) -> None:
    background = Background()
    cache = stale_pair(clock, background, stale_while_revalidate=False)
    cache = TieredCache(
        [cache.tiers[0]],
        source=DictSource({"a": "a2", "b": "b2"}),
        clock=clock,
        protection=stale_protection(stale_while_revalidate=False),
        background=background,
    )
    assert cache.get_many(["a", "b"]) == {"a": "a2", "b": "b2"}
    assert background.tasks == []


def test_a_failed_refresh_of_a_stale_batch_key_rests_the_source(clock: FakeClock) -> None:
    background = Background()
    source = DictSource({"a": "a1"})
    cache = TieredCache(
        [MemoryTier(max_entries=100, ttl=1000, clock=clock)],
        source=source,
        ttl=10,
        clock=clock,
        protection=stale_protection(fail_safe_throttle=5.0),
        background=background,
    )
    cache.get_many(["a"])
    clock.advance(11)
    source.items.clear()

    def down(keys: Sequence[str]) -> dict[str, Any]:
        raise ConnectionError("source down")

    def down_one(key: str) -> Any:
        raise ConnectionError("source down")

    source.load_many = down  # type: ignore[method-assign]
    source.load = down_one  # type: ignore[method-assign]
    assert cache.get_many(["a"]) == {"a": "a1"}
    assert background.run() == 1
    assert cache.stats()["refresh_failures"] == 1
    # for fail_safe_throttle seconds the stale value is served as fresh: no refresh, no load
    assert cache.get_many(["a"]) == {"a": "a1"}
    assert background.tasks == []


# -- a batch that fails while another caller waits for one of its keys


class RefusesKey(MemoryTier):
    """A memory tier whose codec cannot encode the value of one key."""

    def __init__(self, refused: str) -> None:
        super().__init__(max_entries=100)
        self.refused = refused

    def set_many(self, entries: Any) -> None:
        if self.refused in entries:
            raise CodecError(f"value of {self.refused!r}: not encodable")
        super().set_many(entries)

    def set(self, key: str, entry: Any) -> None:
        self.set_many({key: entry})


def test_a_batch_waiting_for_a_key_of_a_batch_that_raised_gets_its_error() -> None:
    cache = TieredCache([RefusesKey("a")], protection=Protection.never_stale())
    first_loading = threading.Event()
    second_claimed = threading.Event()
    release = threading.Event()
    outcomes: dict[str, object] = {}

    def first_batch(keys: Sequence[str]) -> dict[str, str]:
        first_loading.set()
        release.wait(10)
        return {key: key.upper() for key in keys}

    def second_batch(keys: Sequence[str]) -> dict[str, str]:
        second_claimed.set()  # called for "c" only: "a" was found in flight
        return {key: key.upper() for key in keys}

    def read(name: str, keys: list[str], loader: Any) -> None:
        try:
            outcomes[name] = cache.get_many(keys, loader)
        except BaseException as exc:
            outcomes[name] = exc

    first = threading.Thread(target=read, args=("first", ["a", "b"], first_batch))
    first.start()
    assert first_loading.wait(10)
    second = threading.Thread(target=read, args=("second", ["a", "c"], second_batch))
    second.start()
    assert second_claimed.wait(10)
    release.set()
    first.join(10)
    second.join(10)
    assert not second.is_alive(), "the batch waiting for 'a' never heard of its failure"
    assert isinstance(outcomes["first"], CodecError)
    joined = outcomes["second"]
    assert isinstance(joined, Exception), f"the waiting batch returned {joined!r}"
    current: BaseException | None = joined
    causes = []
    while current is not None:
        causes.append(current)
        current = current.__cause__ or current.__context__
    assert any(isinstance(cause, CodecError) for cause in causes)


@pytest.fixture(autouse=True)
def no_thread_left() -> Any:
    """Every test here ends its threads (a hung one would outlive its test)."""
    before = set(threading.enumerate())
    yield
    until(
        lambda: all(not t.is_alive() or t.daemon for t in set(threading.enumerate()) - before),
        "every non-daemon thread of the test ending",
    )


# -- loads that outlive their caller (hard timeout)


def test_a_timed_load_keeps_the_ttl_its_read_asked_for(clock: FakeClock) -> None:
    cache = make_cache(clock, None, hard_timeout=5.0)
    assert cache.get("k", lambda: "v", ttl=3) == "v"
    assert soft_expiry(cache, "k") == clock() + 3
    cache.close()


def test_a_hung_load_ending_leaves_a_newer_hung_load_of_its_key_to_be_waited_for() -> None:
    cache = TieredCache(
        [MemoryTier()], protection=Protection.never_stale(hard_timeout=0.1, max_abandoned_loads=8)
    )
    calls: list[str] = []
    releases = {name: threading.Event() for name in ("first", "second", "third")}

    def hang(name: str) -> Callable[[], str]:
        def load() -> str:
            calls.append(name)
            releases[name].wait(10)
            return name

        return load

    try:
        with pytest.raises(LoadTimeout):
            cache.get("k", hang("first"))
        cache.invalidate("k")  # the next miss must not wait for a load that read before this
        with pytest.raises(LoadTimeout):
            cache.get("k", hang("second"))
        releases["first"].set()
        assert cache.wait_background(0.5) is False  # the first ended; the second still hangs
        with pytest.raises(LoadTimeout):
            cache.get("k", hang("third"))  # waits for the second instead of loading again
        assert calls == ["first", "second"]
    finally:
        for release in releases.values():
            release.set()
    assert cache.wait_background(10)
    assert cache.get("k", lambda: "unused") == "second"
    cache.close()


def test_a_timed_load_runs_on_a_daemon_thread_so_a_hung_one_never_blocks_exit() -> None:
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=0.05))
    release = threading.Event()
    before = set(threading.enumerate())
    with pytest.raises(LoadTimeout):
        cache.get("k", lambda: release.wait(10))
    started = set(threading.enumerate()) - before
    try:
        assert started and all(thread.daemon for thread in started)
        # named, so that a thread dump of a stuck service says what the thread is
        assert {thread.name for thread in started} == {"tiered-cache-timed-load"}
    finally:
        release.set()
    assert cache.wait_background(10)
    cache.close()


def test_a_timed_load_that_finishes_in_time_fills_each_tier_once(clock: FakeClock) -> None:
    cache = make_cache(clock, None, hard_timeout=5.0)
    assert cache.get("k", lambda: "v") == "v"
    assert cache.wait_background(10)
    assert cache.stats()["tiers"][0]["fills"] == 1
    cache.close()


def test_waiting_past_the_hard_timeout_for_an_earlier_hung_load_says_so() -> None:
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=0.05))
    release = threading.Event()
    try:
        with pytest.raises(LoadTimeout):
            cache.get("k", lambda: release.wait(10))
        with pytest.raises(
            LoadTimeout, match=r"^an earlier load of 'k' is still running past"
        ) as err:
            cache.get("k", lambda: "unused")
        assert "fills the cache when it finishes" in str(err.value)
        assert cache.stats()["hard_timeouts"] == 2
    finally:
        release.set()
    assert cache.wait_background(10)
    cache.close()


def test_waiting_past_the_soft_timeout_for_an_earlier_slow_load_serves_stale(
    clock: FakeClock,
) -> None:
    cache = make_cache(clock, None, stale_while_revalidate=False, soft_timeout=0.05)
    cache.get("k", lambda: "old")
    clock.advance(11)
    release = threading.Event()
    try:
        assert cache.get("k", lambda: "new" if release.wait(10) else "?") == "old"
        assert cache.get("k", lambda: "unused") == "old"  # waited for the first, in vain
        stats = cache.stats()
        assert (stats["soft_timeouts"], stats["hard_timeouts"]) == (2, 0)
        assert stats["stale_served_on_slow_load"] == 2
    finally:
        release.set()
    assert cache.wait_background(10)
    cache.close()


def test_a_failed_load_that_ends_at_the_stale_values_hard_expiry_fills_nothing(
    clock: FakeClock,
) -> None:
    cache, _ = failed_once(clock, throttle=5.0)
    fills = cache.stats()["tiers"][0]["fills"]
    clock.advance(6)  # the rest is over: the next read loads, and its load fails again

    def fails_at_the_hard_expiry() -> str:
        clock.advance(110 - 17)  # to exactly 110 s after the first load: max_stale is over
        raise ConnectionError("source down")

    assert cache.get("k", fails_at_the_hard_expiry) == "v1"  # served: it was servable
    assert cache.stats()["tiers"][0]["fills"] == fills  # but too old to rest on


def test_get_many_without_source_or_loader_says_what_is_missing() -> None:
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale())
    with pytest.raises(PartialBatchError) as raised:
        cache.get_many(["a"])
    assert str(raised.value.errors["a"]) == (
        "cannot load keys: the cache has no source and no loader was given"
    )


def test_a_batch_load_records_how_long_it_took(clock: FakeClock) -> None:
    cache = make_cache(clock, None)

    def slow(keys: Sequence[str]) -> dict[str, str]:
        clock.advance(2.0)
        return {key: key for key in keys}

    cache.get_many(["a", "b"], slow)
    stats = cache.stats()
    assert (stats["loads"], stats["keys_loaded"], stats["load_seconds"]) == (1, 2, 2.0)
    assert {entry.load_duration for entry in cache.lookup_many(["a", "b"]).values()} == {2.0}
    cache.close()


def test_without_a_stale_value_the_soft_timeout_does_not_apply() -> None:
    # The soft timeout only says when to serve a stale value instead; with none to serve, a
    # load slower than it but within the hard timeout is waited for and returned.
    cache = TieredCache([MemoryTier()], protection=Protection(soft_timeout=0.02, hard_timeout=30.0))
    assert cache.get("k", lambda: time.sleep(0.2) or "slow") == "slow"
    stats = cache.stats()
    assert (stats["soft_timeouts"], stats["hard_timeouts"]) == (0, 0)
    cache.close()


def test_a_stale_value_served_for_a_failed_load_logs_the_error(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(clock, None, stale_while_revalidate=False)
    cache.get("k", lambda: "old")
    clock.advance(11)

    def fail() -> str:
        raise ConnectionError("table unreachable")

    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        assert cache.get("k", fail) == "old"
    assert any(
        "its load failed (ConnectionError: table unreachable)" in record.getMessage()
        for record in caplog.records
    )
    cache.close()


def test_background_work_runs_on_named_threads_and_is_forgotten_once_done(
    clock: FakeClock,
) -> None:
    cache = make_cache(clock, None, stale_while_revalidate=True)
    cache.get("k", lambda: "old")
    clock.advance(11)
    names: list[str] = []

    def reload() -> str:
        names.append(threading.current_thread().name)
        return "new"

    assert cache.get("k", reload) == "old"  # served stale, refreshed in the background
    assert cache.wait_background(10)
    assert cache.get("k", lambda: "unused") == "new"
    assert len(names) == 1 and names[0].startswith("tiered-cache-load")
    # Done work is dropped from what wait_background waits for (else it grows forever). Read
    # from the loader itself: no public call tells it apart from work still running.
    assert not cache._loader._pending
    cache.close()


# -- what a miss reads of the options


#: The fields of a :class:`CountedProtection` read since the last look (name per read).
FIELDS_READ: list[str] = []


class CountedProtection(Protection):
    """Protection that notes every field read of it: a read of a pydantic model's field goes
    through ``BaseModel.__getattr__``'s hook (about 230 instructions of a compiled miss)."""

    def __getattribute__(self, name: str) -> Any:
        if name in type(self).model_fields:
            FIELDS_READ.append(name)
        return super().__getattribute__(name)


def test_a_miss_reads_no_field_of_the_chains_protection() -> None:
    cache = TieredCache([MemoryTier()], protection=CountedProtection())
    FIELDS_READ.clear()
    for n in range(3):
        assert cache.get(f"k{n}", lambda: 1) == 1
    assert FIELDS_READ == []


@pytest.mark.anyio
async def test_an_async_miss_reads_no_field_of_the_chains_protection() -> None:
    async def load() -> int:
        return 1

    async with AsyncTieredCache([MemoryTier()], protection=CountedProtection()) as cache:
        FIELDS_READ.clear()
        for n in range(3):
            assert await cache.get(f"k{n}", load) == 1
        assert FIELDS_READ == []  # its close reads close_wait
