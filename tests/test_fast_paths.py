"""The memory-only fast paths (#14) against the general path, scenario by scenario: same
answers, same counts, and no stale copy left behind by a write racing a load."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import MemoryTier, PartialBatchError, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock

STRICT = Protection.never_stale()
SHAPES = ["alone", "bus", "copying"]


def build(shape: str, clock: FakeClock, **kwargs: Any) -> TieredCache:
    """``alone``: the fast read and plain-hit reader; ``bus``: the general read with the
    reader; ``copying``: the fast read without the reader (copy_on_read)."""
    tier = MemoryTier(
        name="l1", max_entries=100, ttl=60, clock=clock, copy_on_read=shape == "copying"
    )
    kwargs.setdefault("protection", STRICT)
    bus = LocalBus() if shape == "bus" else None
    return TieredCache([tier], clock=clock, bus=bus, **kwargs)


def with_background(
    shape: str, clock: FakeClock, *, early_refresh_beta: float, **kwargs: Any
) -> tuple[TieredCache, list[Callable[[], None]]]:
    """A chain (ttl 10 s) whose background refreshes are queued in the returned list, to be
    run by the test when it chooses."""
    ran: list[Callable[[], None]] = []
    protection = Protection(early_refresh_beta=early_refresh_beta, soft_timeout=None)
    cache = build(shape, clock, ttl=10, protection=protection, background=ran.append, **kwargs)
    return cache, ran


def counts(cache: TieredCache) -> dict[str, Any]:
    stats = cache.stats()
    tier = stats["tiers"][0]
    return {
        "hits": tier["hits"],
        "misses": tier["misses"],
        "loads": stats["loads"],
        "fills_refused": stats.get("fills_refused", 0),
    }


def racing_load(
    cache: TieredCache, write: Callable[[], None], old: Any
) -> tuple[list[Any], threading.Thread]:
    """A load of ``k`` that read ``old`` and is held until ``write`` ran."""
    started, go = threading.Event(), threading.Event()
    got: list[Any] = []

    def loader() -> Any:
        started.set()
        assert go.wait(10)
        return old

    thread = threading.Thread(target=lambda: got.append(cache.get("k", loader)))
    thread.start()
    assert started.wait(10)
    write()
    go.set()
    thread.join(10)
    return got, thread


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("write", ["invalidate", "set", "prefix", "clear", "many"])
def test_a_write_racing_a_load_leaves_no_stale_copy(
    shape: str, write: str, clock: FakeClock
) -> None:
    cache = build(shape, clock)
    writes: dict[str, Callable[[], None]] = {
        "invalidate": lambda: cache.invalidate("k"),
        "set": lambda: cache.set("k", "new"),
        "prefix": lambda: cache.invalidate_prefix("k"),
        "clear": cache.clear,
        "many": lambda: cache.invalidate_many(["x", "k"]),
    }
    got, _ = racing_load(cache, writes[write], "old")
    assert got == ["old"]  # asked before the write: served what it read
    expected = "new" if write == "set" else "fresh"
    assert cache.get("k", lambda: "fresh") == expected
    assert cache.get("k", lambda: "fresh") == expected
    assert counts(cache)["fills_refused"] == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_an_invalidation_between_the_fences_check_and_the_write_is_undone(
    shape: str, clock: FakeClock
) -> None:
    entered, go = threading.Event(), threading.Event()

    class Slow(MemoryTier):
        hold = False

        def set(self, key: str, entry: Any) -> None:
            if self.hold:
                entered.set()
                assert go.wait(10)
            super().set(key, entry)

    tier = Slow(name="l1", max_entries=100, ttl=60, clock=clock, copy_on_read=shape == "copying")
    cache = TieredCache(
        [tier], clock=clock, protection=STRICT, bus=LocalBus() if shape == "bus" else None
    )
    tier.hold = True
    thread = threading.Thread(target=lambda: cache.get("k", lambda: "old"))
    thread.start()
    assert entered.wait(10)
    tier.hold = False
    cache.invalidate("k")
    go.set()
    thread.join(10)
    assert cache.get("k", lambda: "fresh") == "fresh"
    assert counts(cache) == {"hits": 0, "misses": 2, "loads": 2, "fills_refused": 1}


def joined(cache: TieredCache, waiters: int) -> None:
    """Until ``waiters`` callers wait for the leader of ``k``'s flight."""
    for _ in range(2000):
        flight = cache._loader.flights._flights.get("k")
        if flight is not None and flight.waiters == waiters:
            return
        threading.Event().wait(0.005)
    raise AssertionError("the callers did not join one flight")


def _single_flight(cache: TieredCache, n: int) -> list[Any]:
    barrier = threading.Barrier(n)
    release = threading.Event()
    calls: list[int] = []
    results: list[Any] = []

    def loader() -> Any:
        calls.append(1)
        assert release.wait(10)
        return "v"

    def worker() -> None:
        barrier.wait(10)
        results.append(cache.get("k", loader))

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for thread in threads:
        thread.start()
    joined(cache, n - 1)
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls == [1]
    return results


@pytest.mark.parametrize("shape", SHAPES)
def test_concurrent_misses_load_once_and_count_alike(shape: str, clock: FakeClock) -> None:
    cache = build(shape, clock)
    assert _single_flight(cache, 16) == ["v"] * 16
    stats = cache.stats()
    assert stats["loads"] == 1
    assert stats["tiers"][0]["misses"] == 16
    assert stats.get("waited", stats.get("waits", 15)) == 15
    assert cache.get("k") == "v"
    assert cache.stats()["tiers"][0]["hits"] == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_a_loader_that_raises_fails_every_waiter_and_caches_nothing(
    shape: str, clock: FakeClock
) -> None:
    cache = build(shape, clock)
    barrier = threading.Barrier(4)
    release = threading.Event()
    errors: list[BaseException] = []

    def loader() -> Any:
        assert release.wait(10)
        raise RuntimeError("source down")

    def worker() -> None:
        barrier.wait(10)
        try:
            cache.get("k", loader)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    joined(cache, 3)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 4
    assert cache.get("k", lambda: "ok") == "ok"
    assert cache.get("k", lambda: "no") == "ok"


@pytest.mark.parametrize("shape", SHAPES)
def test_negative_caching_expiry_and_counts(shape: str, clock: FakeClock) -> None:
    cache = build(shape, clock, ttl=30, negative_ttl=5)
    loads: list[str] = []

    def none() -> Any:
        loads.append("n")
        return None

    assert cache.get("n", none) is None
    assert cache.get("n", none) is None
    clock.advance(5)
    assert cache.get("n", none) is None
    assert loads == ["n", "n"]
    assert cache.get("v", lambda: 1) == 1
    clock.advance(29.9)
    assert cache.get("v", lambda: 2) == 1
    clock.advance(0.1)
    assert cache.get("v", lambda: 2) == 2
    assert counts(cache) == {"hits": 2, "misses": 4, "loads": 4, "fills_refused": 0}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("key", ["", "é:ü:漢字:\U0001f600", "k" * 1_000_000, "a\x00b", "\ud800"])
def test_odd_str_keys_round_trip(shape: str, key: str, clock: FakeClock) -> None:
    cache = build(shape, clock)
    assert cache.get(key, lambda: "v") == "v"
    assert cache.get(key, lambda: "w") == "v"
    cache.invalidate(key)
    assert cache.get(key, lambda: "w") == "w"
    assert counts(cache) == {"hits": 1, "misses": 2, "loads": 2, "fills_refused": 0}


@pytest.mark.parametrize("shape", SHAPES)
def test_stale_while_revalidate_serves_then_refreshes(shape: str, clock: FakeClock) -> None:
    cache, ran = with_background(shape, clock, early_refresh_beta=0.0)
    assert cache.get("k", lambda: 1) == 1
    clock.advance(11)
    assert cache.get("k", lambda: 2) == 1  # stale served
    assert len(ran) == 1
    ran.pop()()
    assert cache.get("k", lambda: 3) == 2
    stats = cache.stats()
    assert stats["stale_served"] == 1
    assert stats["loads"] == 2


@pytest.mark.parametrize("shape", SHAPES)
def test_an_invalidation_during_a_background_refresh_wins(shape: str, clock: FakeClock) -> None:
    cache, ran = with_background(shape, clock, early_refresh_beta=0.0)
    cache.get("k", lambda: 1)
    clock.advance(11)

    def refresh_loader() -> Any:
        cache.invalidate("k")  # a writer comes while the refresh reads
        return "old"

    assert cache.get("k", refresh_loader) == 1
    ran.pop()()
    assert cache.get("k", lambda: "fresh") == "fresh"


@pytest.mark.parametrize("shape", SHAPES)
def test_xfetch_near_the_expiry_refreshes_early(shape: str, clock: FakeClock) -> None:
    # rng 0.5: due once now + 2 * ln 2 (1.39 s) reaches the soft expiry
    cache, ran = with_background(shape, clock, early_refresh_beta=1.0, rng=lambda: 0.5)

    def slow() -> Any:
        clock.advance(2)  # the load took 2 s
        return 1

    assert cache.get("k", slow) == 1
    assert cache.get("k") == 1  # far from the expiry: plain hit
    assert not ran
    clock.advance(9)  # 1 s before the soft expiry: due
    assert cache.get("k", lambda: 2) == 1
    assert len(ran) == 1
    assert cache.stats()["early_refreshes"] == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_hits_from_many_threads_are_counted_exactly(shape: str, clock: FakeClock) -> None:
    cache = build(shape, clock)
    cache.set("k", "v")
    n, each = 8, 5000
    barrier = threading.Barrier(n)

    def worker() -> None:
        barrier.wait(10)
        for _ in range(each):
            assert cache.get("k") == "v"

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert cache.stats()["tiers"][0]["hits"] == n * each


@pytest.mark.parametrize("shape", SHAPES)
def test_decorated_function_write_race(shape: str, clock: FakeClock) -> None:
    cache = build(shape, clock)
    state = {"v": "old"}
    started, go = threading.Event(), threading.Event()
    hold = [True]

    @cache.cached(key="t:{i}", ttl=60)
    def read(i: str) -> str:
        value = state["v"]
        if hold[0]:
            started.set()
            assert go.wait(10)
        return value

    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(read("1")))
    thread.start()
    assert started.wait(10)
    hold[0] = False
    state["v"] = "new"
    read.invalidate(i="1")  # type: ignore[attr-defined]
    go.set()
    thread.join(10)
    assert got == ["old"]
    assert read("1") == "new"
    assert read("1") == "new"


@pytest.mark.parametrize("shape", SHAPES)
def test_a_loader_raising_stop_iteration_does_not_end_the_callers_iteration(
    shape: str, clock: FakeClock
) -> None:
    """The general path's steps driver turns a loader's StopIteration into a RuntimeError
    (PEP 479); the one-tier fast read let it out as it was, so a ``map`` over keys ended
    silently, as if there were no more keys."""
    cache = build(shape, clock)

    def loader() -> Any:
        return next(iter([]))  # an empty query result, read carelessly

    with pytest.raises(RuntimeError) as raised:
        list(map(lambda key: cache.get(key, loader), ["a", "b"]))
    assert isinstance(raised.value.__cause__, StopIteration)
    assert cache.get("a", lambda: "v") == "v"
    assert cache.stats()["load_failures"] == 1


def stop_iteration_error(read: Callable[[], object]) -> str:
    with pytest.raises(RuntimeError) as raised:
        read()
    assert isinstance(raised.value.__cause__, StopIteration)
    return str(raised.value)


def test_a_loader_raising_stop_iteration_is_the_same_error_on_every_path(
    clock: FakeClock,
) -> None:
    """One home for the rule (the loader, where the source is called): the fast read, the
    general path's steps, a timed load on a worker thread, a batch load and a background
    refresh all give the same RuntimeError. (Before, the steps' driver made PEP 479's
    "generator raised StopIteration" and the fast read its own message.)"""

    def empty() -> Any:
        return next(iter([]))

    def empty_batch(keys: Any) -> Any:
        return next(iter([]))

    alone, bus = build("alone", clock), build("bus", clock)
    timed = build("alone", clock, protection=Protection(hard_timeout=5.0))
    messages = {
        stop_iteration_error(lambda: alone.get("a", empty)),
        stop_iteration_error(lambda: bus.get("a", empty)),
        stop_iteration_error(lambda: timed.get("a", empty)),
        stop_iteration_error(
            lambda: alone._loader.load("a", alone._fence.mark(), empty, None, None)
        ),
    }
    with pytest.raises(PartialBatchError) as batch:
        alone.get_many(["x", "y"], empty_batch)
    assert isinstance(batch.value.__cause__, RuntimeError)
    messages.add(str(batch.value.__cause__))
    assert messages == {"the loader raised StopIteration"}
