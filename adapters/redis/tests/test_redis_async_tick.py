"""The first call of a tick (tiered_cache_redis.async_tick.TickBatch) of a batch given a way
to send a call alone (the reads') yields to the loop only when another call could still join
it: alone in its tick, it is sent in the same pass of the loop (the yield cost a lone L2 hit a
pass: a select and a round of the loop's queue), and a burst is still sent as one batch. A
batch without one (the leases') yields as before.

Passes of the loop are counted by its selector (one ``select`` per pass): deterministic, as
no I/O is involved."""

from __future__ import annotations

import asyncio
import collections
import selectors
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from tiered_cache_redis.async_coalesce import CoalescedReads
from tiered_cache_redis.async_tick import TickBatch, runs_alone
from tiered_cache_redis.chunks import KEYS_PER_CALL


class CountingSelector(selectors.DefaultSelector):
    """The loop's selector, counting the loop's passes."""

    passes = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        self.passes += 1
        return super().select(timeout)


def run_counted(
    scenario: Callable[[CountingSelector], Coroutine[Any, Any, None]],
    *,
    task_factory: Any = None,
) -> None:
    selector = CountingSelector()

    def loop_factory() -> asyncio.AbstractEventLoop:
        loop = asyncio.SelectorEventLoop(selector)
        loop.set_task_factory(task_factory)
        return loop

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario(selector))


class Sends:
    """A ``send`` for a TickBatch: notes each batch and the pass it was sent in."""

    def __init__(self, selector: CountingSelector) -> None:
        self.selector = selector
        self.batches: list[tuple[list[str], int]] = []

    async def __call__(self, calls: Sequence[str]) -> list[str]:
        self.batches.append((list(calls), self.selector.passes))
        return [call.upper() for call in calls]


class Alone:
    """An ``alone`` for a TickBatch: notes each call and the pass it was sent in."""

    def __init__(self, selector: CountingSelector) -> None:
        self.selector = selector
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, call: str) -> str:
        self.calls.append((call, self.selector.passes))
        return call * 2


def test_a_call_alone_in_its_tick_is_sent_in_the_same_pass() -> None:
    async def scenario(selector: CountingSelector) -> None:
        sends, alone = Sends(selector), Alone(selector)
        batch: TickBatch[str, str] = TickBatch(sends, alone=alone)
        started = selector.passes
        assert await batch.call("a") == "aa"
        assert (alone.calls, sends.batches) == ([("a", started)], [])  # no pass: no yield
        # A burst still goes through send, as one batch.
        assert await asyncio.gather(*(batch.call(c) for c in "bcd")) == ["B", "C", "D"]
        assert [calls for calls, _ in sends.batches] == [["b", "c", "d"]]

    run_counted(scenario)


def test_without_alone_a_call_alone_in_its_tick_still_yields() -> None:
    """The lease calls: a lease taken for a caller cancelled before its reply is read would
    be held until its TTL, so theirs yield first, alone or not (a cancellation asked before
    the call lands there, before anything is sent)."""

    async def scenario(selector: CountingSelector) -> None:
        sends = Sends(selector)
        batch: TickBatch[str, str] = TickBatch(sends)
        started = selector.passes
        assert await batch.call("a") == "A"
        assert sends.batches == [(["a"], started + 1)]

    run_counted(scenario)


def test_the_calls_of_a_burst_are_still_one_batch() -> None:
    async def scenario(selector: CountingSelector) -> None:
        sends = Sends(selector)
        batch: TickBatch[str, str] = TickBatch(sends, alone=Alone(selector))
        started = selector.passes
        got = await asyncio.gather(*(batch.call(c) for c in "abc"))
        assert got == ["A", "B", "C"]
        # The tasks start in one pass; the first yields once so the others join it.
        assert sends.batches == [(["a", "b", "c"], started + 2)]

    run_counted(scenario)


def test_a_call_with_a_task_ready_yields_and_gathers_its_call() -> None:
    """Another task ready in the loop's queue may make a call in this tick: the first call
    waits for it (the pass of the loop it yields for) and sends both."""

    async def scenario(selector: CountingSelector) -> None:
        sends = Sends(selector)
        batch: TickBatch[str, str] = TickBatch(sends, alone=Alone(selector))
        other = asyncio.get_running_loop().create_task(batch.call("b"))
        started = selector.passes
        assert await batch.call("a") == "A"
        assert await other == "B"
        assert sends.batches == [(["a", "b"], started + 1)]

    run_counted(scenario)


def test_under_a_task_factory_the_first_call_still_yields() -> None:
    """A task factory may start a task's first steps inside its creator's (an eager one),
    outside the loop's queue: the yield is kept, whatever the queue holds."""

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def scenario(selector: CountingSelector) -> None:
        sends = Sends(selector)
        batch: TickBatch[str, str] = TickBatch(sends, alone=Alone(selector))
        started = selector.passes
        assert await batch.call("a") == "A"
        assert sends.batches == [(["a"], started + 1)]

    run_counted(scenario, task_factory=factory)


def test_a_lone_get_of_the_tier_reads_leaves_at_once_as_a_get() -> None:
    """The asyncio Redis tier's reads (CoalescedReads): a lone L2 hit's GET is sent in the
    pass it was asked in; a burst's GETs still leave as one MGET."""

    async def scenario(selector: CountingSelector) -> None:
        sent: list[tuple[str, Any, int]] = []

        class Reads:
            async def get(self, name: str) -> bytes | None:
                sent.append(("GET", name, selector.passes))
                return name.encode()

            async def mget(self, names: Sequence[str]) -> list[bytes | None]:
                sent.append(("MGET", list(names), selector.passes))
                return [name.encode() for name in names]

            async def aclose(self) -> None:
                pass

        reads = CoalescedReads(Reads(), KEYS_PER_CALL)
        started = selector.passes
        assert await reads.get("k") == b"k"
        assert sent == [("GET", "k", started)]
        assert list(await asyncio.gather(reads.get("a"), reads.get("b"))) == [b"a", b"b"]
        assert [(kind, names) for kind, names, _ in sent[1:]] == [("MGET", ["a", "b"])]

    run_counted(scenario)


def test_the_loop_still_has_the_ready_queue_runs_alone_reads() -> None:
    """``runs_alone`` reads asyncio's private ``BaseEventLoop._ready`` (no public accessor): a
    Python that renames it would raise AttributeError on every lone asyncio L2 hit. Pinned
    here, so that such an upgrade fails a test instead of every read."""
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert isinstance(loop._ready, collections.deque)  # type: ignore[attr-defined]
        assert runs_alone(loop)
        loop.call_soon(lambda: None)
        assert not runs_alone(loop)
    finally:
        loop.close()
