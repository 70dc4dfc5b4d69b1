"""Loads that hang past the hard timeout cost their own keys, never the others'."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

import pytest

from tiered_cache import AsyncTieredCache, LoadTimeout, MemoryTier, TieredCache
from tiered_cache.compiled import compiled_core
from tiered_cache.loader import SourceLoader
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.interrupts import Interrupted, interrupting
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.pure_core import on_the_pure_core

T = TypeVar("T", TieredCache, AsyncTieredCache)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # let the hung loads end with the test


def bounded(chain: type[T], *, hard_timeout: float) -> T:
    """A memory chain whose loads time out at ``hard_timeout``, at most 2 running (and so
    left running), a miss refused at once when 2 hang."""
    return chain(
        [MemoryTier()],
        protection=Protection.never_stale(
            hard_timeout=hard_timeout, max_abandoned_loads=2, max_timed_loads=2
        ),
    )


def in_threads(read: Callable[[str], None], keys: list[str]) -> None:
    """``read(key)`` for every key, each on a thread of its own, all at once; joined."""
    readers = [threading.Thread(target=read, args=(key,)) for key in keys]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(10)


def test_six_hung_loads_leave_other_misses_working(release: threading.Event) -> None:
    cache = TieredCache(
        [MemoryTier()],
        protection=Protection.never_stale(hard_timeout=0.5, max_abandoned_loads=16),
    )
    calls: dict[str, int] = {}

    def hang(key: str) -> str:
        calls[key] = calls.get(key, 0) + 1
        release.wait(30)
        return "late"

    errors: list[BaseException] = []

    def read_hung(key: str) -> None:
        try:
            cache.get(key, lambda: hang(key))
        except BaseException as exc:
            errors.append(exc)

    in_threads(read_hung, [f"hung:{n}" for n in range(6)])
    assert len(errors) == 6 and all(isinstance(exc, LoadTimeout) for exc in errors)
    assert "goes on in the background" in str(errors[0])
    # the pool the hung loads sit on is not the one new loads need
    assert cache.get("fine", lambda: "instant") == "instant"
    # a hung key is not loaded again while its load still runs: the new read waits for it
    with pytest.raises(LoadTimeout):
        cache.get("hung:0", lambda: hang("hung:0"))
    assert calls["hung:0"] == 1
    assert cache.stats()["abandoned_loads"] == 6
    release.set()
    assert cache.wait_background(10)
    assert cache.get("hung:0", lambda: "never") == "late"  # the late load filled the cache
    cache.close()


def test_past_the_bound_of_abandoned_loads_a_miss_fails_at_once(release: threading.Event) -> None:
    cache = bounded(TieredCache, hard_timeout=0.2)
    for n in range(2):
        with pytest.raises(LoadTimeout):
            cache.get(f"hung:{n}", lambda: release.wait(30))
    with pytest.raises(LoadTimeout, match="2 loads"):
        cache.get("other", lambda: "instant")
    release.set()
    assert cache.wait_background(10)
    assert cache.get("other", lambda: "instant") == "instant"
    cache.close()


def _hung_batch(release: threading.Event) -> tuple[dict[str, int], threading.Event, Any]:
    """A loader of many keys that hangs until ``release``; ``entered`` is set once it runs."""
    entered = threading.Event()
    calls = {"batches": 0}

    def load_many(keys: list[str]) -> dict[str, str]:
        calls["batches"] += 1
        entered.set()
        release.wait(30)
        return {key: f"value of {key}" for key in keys}

    return calls, entered, load_many


def test_a_get_that_joins_a_hung_get_many_keeps_its_hard_timeout(
    release: threading.Event,
) -> None:
    # A get_many's batch load is not timed; a get of one of its keys joined it and waited as
    # long as the source hung, past its own hard timeout.
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=0.2))
    calls, entered, load_many = _hung_batch(release)
    batch = threading.Thread(target=lambda: cache.get_many(["a", "b"], load_many))
    batch.start()
    assert entered.wait(10)
    with pytest.raises(LoadTimeout, match="another caller's load of 'a'"):
        cache.get("a", lambda: "loaded alone")
    release.set()
    batch.join(10)
    assert cache.get("a", lambda: "loaded alone") == "value of a"  # the batch filled it
    assert calls["batches"] == 1
    cache.close()


def test_an_async_get_that_joins_a_hung_get_many_keeps_its_hard_timeout() -> None:
    async def scenario() -> None:
        cache = AsyncTieredCache(
            [MemoryTier()], protection=Protection.never_stale(hard_timeout=0.2)
        )
        gate, entered = asyncio.Event(), asyncio.Event()

        async def load_many(keys: list[str]) -> dict[str, str]:
            entered.set()
            await gate.wait()
            return {key: f"value of {key}" for key in keys}

        async def loaded_alone() -> str:
            return "loaded alone"

        batch = asyncio.create_task(cache.get_many(["a", "b"], load_many))
        await entered.wait()
        with pytest.raises(LoadTimeout, match="another caller's load of 'a'"):
            await asyncio.wait_for(cache.get("a", loaded_alone), 10)  # 10 s: a failure, no hang
        gate.set()
        await batch
        assert await cache.get("a", loaded_alone) == "value of a"
        await cache.aclose()

    asyncio.run(scenario())


def _timed_load_threads() -> int:
    return sum(t.name == "tiered-cache-timed-load" for t in threading.enumerate())


def test_the_bound_holds_when_many_loads_hang_at_once(release: threading.Event) -> None:
    """Eight misses of eight keys at once, each load hanging: each caller checked the bound
    before any load was abandoned, so all eight were started and left running (bound 2)."""
    cache = bounded(TieredCache, hard_timeout=0.3)
    before = _timed_load_threads()
    started = threading.Barrier(8)
    entered: list[str] = []
    errors: list[BaseException] = []

    def read(key: str) -> None:
        def hang() -> bool:
            entered.append(key)
            return release.wait(30)

        started.wait(10)
        try:
            cache.get(key, hang)
        except BaseException as exc:
            errors.append(exc)

    in_threads(read, [f"hung:{n}" for n in range(8)])
    assert len(errors) == 8 and all(isinstance(exc, LoadTimeout) for exc in errors)
    assert len(entered) <= 2, entered
    assert _timed_load_threads() - before <= 2
    release.set()
    assert cache.wait_background(10)
    assert cache.get("other", lambda: "instant") == "instant"
    cache.close()


def test_hung_loads_of_one_key_count_each(release: threading.Event) -> None:
    """An invalidation lets the next miss start a new load of a key whose load hangs; the
    newer one took the older's place in the count, so one key could hang any number."""
    cache = bounded(TieredCache, hard_timeout=0.1)
    before = _timed_load_threads()
    loads = 0

    def hang() -> bool:
        nonlocal loads
        loads += 1
        return release.wait(30)

    for _ in range(5):
        with pytest.raises(LoadTimeout):
            cache.get("k", hang)
        cache.invalidate("k")
    assert loads == 2
    assert _timed_load_threads() - before <= 2
    with pytest.raises(LoadTimeout, match="2 loads"):
        cache.get("other", lambda: "instant")
    release.set()
    assert cache.wait_background(10)
    cache.close()


def test_concurrent_timed_loads_past_the_bound_wait_for_a_free_one() -> None:
    """Loads that do not hang are not refused for being many at once: a miss past the bound
    waits (within its own timeout) for a running load to end."""
    cache = bounded(TieredCache, hard_timeout=5.0)
    started = threading.Barrier(8)
    results: list[Any] = []

    def read(key: str) -> None:
        def load() -> str:
            threading.Event().wait(0.05)
            return key

        started.wait(10)
        results.append(cache.get(key, load))

    keys = [f"k{n}" for n in range(8)]
    in_threads(read, keys)
    assert sorted(results) == keys
    cache.close()


def test_a_hard_timeout_raises_the_public_load_timeout(release: threading.Event) -> None:
    """The caller got the loader's private subclass (tiered_cache.loader._LoadGoesOn), in
    its type and in every traceback; it marks, inside, a load that keeps the key's lease."""
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=0.1))
    with pytest.raises(LoadTimeout) as caught:
        cache.get("k", lambda: release.wait(30))
    assert type(caught.value) is LoadTimeout
    assert "goes on in the background" in str(caught.value)
    release.set()
    assert cache.wait_background(10)
    cache.close()


def test_the_async_bound_holds_when_many_loads_hang_at_once() -> None:
    """As test_the_bound_holds_when_many_loads_hang_at_once, on the asyncio chain: each task
    checked the bound before any load was abandoned, so all eight loads were left running."""

    async def scenario() -> None:
        cache = bounded(AsyncTieredCache, hard_timeout=0.3)
        gate = asyncio.Event()
        entered: list[str] = []

        def hang(key: str) -> Callable[[], Any]:
            async def load() -> str:
                entered.append(key)
                await gate.wait()
                return "late"

            return load

        keys = [f"hung:{n}" for n in range(8)]
        results = await asyncio.gather(
            *(cache.get(key, hang(key)) for key in keys), return_exceptions=True
        )
        assert all(isinstance(result, LoadTimeout) for result in results), results
        assert len(entered) <= 2, entered
        with pytest.raises(LoadTimeout, match="2 loads"):
            await cache.get("other", hang("other"))
        gate.set()
        await cache.aclose()

    asyncio.run(scenario())


def test_async_hung_loads_of_one_key_count_each() -> None:
    async def scenario() -> None:
        cache = bounded(AsyncTieredCache, hard_timeout=0.1)
        gate = asyncio.Event()
        loads = 0

        async def hang() -> str:
            nonlocal loads
            loads += 1
            await gate.wait()
            return "late"

        for _ in range(5):
            with pytest.raises(LoadTimeout):
                await cache.get("k", hang)
            await cache.invalidate("k")
        assert loads == 2
        gate.set()
        await cache.aclose()

    asyncio.run(scenario())


def test_concurrent_async_timed_loads_past_the_bound_wait_for_a_free_one() -> None:
    async def scenario() -> None:
        cache = bounded(AsyncTieredCache, hard_timeout=5.0)

        def load(key: str) -> Callable[[], Any]:
            async def slow() -> str:
                await asyncio.sleep(0.05)
                return key

            return slow

        keys = [f"k{n}" for n in range(8)]
        assert await asyncio.gather(*(cache.get(key, load(key)) for key in keys)) == keys
        await cache.aclose()

    asyncio.run(scenario())


# -- the slot rule, the same in both loaders (tiered_cache.timed_slots)

#: The counts the slot rule touches, by name.
COUNTED = (
    "loads_refused",
    "soft_timeouts",
    "hard_timeouts",
    "stale_served_on_slow_load",
    "stale_served_on_error",
    "abandoned_loads",
)


def counts(cache: TieredCache | AsyncTieredCache) -> dict[str, int]:
    stats = cache.stats()
    return {name: int(stats.get(name, 0)) for name in COUNTED}


def one_slot(**options: Any) -> Protection:
    """One timed load at a time; ``b``'s stale value stands in after a soft timeout of 0.1 s
    (fail-safe off: only the timeout may serve it)."""
    return Protection(
        **{
            "max_stale": 100.0,
            "stale_while_revalidate": False,
            "fail_safe": False,
            "early_refresh_beta": 0.0,
            "soft_timeout": 0.1,
            "hard_timeout": 30.0,
            "max_timed_loads": 1,
            **options,
        }
    )


@contextlib.contextmanager
def holding(cache: TieredCache, key: str) -> Iterator[list[BaseException]]:
    """A read of ``key`` whose load holds its slot until the block ends; the read's
    LoadTimeout, if it gets one, lands in the list (complete once the block ended)."""
    entered, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> str:
        entered.set()
        release.wait(30)
        return key

    def read() -> None:
        try:
            cache.get(key, hold)
        except LoadTimeout as exc:
            errors.append(exc)

    holder = threading.Thread(target=read)
    holder.start()
    try:
        assert entered.wait(10)
        yield errors
    finally:
        release.set()
        holder.join(10)


@contextlib.asynccontextmanager
async def holding_async(cache: AsyncTieredCache, key: str) -> AsyncIterator[asyncio.Task[Any]]:
    """:func:`holding` on the asyncio chain: the read's task (done once the block ended)."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold() -> str:
        entered.set()
        await release.wait()
        return key

    holder = asyncio.create_task(cache.get(key, hold))
    try:
        await asyncio.wait_for(entered.wait(), 10)
        yield holder
    finally:
        release.set()
        await asyncio.gather(holder, return_exceptions=True)


def outcome(read: Callable[[], Any]) -> Any:
    """What ``read()`` returned, or the LoadTimeout it raised."""
    try:
        return read()
    except LoadTimeout as exc:
        return exc


async def async_outcome(read: Awaitable[Any]) -> Any:
    try:
        return await read
    except LoadTimeout as exc:
        return exc


def value(text: str) -> Callable[[], Awaitable[str]]:
    """An async loader of ``text``."""

    async def load() -> str:
        return text

    return load


def soft_wait_for_a_slot_threaded(clock: FakeClock, protection: Protection) -> tuple[Any, Any]:
    """``a``'s load holds the only slot; ``b``, stale, misses: what it got, and the counts."""
    cache = TieredCache([MemoryTier(clock=clock)], ttl=10, clock=clock, protection=protection)
    assert cache.get("b", lambda: "old") == "old"
    clock.advance(11)
    with holding(cache, "a"):
        served = outcome(lambda: cache.get("b", lambda: "new"))
    result = served, counts(cache)
    cache.close()
    return result


def soft_wait_for_a_slot_async(clock: FakeClock, protection: Protection) -> tuple[Any, Any]:
    async def scenario() -> tuple[Any, Any]:
        cache = AsyncTieredCache(
            [MemoryTier(clock=clock)], ttl=10, clock=clock, protection=protection
        )
        assert await cache.get("b", value("old")) == "old"
        clock.advance(11)
        async with holding_async(cache, "a"):
            served = await async_outcome(cache.get("b", value("new")))
        result = served, counts(cache)
        await cache.aclose()
        return result

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "wait", [soft_wait_for_a_slot_threaded, soft_wait_for_a_slot_async], ids=["threaded", "async"]
)
def test_past_its_soft_timeout_waiting_for_a_slot_a_miss_serves_stale_in_both_loaders(
    wait: Callable[[FakeClock, Protection], tuple[Any, Any]], clock: FakeClock
) -> None:
    """The wait for a slot is part of the caller's timeout: running out of the soft one
    while waiting serves the stale value, as running out of it while loading does. The
    asyncio loader raised LoadTimeout instead (fail-safe off) and counted only
    loads_refused; the threaded one served the stale value."""
    served, counted = wait(clock, one_slot())
    assert served == "old"
    assert counted == {
        "loads_refused": 1,
        "soft_timeouts": 1,
        "hard_timeouts": 0,
        "stale_served_on_slow_load": 1,
        "stale_served_on_error": 0,
        "abandoned_loads": 0,
    }


def hard_wait_for_a_slot_threaded(protection: Protection) -> tuple[Any, Any]:
    """``a``'s load holds the only slot past its hard timeout (abandoned, below the bound
    that refuses at once); ``c`` misses after it and waits its own hard timeout for the slot."""
    cache = TieredCache([MemoryTier()], protection=protection)
    with holding(cache, "a") as first:
        got = outcome(lambda: cache.get("c", lambda: "c"))
        # a's hard timeout ran out before c's (a started first), but on a loaded machine its
        # caller may not have woken yet: the load is released only once it has given up.
        for _ in range(2000):
            if first:
                break
            time.sleep(0.005)
    assert len(first) == 1  # a's caller gave up at its hard timeout
    assert cache.wait_background(10)
    result = got, counts(cache)
    cache.close()
    return result


def hard_wait_for_a_slot_async(protection: Protection) -> tuple[Any, Any]:
    async def scenario() -> tuple[Any, Any]:
        cache = AsyncTieredCache([MemoryTier()], protection=protection)
        async with holding_async(cache, "a") as first:
            got = await async_outcome(cache.get("c", value("c")))
        assert isinstance(first.exception(), LoadTimeout)
        result = got, counts(cache)
        await cache.aclose()
        return result

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    "wait", [hard_wait_for_a_slot_threaded, hard_wait_for_a_slot_async], ids=["threaded", "async"]
)
def test_past_its_hard_timeout_waiting_for_a_slot_a_miss_times_out_in_both_loaders(
    wait: Callable[[Protection], tuple[Any, Any]],
) -> None:
    """Running out of the hard timeout while waiting for a slot: LoadTimeout, counted as a
    hard timeout (as running out of it while loading) and as a refused load. The asyncio
    loader counted no hard timeout."""
    got, counted = wait(
        Protection.never_stale(hard_timeout=0.2, max_timed_loads=1, max_abandoned_loads=2)
    )
    assert isinstance(got, LoadTimeout)
    assert "max_timed_loads" in str(got)
    assert counted == {
        "loads_refused": 1,
        "soft_timeouts": 0,
        "hard_timeouts": 2,  # a's, then c's
        "stale_served_on_slow_load": 0,
        "stale_served_on_error": 0,
        "abandoned_loads": 1,
    }


def test_a_burst_of_healthy_timed_misses_past_max_abandoned_loads_runs_at_once() -> None:
    """24 misses at once, each load waiting for all 24 to have started: with the default
    bounds they all run together. The bound on hung loads (16) capped the running ones too,
    so 8 healthy misses queued (and here, timed out)."""
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=10.0))
    together = threading.Barrier(24)
    results: list[Any] = []

    def read(key: str) -> None:
        def load() -> str:
            together.wait(10)
            return key

        try:
            results.append(cache.get(key, load))
        except Exception as exc:
            results.append(exc)

    keys = [f"k{n}" for n in range(24)]
    in_threads(read, keys)
    assert sorted(results) == sorted(keys)
    assert counts(cache)["loads_refused"] == 0
    cache.close()


def test_a_burst_of_healthy_async_timed_misses_past_max_abandoned_loads_runs_at_once() -> None:
    async def scenario() -> None:
        cache = AsyncTieredCache(
            [MemoryTier()], protection=Protection.never_stale(hard_timeout=10.0)
        )
        together = asyncio.Barrier(24)

        def load(key: str) -> Callable[[], Any]:
            async def wait_for_all() -> str:
                await together.wait()
                return key

            return wait_for_all

        keys = [f"k{n}" for n in range(24)]
        results = await asyncio.gather(
            *(cache.get(key, load(key)) for key in keys), return_exceptions=True
        )
        assert list(results) == keys
        assert counts(cache)["loads_refused"] == 0
        await cache.aclose()

    asyncio.run(scenario())


def _leave_a_load_running_on_a_loop_of_its_own(
    cache: AsyncTieredCache, release: threading.Event, end: threading.Event
) -> threading.Thread:
    """A thread whose event loop leaves a timed load of "k" running (its caller cancelled)
    and keeps running until ``end`` is set (the other loop has heard the load end, which
    ends when ``release`` is set): returned once the load is left behind."""
    abandoned = threading.Event()

    async def hang() -> str:
        await async_until(release.is_set, "the test releases the load left running")
        return "late"

    async def on_a() -> None:
        caller = asyncio.create_task(cache.get("k", hang))
        await async_until(
            lambda: cache._loader.flights.in_flight("k") is not None and cache._loader._timed,
            "the caller's timed load of k in flight",
        )
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        abandoned.set()
        # The loop runs on, and with it the load, until the test has seen loop b hear the
        # load end: closed before, it could leave b's wait for the load's end untold.
        await async_until(end.is_set, "the test ends loop a", within=60)

    a = threading.Thread(target=lambda: asyncio.run(on_a()), daemon=True)
    a.start()
    assert abandoned.wait(10)
    return a


def _wait_on_loop_b(cache: AsyncTieredCache, verb: str) -> tuple[threading.Thread, list[bool]]:
    """A thread whose event loop calls ``cache.wait_background(60)`` or ``cache.aclose()``:
    returned once it is about to, with the list its answer goes to (True for aclose)."""
    said: list[bool] = []
    waiting = threading.Event()

    async def on_b() -> None:
        waiting.set()
        if verb == "wait_background":
            said.append(await cache.wait_background(60))
        else:
            await cache.aclose()
            said.append(True)

    b = threading.Thread(target=lambda: asyncio.run(on_b()), daemon=True)
    b.start()
    assert waiting.wait(10)
    return b, said


@pytest.mark.parametrize("verb", ["wait_background", "aclose"])
def test_waiting_on_another_loops_load_wakes_when_it_ends(verb: str) -> None:
    """A load left running on loop a; on loop b, wait_background (and aclose, which cancels
    it) waits for it. Its end was told to loop b from loop a's thread without waking b:
    wait_background slept to its timeout (60 s here) and returned False, and aclose, which
    waits with no timeout, never returned."""
    cache = AsyncTieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=60.0))
    release, end = threading.Event(), threading.Event()
    a = _leave_a_load_running_on_a_loop_of_its_own(cache, release, end)
    b, said = _wait_on_loop_b(cache, verb)
    if verb == "wait_background":
        release.set()
    b.join(10)  # a guard, not a measure: the load ends at once
    release.set()
    end.set()
    a.join(10)
    assert said == [True]
    assert not cache._loader._timed  # the load ended (or was cancelled): its slot is back


class _StoreHangs:
    """An async source whose store waits for ``release`` (a write the caller gave up on)."""

    name = "hangs"

    def __init__(self, release: threading.Event, storing: threading.Event) -> None:
        self._release, self._storing = release, storing

    async def load(self, key: str) -> Any:
        return "loaded"

    async def load_many(self, keys: Any) -> dict[str, Any]:
        return {}

    async def store(self, key: str, value: Any) -> None:
        self._storing.set()
        await async_until(self._release.is_set, "the test releases the hung write")

    async def remove(self, key: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("verb", ["wait_background", "aclose"])
def test_waiting_on_another_loops_write_wakes_when_it_ends(verb: str) -> None:
    """A write on loop a whose caller was cancelled goes on (to its end, as it must); on loop
    b, wait_background and aclose wait for it. Its end was told to b from a's thread without
    waking b: wait_background slept to its timeout (60 s) and aclose never returned."""
    release, storing, left = threading.Event(), threading.Event(), threading.Event()
    end = threading.Event()
    cache = AsyncTieredCache([MemoryTier()], _StoreHangs(release, storing))

    async def on_a() -> None:
        caller = asyncio.create_task(cache.set("k", "v"))
        await async_until(storing.is_set, "the write in its store")
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        left.set()
        # The loop runs on, and with it the write, until the test has seen loop b hear the
        # write end: closed before, it could leave b's wait for the write's end untold.
        await async_until(end.is_set, "the test ends loop a", within=60)

    a = threading.Thread(target=lambda: asyncio.run(on_a()), daemon=True)
    a.start()
    assert left.wait(10)
    b, said = _wait_on_loop_b(cache, verb)
    release.set()
    b.join(10)  # a guard, not a measure: the write ends at once
    end.set()
    a.join(10)
    assert said == [True]
    assert not cache._writes


def test_a_miss_joining_a_load_left_running_on_another_loop_wakes_when_it_ends() -> None:
    """Event loops in two threads: loop a's caller is cancelled while its timed load runs
    (the load goes on, and the key's next miss joins it); a miss of the key on loop b joins
    it and gets its value once it ends. The load's end was told to loop b from loop a's
    thread without waking it: b slept until its hard timeout (60 s here)."""
    cache = AsyncTieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=60.0))
    release, end = threading.Event(), threading.Event()
    got: list[Any] = []
    a = _leave_a_load_running_on_a_loop_of_its_own(cache, release, end)

    async def never() -> str:
        raise AssertionError("b's miss joins the load left running: it loads nothing")

    async def on_b() -> None:
        got.append(await cache.get("k", never))

    b = threading.Thread(target=lambda: asyncio.run(on_b()), daemon=True)
    b.start()
    for _ in range(10_000):  # a guard, not a measure: b's miss leads its flight (and joins)
        if cache._loader.flights.in_flight("k") is not None:
            break
        time.sleep(0.001)
    release.set()
    b.join(10)
    end.set()
    a.join(10)
    assert got == ["late"]


@pytest.mark.parametrize("chain", ["threaded", "asyncio"])
def test_a_miss_that_joined_an_earlier_load_says_so_when_it_times_out(chain: str) -> None:
    """The first miss of "k" times out (its load hangs and goes on); the second joins that
    load and times out too: it says the earlier load is still running, not that its own load
    took too long (the asyncio chain said the latter: it had no load of its own)."""
    release = threading.Event()
    protection = Protection.never_stale(hard_timeout=0.05)
    messages: list[str] = []
    if chain == "threaded":
        cache = TieredCache([MemoryTier()], protection=protection)

        def hang() -> str:
            release.wait(30)
            return "late"

        for _ in range(2):
            with pytest.raises(LoadTimeout) as raised:
                cache.get("k", hang)
            messages.append(str(raised.value))
        release.set()
        assert cache.wait_background(10)
        cache.close()
    else:

        async def scenario() -> None:
            acache = AsyncTieredCache([MemoryTier()], protection=protection)

            async def ahang() -> str:
                await async_until(release.is_set, "the test releases the hung load")
                return "late"

            for _ in range(2):
                with pytest.raises(LoadTimeout) as raised:
                    await acache.get("k", ahang)
                messages.append(str(raised.value))
            release.set()
            assert await acache.wait_background(10)
            await acache.aclose()

        asyncio.run(scenario())
    assert "took longer than the hard timeout" in messages[0]
    assert "an earlier load of 'k' is still running" in messages[1]


def test_a_miss_after_a_left_load_ended_loads_the_key_itself(clock: FakeClock) -> None:
    """A timed load its caller left (interrupted) fails; ``wait_background()`` returns once
    it has ended, and the key's next miss loads the key. That miss joined the ended load and
    raised its failure (the left caller's, never this miss's) when it came before the load's
    end was noted: its future's done callbacks, which drop it from the loads a miss joins,
    run after the future's waiters wake, ``wait_background()`` among them. Held here by
    pausing the worker as that note begins (a trace function: on the pure-Python core)."""
    if compiled_core():
        on_the_pure_core(test_a_miss_after_a_left_load_ended_loads_the_key_itself)
        return
    cache = TieredCache(
        [MemoryTier(clock=clock)], clock=clock, protection=Protection.never_stale(hard_timeout=10.0)
    )
    left_go, noting, go = threading.Event(), threading.Event(), threading.Event()
    note = SourceLoader._abandoned_done.__code__

    def paused_at_the_note(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is note:
            noting.set()
            go.wait(30)

    def left(interrupt: Callable[[], None]) -> str:
        interrupt()  # its caller stops waiting: the load goes on, left
        left_go.wait(30)
        sys.settrace(paused_at_the_note)  # this worker runs its future's done callbacks
        raise ValueError("the left load failed")

    with interrupting() as interrupt, pytest.raises(Interrupted):
        cache.get("a", lambda: left(interrupt))
    left_go.set()
    assert noting.wait(30)  # the load has ended; its end is being noted
    try:
        assert cache.wait_background(5)
        assert cache.get("a", lambda: "fresh") == "fresh"
    finally:
        go.set()
    assert cache.wait_background(5)
    cache.close()


def test_an_async_miss_after_a_left_load_ended_loads_the_key_itself() -> None:
    """The asyncio loader's case of the test above: a timed load its caller left (cancelled)
    fails, and in its last step wakes the key's next miss (a task its loader woke). That
    miss runs before the load's end is noted (its task's done callbacks come after the
    handles already due, that wake-up among them): it joined the ended load and raised its
    failure, the left caller's, as its own."""

    async def scenario() -> Any:
        cache = AsyncTieredCache(
            [MemoryTier()], protection=Protection.never_stale(hard_timeout=10.0)
        )
        started, go = asyncio.Event(), asyncio.Event()
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def left() -> str:
            started.set()
            await go.wait()
            woken.set_result(None)  # the next miss is due before this load's end is noted
            raise ValueError("the left load failed")

        async def fresh() -> str:
            return "fresh"

        async def next_miss() -> Any:
            await woken
            return await cache.get("a", fresh)

        caller = asyncio.create_task(cache.get("a", left))
        await started.wait()
        caller.cancel()  # its caller stops waiting: the load goes on, left
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        miss = asyncio.create_task(next_miss())
        go.set()
        try:
            return await miss
        finally:
            assert await cache.wait_background(10)
            await cache.aclose()

    assert asyncio.run(scenario()) == "fresh"
