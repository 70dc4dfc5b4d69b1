"""A loader that reads its own key raises RecursiveLoad at once, timed loads included.

A timed load (a soft or hard timeout applies) runs its loader on a worker thread (the threaded
chain) or a task of its own (asyncio), not on the caller that leads the key's flight. A loader
there that read its own key joined that flight as any other caller would: it waited for the
caller, which waited for it, until the hard timeout (LoadTimeout), and for ever with a soft
timeout alone (the caller served the stale value; the worker stayed blocked).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, RecursiveLoad, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.frames import current_frames
from tiered_cache.testing.interrupts import Interrupted, interrupting

#: Timeouts far longer than a recursion needs to be seen: reaching one is the defect.
HARD = Protection.never_stale(hard_timeout=10.0)
SOFT = Protection.never_stale(soft_timeout=10.0, max_stale=3600.0)


def counts(cache: TieredCache | AsyncTieredCache) -> dict[str, int]:
    stats = cache.stats()
    return {name: stats[name] for name in ("soft_timeouts", "hard_timeouts", "abandoned_loads")}


NONE_TIMED_OUT = {"soft_timeouts": 0, "hard_timeouts": 0, "abandoned_loads": 0}


def test_a_timed_loader_that_reads_its_own_key_raises_recursive_load(clock: FakeClock) -> None:
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, protection=HARD)
    with pytest.raises(RecursiveLoad, match="'a'"):
        cache.get("a", lambda: cache.get("a", lambda: "inner"))
    assert counts(cache) == NONE_TIMED_OUT
    assert cache.wait_background(5)
    assert cache.get("a", lambda: "outer") == "outer"  # nothing was left in flight
    cache.close()


def test_a_timed_loader_reading_its_key_through_another_key_raises_recursive_load(
    clock: FakeClock,
) -> None:
    """``a``'s loader reads ``b``, whose loader (on a worker of its own) reads ``a``: the
    worker of ``b`` works for the worker of ``a``, which works for the caller."""
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, protection=HARD)

    def load_b() -> str:
        return str(cache.get("a", lambda: "inner"))

    with pytest.raises(RecursiveLoad, match="'a'"):
        cache.get("a", lambda: cache.get("b", load_b))
    assert counts(cache) == NONE_TIMED_OUT
    assert cache.wait_background(5)
    cache.close()


def test_a_timed_loader_reading_its_key_through_two_other_keys_raises_recursive_load(
    clock: FakeClock,
) -> None:
    """``a`` reads ``b``, ``b`` reads ``c``, ``c`` reads ``a``, each loader on a worker of its
    own: the worker of ``c`` finds the caller leading ``a`` through both workers between
    (the walk goes to any depth). Walking every other work only, it joined ``a``'s flight
    and waited for the caller: LoadTimeout after the hard timeout."""
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, protection=HARD)

    def load_c() -> str:
        return str(cache.get("a", lambda: "inner"))

    def load_b() -> str:
        return str(cache.get("c", load_c))

    with pytest.raises(RecursiveLoad, match="'a'"):
        cache.get("a", lambda: cache.get("b", load_b))
    assert counts(cache) == NONE_TIMED_OUT
    assert cache.wait_background(5)
    cache.close()


def test_a_soft_timed_loader_that_reads_its_own_key_raises_and_leaves_no_worker(
    clock: FakeClock,
) -> None:
    """With a soft timeout alone the caller served the stale value after it, and the worker
    waited for that caller's flight for ever."""
    cache = TieredCache([MemoryTier(clock=clock)], ttl=10, clock=clock, protection=SOFT)
    assert cache.get("a", lambda: "old") == "old"
    clock.advance(11)  # stale: the next miss is timed by the soft timeout
    with pytest.raises(RecursiveLoad, match="'a'"):
        cache.get("a", lambda: cache.get("a", lambda: "inner"))
    assert counts(cache) == NONE_TIMED_OUT
    assert cache.wait_background(5)
    cache.close()


async def _inner() -> str:
    return "inner"


@pytest.mark.anyio
async def test_an_async_timed_loader_that_awaits_its_own_key_raises_recursive_load(
    clock: FakeClock,
) -> None:
    cache = AsyncTieredCache([MemoryTier(clock=clock)], clock=clock, protection=HARD)

    async def load() -> str:
        return str(await cache.get("a", _inner))

    with pytest.raises(RecursiveLoad, match="'a'"):
        await cache.get("a", load)
    assert counts(cache) == NONE_TIMED_OUT
    assert await cache.wait_background(5)
    await cache.aclose()


@pytest.mark.anyio
async def test_an_async_soft_timed_loader_that_awaits_its_own_key_raises_recursive_load(
    clock: FakeClock,
) -> None:
    cache = AsyncTieredCache([MemoryTier(clock=clock)], ttl=10, clock=clock, protection=SOFT)

    async def old() -> str:
        return "old"

    async def load() -> str:
        return str(await cache.get("a", _inner))

    assert await cache.get("a", old) == "old"
    clock.advance(11)
    with pytest.raises(RecursiveLoad, match="'a'"):
        await cache.get("a", load)
    assert counts(cache) == NONE_TIMED_OUT
    assert await cache.wait_background(5)
    await cache.aclose()


def test_a_worker_left_by_its_caller_may_wait_for_that_callers_next_load(
    clock: FakeClock,
) -> None:
    """Not a recursion: once the caller stopped waiting for a timed load (soft timeout, the
    stale value served), the worker it left works for nobody; a flight that caller leads
    later may be joined by it as by any other thread."""
    protection = Protection.never_stale(soft_timeout=0.05, max_stale=3600.0)
    cache = TieredCache([MemoryTier(clock=clock)], ttl=10, clock=clock, protection=protection)
    go_on = threading.Event()
    joined = threading.Event()
    outcome: list[object] = []

    def slow_b() -> str:
        go_on.wait(10)
        try:
            outcome.append(cache.get("c", lambda: "from the worker"))
        except BaseException as exc:
            outcome.append(exc)
        return "new"

    def load_c() -> str:
        go_on.set()  # the left worker now reads "c", which this thread leads
        flights = cache._loader.flights  # no public view of its waiters
        for _ in range(1000):
            flight = flights.in_flight("c")
            if flight is not None and flight.waiters:
                joined.set()
                break
            threading.Event().wait(0.005)
        return "from the caller"

    assert cache.get("b", lambda: "old") == "old"
    clock.advance(11)
    assert cache.get("b", slow_b) == "old"  # past the soft timeout: the stale value
    assert cache.get("c", load_c) == "from the caller"
    assert cache.wait_background(5)
    assert joined.is_set()
    assert outcome == ["from the caller"]
    cache.close()


def waiting_for_a_future(thread: int) -> bool:
    """Whether ``thread`` is blocked in ``Future.result`` (a caller waiting for a timed load)."""
    frame = current_frames().get(thread)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "result" and code.co_filename.endswith(FUTURES):
            return True
        frame = frame.f_back
    return False


FUTURES = os.path.join("concurrent", "futures", "_base.py")


#: A left load's loader reads its own key once the key's next miss waits for the load, or
#: with nobody waiting for it.
JOINED = pytest.mark.parametrize("joined", [True, False], ids=["joined", "not-joined"])


@JOINED
def test_a_left_load_that_reads_its_own_key_raises_recursive_load(
    clock: FakeClock, joined: bool
) -> None:
    """A timed load its caller left (interrupted) goes on; the key's next miss joins it and
    waits for it. Its loader reading its own key then joined that miss's flight, and each
    waited for the other until the miss's hard timeout (LoadTimeout after 10 s here). Joined
    by nobody, its loader led a new flight of the key, whose load joined the left one, its
    own, and waited for itself as long.

    The loader reads its key once its caller has let it go (the interrupt caught): read as
    the interrupt was still on its way to the caller, the load could end before it was left
    (the caller still led the key's flight and waited for it: a RecursiveLoad too, but no
    abandoned load counted)."""
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, protection=HARD)
    main = threading.get_ident()
    let_go = threading.Event()
    outcome: list[object] = []

    def left(interrupt: Callable[[], None]) -> str:
        interrupt()  # its caller stops waiting: the load goes on, left
        let_go.wait(10)
        if joined:
            for _ in range(2000):  # a guard, not a measure: until the next miss waits for it
                if waiting_for_a_future(main):
                    break
                threading.Event().wait(0.005)
        try:
            return str(cache.get("a", lambda: "inner"))
        except BaseException as exc:
            outcome.append(type(exc))
            raise

    with interrupting() as interrupt:
        with pytest.raises(Interrupted):
            cache.get("a", lambda: left(interrupt))
        let_go.set()
        if joined:
            with pytest.raises(RecursiveLoad, match="'a'"):
                cache.get("a", lambda: "not loaded: the left load is joined")
    assert cache.wait_background(30)
    assert outcome == [RecursiveLoad]
    assert counts(cache) == {**NONE_TIMED_OUT, "abandoned_loads": 1}
    assert cache.get("a", lambda: "fresh") == "fresh"  # nothing was left in flight
    cache.close()


def test_a_left_load_reading_its_key_through_another_key_raises_recursive_load(
    clock: FakeClock,
) -> None:
    """``a``'s left load reads ``b``, whose timed loader (on a worker of its own) reads
    ``a``: that load joined the left one, whose worker waited for it, until the hard
    timeout."""
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, protection=HARD)
    outcome: list[object] = []

    def load_b() -> str:
        return str(cache.get("a", lambda: "inner"))

    def left(interrupt: Callable[[], None]) -> str:
        interrupt()  # its caller stops waiting: the load goes on, left
        try:
            return str(cache.get("b", load_b))
        except BaseException as exc:
            outcome.append(type(exc))
            raise

    with interrupting() as interrupt, pytest.raises(Interrupted):
        cache.get("a", lambda: left(interrupt))
    assert cache.wait_background(30)
    assert outcome == [RecursiveLoad]
    assert counts(cache) == {**NONE_TIMED_OUT, "abandoned_loads": 1}
    cache.close()


def awaiting_in(task: asyncio.Task[Any], name: str) -> bool:
    """Whether ``task`` is suspended inside a coroutine function called ``name``."""
    awaited: Any = task.get_coro()
    while awaited is not None:
        code = getattr(awaited, "cr_code", None)
        if code is not None and code.co_name == name:
            return True
        awaited = getattr(awaited, "cr_await", None)
    return False


@pytest.mark.anyio
@JOINED
async def test_an_async_left_load_that_awaits_its_own_key_raises_recursive_load(
    clock: FakeClock, joined: bool
) -> None:
    """As the threaded chain's: the load's task, left by its cancelled caller, awaited the
    flight of the key's next miss that joined it, or itself, until the hard timeout."""
    cache = AsyncTieredCache([MemoryTier(clock=clock)], clock=clock, protection=HARD)
    outcome: list[object] = []
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def left() -> str:
        tasks["first"].cancel()  # its caller stops waiting: the load goes on, left
        await asyncio.sleep(0)
        for _ in range(2000 if joined else 0):  # a guard, not a measure
            second = tasks.get("second")
            if second is not None and awaiting_in(second, "_await_timed"):
                break  # the next miss waits for this load
            await asyncio.sleep(0.005)
        try:
            return str(await cache.get("a", _inner))
        except BaseException as exc:
            outcome.append(type(exc))
            raise

    tasks["first"] = asyncio.ensure_future(cache.get("a", left))
    with pytest.raises(asyncio.CancelledError):
        await tasks["first"]
    if joined:
        tasks["second"] = asyncio.ensure_future(cache.get("a", _inner))
        with pytest.raises(RecursiveLoad, match="'a'"):
            await tasks["second"]
    assert await cache.wait_background(30)
    assert outcome == [RecursiveLoad]
    assert counts(cache) == {**NONE_TIMED_OUT, "abandoned_loads": 1}
    await cache.aclose()
