"""The asyncio bus's ``aclose`` when its listener does not end, or sleeps between two attempts.

The asyncio bus listens from the threaded bus's thread (async_bus.py): its ``aclose`` is that
bus's close, run off the loop, bounded the same way (:meth:`Listening.outlive`: it gives up
after :attr:`Health.close_wait` on the bus's clock). (When the listener was a task of the
loop, a listener whose await swallowed the cancellation held ``aclose`` for ever; that task
is gone, and so is its test: the listener stuck in a chain's callback below is the thread's
equivalent.)
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tiered_cache_redis import AsyncRedisBus
from tiered_cache_redis.listening import Health

from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import waiting_in
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer

from .bus_listeners import Heard, refused

#: Waits of the test's own: a guard against a hang, never a measure.
GUARD = 30.0
#: Past the close's wait on the bus's clock (a few of its 1 s timeouts).
PAST_THE_BOUND = 3600.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sync_client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))


@pytest.mark.anyio
async def test_an_aclose_whose_listener_is_stuck_in_a_callback_gives_up(
    redis_server: RedisServer,
) -> None:
    """The listening thread held in a chain's callback (the close's wake cannot reach it):
    ``aclose`` returns once :attr:`Health.close_wait` has passed on the bus's clock, the
    listener left to end by itself."""
    clock = FakeClock(1000.0)
    bus = AsyncRedisBus(
        lambda: aioredis.Redis.from_url(redis_server.url),
        "stuck-async",
        listen_with=lambda: redis.Redis.from_url(redis_server.url),
        health=Health(interval=1.0, timeout=1.0, poll=0.05, clock=clock),
    )
    heard = Heard(hold=True)
    bus.subscribe(heard)
    assert await bus.wait_subscribed(GUARD)
    publisher = redis.Redis.from_url(redis_server.url)
    publisher.publish("stuck-async", b'{"s":"other","n":1,"k":["k"]}')
    publisher.close()
    await async_until(heard.inside.is_set, "the listener held in its callback")
    closing = asyncio.get_running_loop().create_task(bus.aclose())
    try:
        thread = bus._listening._thread
        assert thread is not None

        def close_waiting() -> bool:
            return any(
                waiting_in(closer, "close")
                for closer in threading.enumerate()
                if closer is not thread and closer is not threading.current_thread()
            )

        await async_until(close_waiting, "the close waiting for its listener")
        clock.advance(PAST_THE_BOUND)
        done, _ = await asyncio.wait({closing}, timeout=GUARD)
        assert closing in done, "aclose() never returned: its listener is stuck"
        await closing
        assert thread.is_alive()  # left to end by itself
    finally:
        heard.go.set()
    await asyncio.to_thread(thread.join, GUARD)
    assert not thread.is_alive()
    assert heard.events[-1] == "abandoned"


@pytest.mark.anyio
async def test_an_aclose_during_the_reconnection_backoff_returns() -> None:
    """The listener waits out an hour's backoff: ``aclose`` cuts that pause short and returns
    (the threaded bus's close, composed)."""
    connect, attempts = refused(sync_client)

    bus = AsyncRedisBus(
        lambda: aioredis.Redis(host="127.0.0.1", port=1),  # the publisher: never used
        "backoff",
        listen_with=connect,
        health=Health(backoff=(3600.0, 3600.0)),
    )
    heard = Heard()
    bus.subscribe(heard)
    await async_until(lambda: heard.events == ["disconnect"], "the first attempt failed")
    await asyncio.wait_for(bus.aclose(), GUARD)
    # The threaded bus's own (unused) publisher's client, and the listener's one attempt.
    assert (len(attempts), heard.events) == (2, ["disconnect"])
