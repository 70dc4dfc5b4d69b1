"""What a part is told of the event loops it is used on (tiered_cache.loop_end), without a
tier: loops that live on and are used in turn, and a loop whose clock jumps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tiered_cache.loop_end import LoopEnd


class Told:
    """A part's record of what it was told: ``let_go`` (its loop ended) and ``abandon`` (its
    loop was closed by hand)."""

    def __init__(self) -> None:
        self.let_go = 0
        self.abandoned = 0
        self.end = LoopEnd("part", self._let_go, self._abandon)

    async def _let_go(self) -> None:
        self.let_go += 1

    def _abandon(self) -> None:
        self.abandoned += 1


async def used(end: LoopEnd) -> bool:
    """The part used on the running loop, which then runs a few turns (a callback scheduled
    there runs): whether the loop's end has let go of it meanwhile."""
    end.here()
    for _ in range(3):
        await asyncio.sleep(0)
    return end.ended_here()


def ended(loop: asyncio.AbstractEventLoop) -> None:
    """End ``loop`` as ``asyncio.run`` does."""
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def two_loops() -> Iterator[tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]]:
    loops = asyncio.new_event_loop(), asyncio.new_event_loop()
    yield loops
    for loop in loops:
        if not loop.is_closed():
            ended(loop)


def test_a_loop_used_again_is_not_let_go_of_by_its_earlier_turn(
    two_loops: tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop],
) -> None:
    """Two loops that live on (a kept loop, a loop of a thread's bridge), the part used on
    each in turn: the part's first turn on a loop, left for the other, ended (its generator
    closed) on that loop's next run, and let go of the part's second turn there (its
    connections disconnected under it, the loop's end then seen as over: nothing let go of
    at the real end, nor told of a close by hand)."""
    told = Told()
    first, second = two_loops
    seen = [loop.run_until_complete(used(told.end)) for loop in (first, second, first, second)]
    assert (seen, told.let_go) == ([False] * 4, 0)
    ended(first)  # not the part's loop: nothing to let go of
    ended(second)
    assert (told.let_go, told.abandoned) == (1, 0)


class Warped(asyncio.SelectorEventLoop):
    """A loop whose clock a test moves (as a fake-time test loop does)."""

    def __init__(self) -> None:
        super().__init__()
        self.ahead = 0.0

    def time(self) -> float:
        return super().time() + self.ahead


def test_a_loop_whose_clock_jumps_past_the_watch_is_still_watched() -> None:
    """The timer that watches the loop's close came due (a year away): the close by hand
    was no longer seen as it happened (the bus's listener, dead, still looked "connected")."""
    told = Told()
    loop = Warped()
    try:
        loop.run_until_complete(used(told.end))
        loop.ahead = 2 * 365 * 24 * 3600.0  # two years on (the watch was a year away)
        assert not loop.run_until_complete(used(told.end))
    finally:
        loop.close()  # by hand
    assert (told.abandoned, told.let_go) == (1, 0)
