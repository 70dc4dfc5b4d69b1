"""The one counter of a Redis tier's calls on the wire (:mod:`tiered_cache_redis.in_flight`),
for both tiers: counted by owner (a thread, a task), refused once closing, waited for by close.

The closes of whole chains under traffic are in test_redis_close_in_flight.py; these ask the
counter itself, with no server and no timing (events order the threads)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tiered_cache_redis.in_flight import CallsInFlight, current_task


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_close_waits_for_a_call_of_another_thread_and_refuses_new_ones() -> None:
    calls = CallsInFlight("redis", threading.get_ident)
    inside, leave, closed = threading.Event(), threading.Event(), threading.Event()

    def one_call() -> None:
        with calls:
            inside.set()
            leave.wait()

    caller = threading.Thread(target=one_call)
    caller.start()
    inside.wait()
    closer = threading.Thread(target=lambda: (calls.close(), closed.set()))
    closer.start()
    # The closer is waiting (the call holds it): a new call is refused meanwhile.
    while not calls._closing:
        threading.Event().wait(0.001)
    with pytest.raises(RuntimeError, match="tier 'redis' is closed"), calls:
        pass
    assert not closed.is_set()
    leave.set()
    closer.join()
    caller.join()
    assert closed.is_set()


def test_calls_of_one_thread_nest_and_a_call_that_raised_is_counted_out() -> None:
    calls = CallsInFlight("redis", threading.get_ident)
    with calls, calls:
        assert calls._running == {threading.get_ident(): 2}
    with pytest.raises(KeyError), calls:
        raise KeyError("the call failed")
    assert calls._running == {}
    calls.close()  # nothing running: returns at once


@pytest.mark.anyio
async def test_aclose_waits_for_the_tasks_running_calls_but_not_for_itself() -> None:
    calls = CallsInFlight("redis", current_task)
    inside, leave = asyncio.Event(), asyncio.Event()
    ended: list[str] = []

    async def one_call() -> None:
        with calls:
            inside.set()
            await leave.wait()
        ended.append("call")

    async def close_inside_a_call() -> None:
        with calls:  # the closing task's own call is not waited for
            await calls.aclose()
        ended.append("close")

    caller = asyncio.create_task(one_call())
    await inside.wait()
    closer = asyncio.create_task(close_inside_a_call())
    for _ in range(10):
        await asyncio.sleep(0)
    assert ended == []  # the closer waits for the caller's task
    with pytest.raises(RuntimeError, match="is closed"), calls:
        pass
    leave.set()
    await asyncio.gather(caller, closer)
    assert ended == ["call", "close"]
    assert calls._running == {}
