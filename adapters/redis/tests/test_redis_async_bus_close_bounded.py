"""The asyncio bus's ``aclose`` when its listener does not end, or sleeps between two attempts.

``aclose`` cancels the listener's task and waits for it. A listener whose await swallows the
cancellation (a library's ``except CancelledError``, a race of its own timeout with the cancel)
and goes on waiting held ``aclose``, the chain's, and the loop's end, for ever: it now cancels
again at each poll and gives up after :attr:`Health.close_wait` on the bus's clock, as the
threaded bus's close does (:meth:`Listening.outlive`, the one home of that rule).
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tiered_cache_redis import AsyncRedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.polling import async_until

from .bus_listeners import Heard, refused

#: Waits of the test's own: a guard against a hang, never a measure.
GUARD = 30.0
#: Past the close's wait on the bus's clock (a few of its 1 s timeouts).
PAST_THE_BOUND = 3600.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_an_aclose_whose_listener_swallows_the_cancel_gives_up() -> None:
    """The listener's backoff swallows every cancel until let go. ``aclose`` cancels it at
    each poll, then returns once :attr:`Health.close_wait` has passed on the bus's clock,
    the chain told the bus is down and that the close gave up; let go, the listener tries
    no connection more. Seen failing: ``aclose`` awaited the task for ever."""
    connect, attempts = refused(
        lambda port: aioredis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    )

    cancels = 0
    backing_off, go = asyncio.Event(), asyncio.Event()

    async def stubborn(seconds: float) -> None:
        nonlocal cancels
        backing_off.set()
        while not go.is_set():
            try:
                await go.wait()
            except asyncio.CancelledError:
                cancels += 1

    clock = FakeClock(1000.0)
    bus = AsyncRedisBus(
        connect, "stubborn", health=Health(timeout=1.0, poll=0.05, clock=clock), sleep=stubborn
    )
    heard = Heard()
    bus.subscribe(heard)
    bus.listen()
    listener = bus._task
    assert listener is not None
    await asyncio.wait_for(backing_off.wait(), GUARD)
    closing = asyncio.get_running_loop().create_task(bus.aclose())
    try:
        await async_until(lambda: cancels >= 1, "the listener cancelled")
        clock.advance(PAST_THE_BOUND)
        done, _ = await asyncio.wait({closing}, timeout=GUARD)
        assert closing in done, "aclose() never returned: its listener swallows the cancel"
        await closing
        assert not listener.done()  # left to end by itself
    finally:
        go.set()
    await asyncio.wait({listener}, timeout=GUARD)
    assert listener.done()
    # The publisher's client, and the listener's one attempt.
    assert (len(attempts), heard.events) == (2, ["disconnect", "abandoned"])


@pytest.mark.anyio
async def test_an_aclose_during_the_reconnection_backoff_returns() -> None:
    """The listener waits out an hour's backoff: ``aclose`` cancels that wait and returns
    (it did before the threaded bus's close was woken too: the shape the threaded bus had
    is not the asyncio bus's)."""
    connect, attempts = refused(
        lambda port: aioredis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    )

    bus = AsyncRedisBus(connect, "backoff", health=Health(backoff=(3600.0, 3600.0)))
    heard = Heard()
    bus.subscribe(heard)
    bus.listen()
    await async_until(lambda: heard.events == ["disconnect"], "the first attempt failed")
    await asyncio.wait_for(bus.aclose(), GUARD)
    assert (len(attempts), heard.events) == (2, ["disconnect"])
