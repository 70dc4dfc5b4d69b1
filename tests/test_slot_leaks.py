"""A timed load's slot (``max_abandoned_loads``) comes back whatever happens to the load.

A slot that never comes back is a cache that refuses every timed load for good: each miss
waits its whole timeout for a slot, then serves stale or raises LoadTimeout.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from types import FrameType

import pytest

from tiered_cache import AsyncTieredCache, LoadTimeout, MemoryTier, TieredCache
from tiered_cache.loop_end import WATCH_AT
from tiered_cache.protection import Protection
from tiered_cache.testing.interrupts import Interrupted, interrupt_once, interrupting
from tiered_cache.testing.polling import async_until


def _slot_granted(frame: FrameType) -> bool:
    """At a line of ``TimedSlots.take``/``try_take`` run once it granted the slot."""
    return frame.f_locals.get("verdict") is True


def one_slot(hard_timeout: float) -> Protection:
    """Loads time out at ``hard_timeout``; one runs at a time (``max_timed_loads``), and one
    hung load refuses the others (``max_abandoned_loads``)."""
    return Protection.never_stale(
        hard_timeout=hard_timeout, max_abandoned_loads=1, max_timed_loads=1
    )


def test_a_timed_load_whose_thread_cannot_start_gives_its_slot_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process at its thread limit (a container's pids.max): Thread.start raises
    RuntimeError("can't start new thread"). The caller sees it, but the slot it took was
    never given back: with a bound of 1, every later timed miss waited its whole timeout
    and was refused (with the default max_timed_loads of 64, after 64 such failures)."""
    cache = TieredCache([MemoryTier()], protection=one_slot(0.2))
    real_start = threading.Thread.start

    def at_the_thread_limit(thread: threading.Thread) -> None:
        if thread.name == "tiered-cache-timed-load":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", at_the_thread_limit)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        cache.get("a", lambda: "a")
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert cache.get("b", lambda: "b") == "b"  # failed: LoadTimeout, 1 loads were running
    cache.close()


def test_async_callers_cancelled_while_their_loads_hang_free_the_slots_when_they_end() -> None:
    """Cancelled callers leave their loads running (counted as hung: the next miss is
    refused at once); once the loads end, the slots are free again."""

    async def scenario() -> None:
        cache = AsyncTieredCache(
            [MemoryTier()],
            protection=Protection.never_stale(hard_timeout=30.0, max_abandoned_loads=2),
        )
        gate = asyncio.Event()
        entered: list[str] = []

        def hanging(key: str) -> object:
            async def load() -> str:
                entered.append(key)
                await gate.wait()
                return "late"

            return load

        async def instant() -> str:
            return "now"

        callers = [asyncio.create_task(cache.get(key, hanging(key))) for key in ("a", "b")]
        await async_until(lambda: len(entered) == 2, "both loads entered")
        for caller in callers:
            caller.cancel()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in results)
        with pytest.raises(LoadTimeout, match="2 loads"):
            await cache.get("other", instant)
        gate.set()
        assert await cache.wait_background(10)
        assert await cache.get("other", instant) == "now"
        assert await cache.get("a", instant) == "late"  # the cancelled caller's load filled
        assert cache.stats()["abandoned_loads"] == 2
        await cache.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "stopped"])
@pytest.mark.parametrize("key", ["other", "k"], ids=["another key", "its key"])
def test_a_hung_async_load_on_a_loop_closed_under_it_does_not_hold_its_slot_for_ever(
    key: str, closed: bool
) -> None:
    """A loop run by hand (``run_until_complete`` then ``close``, as a sync wrapper around
    the asyncio chain does) and closed while a load hung: its task will never run again, so
    its done callbacks never come; the bound of 1 then refused every other loop's timed miss
    at once, for the life of the cache. A miss of the hung load's own key joined that load
    (which would never end) rather than load; wait_background waited for it, and aclose
    cancelled it (on its closed loop: RuntimeError).

    A loop run by hand and then left, not closed (a thread done with it, as most are: only
    ``asyncio.run`` closes its loop) is the same for as long as nobody runs it again: its
    key's every miss joined the load and raised LoadTimeout, its slot stayed taken, and
    aclose waited for the task for ever (seen failing: LoadTimeout, and aclose hung)."""
    cache = AsyncTieredCache([MemoryTier()], protection=one_slot(0.1))

    async def hang() -> str:
        await asyncio.Event().wait()
        return "never"

    async def instant() -> str:
        return "now"

    loop = asyncio.new_event_loop()
    with pytest.raises(LoadTimeout):
        loop.run_until_complete(cache.get("k", hang))
    if closed:
        loop.close()

    async def elsewhere() -> tuple[str, bool]:
        got = str(await cache.get(key, instant))
        waited = await cache.wait_background(1.0)
        await asyncio.wait_for(cache.aclose(), 10)  # a guard: it waited for ever
        return got, waited

    # failed: LoadTimeout, 1 loads are still running; then wait_background False (it waited
    # for the dead task), and aclose raised RuntimeError (it cancelled the dead task)
    try:
        assert asyncio.run(elsewhere()) == ("now", True)
    finally:
        if not loop.is_closed():  # ended as a loop should be: the cancelled load ends there
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _hang() -> str:
    await asyncio.Event().wait()
    return "never"


async def _instant() -> str:
    return "now"


@pytest.mark.parametrize("used_after", [True, False], ids=["used after", "not used after"])
def test_a_load_left_running_on_a_loop_closed_by_hand_is_told_not_destroyed_pending(
    caplog: pytest.LogCaptureFixture, used_after: bool
) -> None:
    """A load whose caller timed out goes on in a task of the loader; its loop closed by
    hand (``run_until_complete`` then ``close``), that task never runs again. It was dropped
    when the loader next looked, and asyncio said ``Task was destroyed but it is pending!``
    whenever the collector freed it: in a later test's output or at exit, naming the
    loader's internals, the loop's own exception handler called. The loader sees the close
    (:func:`~tiered_cache.loop_end.when_closed`) and says it once, in its own words."""
    cache = AsyncTieredCache([MemoryTier()], protection=one_slot(0.1))
    loop = asyncio.new_event_loop()
    told: list[str] = []
    loop.set_exception_handler(lambda _, context: told.append(context["message"]))
    with pytest.raises(LoadTimeout):
        loop.run_until_complete(cache.get("k", _hang))
    loop.close()

    async def elsewhere() -> None:
        assert await cache.get("k", _instant) == "now"
        await cache.aclose()

    if used_after:
        asyncio.run(elsewhere())
    else:
        del cache
    gc.collect()
    assert told == []  # failed: ['Task was destroyed but it is pending!']
    assert [r.getMessage() for r in caplog.records if "closed by hand" in r.getMessage()] != []


def test_a_caller_interrupted_while_its_timed_load_runs_hands_the_load_over() -> None:
    """The caller gets the interrupt; its load, which goes on, fills the cache when it ends
    (as after a timeout), and the key's next miss takes that value. The load ended with
    nobody to fill its value: the next miss loaded the key again."""
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=30.0))
    release = threading.Event()
    loads: list[str] = []
    with interrupting() as interrupt:

        def load() -> str:
            loads.append("late")
            interrupt()  # the caller is waiting for this load
            release.wait(30)
            return "late"

        with pytest.raises(Interrupted):
            cache.get("k", load)
    release.set()
    assert cache.wait_background(10)
    assert cache.get("k", lambda: "again") == "late"
    assert loads == ["late"]
    assert cache.stats()["abandoned_loads"] == 1
    cache.close()


def test_a_reader_waiting_on_an_interrupted_caller_gets_the_handed_over_load() -> None:
    """A reader that joined the interrupted caller's flight is told its leader is gone and
    starts over: it joins the load that goes on rather than start another. It loaded the
    key again (the interrupted caller's load was nobody's to join)."""
    cache = TieredCache([MemoryTier()], protection=Protection.never_stale(hard_timeout=30.0))
    release = threading.Event()
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(cache.get("k", lambda: "again")))
    with interrupting() as interrupt:

        def load() -> str:
            reader.start()
            flight = cache._loader.flights.in_flight("k")
            assert flight is not None
            for _ in range(10_000):  # a guard, not a measure
                if flight.waiters:
                    break
                threading.Event().wait(0.001)
            interrupt()  # the caller, and now a reader, wait for this load
            release.wait(30)
            return "late"

        with pytest.raises(Interrupted):
            cache.get("k", load)
    release.set()
    reader.join(10)
    assert got == ["late"]
    cache.close()


def test_a_caller_interrupted_as_its_slot_is_granted_gives_the_slot_back() -> None:
    """An interrupt that lands in the instant a timed load's slot is granted -- counted
    taken, not yet tied to the load's future -- left the slot taken for the life of the
    cache: with a bound of 1 every later timed miss waited its whole timeout and was refused
    (seen failing: LoadTimeout, 1 ran for all of 0.2s). The interrupt is a real signal,
    raised at the first line ``TimedSlots.take`` runs once it granted the slot (a trace
    function stops there: the module is pure Python, compiled core or not)."""
    from tiered_cache.timed_slots import TimedSlots

    cache = TieredCache([MemoryTier()], protection=one_slot(0.2))
    with interrupting() as interrupt:
        tracer = interrupt_once(TimedSlots.take.__code__, _slot_granted, interrupt)
        sys.settrace(tracer)
        try:
            with pytest.raises(Interrupted):
                cache.get("k", lambda: "v")
        finally:
            sys.settrace(None)
    assert cache.get("other", lambda: "loaded") == "loaded"
    assert cache.get("k", lambda: "loaded") == "loaded"
    cache.close()


def test_an_async_caller_interrupted_as_its_slot_is_granted_gives_the_slot_back() -> None:
    """:func:`test_a_caller_interrupted_as_its_slot_is_granted_gives_the_slot_back` for the
    asyncio loader: an interrupt raised into the loop once ``TimedSlots.try_take`` counted
    the slot, before the load's task was tied to it, left the slot taken for the life of the
    cache (seen failing: LoadTimeout, 1 loads were running for all of 0.2s)."""
    from tiered_cache.timed_slots import TimedSlots

    cache = AsyncTieredCache([MemoryTier()], protection=one_slot(0.2))

    async def value() -> str:
        return "loaded"

    with interrupting() as interrupt:
        tracer = interrupt_once(TimedSlots.try_take.__code__, _slot_granted, interrupt)

        async def interrupted() -> None:
            sys.settrace(tracer)
            try:
                await cache.get("k", value)
            finally:
                sys.settrace(None)

        with pytest.raises(Interrupted):
            asyncio.run(interrupted())

    async def later() -> tuple[str, str]:
        got = (str(await cache.get("other", value)), str(await cache.get("k", value)))
        await cache.aclose()
        return got

    assert asyncio.run(later()) == ("loaded", "loaded")


def _close_watchers(loop: asyncio.AbstractEventLoop) -> int:
    """The timers on ``loop`` that watch its close (:func:`~tiered_cache.loop_end.when_closed`:
    due never), not cancelled."""
    scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return sum(1 for h in scheduled if h.when() == WATCH_AT and not h.cancelled())


def test_an_async_chain_closed_on_a_loop_that_lives_on_leaves_no_close_watcher_there() -> None:
    """The loader watches the close of each loop it ran a task on (a timed load here), with a
    timer on that loop. The chain closed, the loop running on (an application's loop, which
    builds and closes chains), that timer stayed: one more per chain closed there."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        before = _close_watchers(loop)
        cache = AsyncTieredCache([MemoryTier()], protection=one_slot(30.0))
        assert await cache.get("k", _instant) == "now"
        watching = _close_watchers(loop) - before
        await cache.aclose()
        return watching, _close_watchers(loop) - before

    assert asyncio.run(main()) == (1, 0)  # failed: (1, 1)
