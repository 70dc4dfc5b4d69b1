"""The asyncio chain's flights (:class:`~tiered_cache.async_flight.AsyncFlight`) on their own:
a coroutine that comes to wait after the flight landed, the waiters of another thread's event
loop, and a loop closed while it waited. The chain reaches these only in races (a caller joins
a flight, and its leader lands before the caller awaits it), so they are shown here, in plain
steps."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tiered_cache.async_flight import AsyncFlight

OUTCOMES = ["result", "error"]


def landed(outcome: str) -> tuple[AsyncFlight, Any, BaseException | None]:
    """A flight, and what it lands with."""
    if outcome == "result":
        return AsyncFlight(), "value", None
    return AsyncFlight(), None, ValueError("the source failed")


def expected(result: Any, error: BaseException | None) -> Any:
    return seen_as(error) if error is not None else result


def seen_as(error: BaseException) -> tuple[type[BaseException], tuple[Any, ...]]:
    """An error as a waiter sees it: each raises a copy of the flight's, its own."""
    return type(error), error.args


async def raised_by(flight: AsyncFlight) -> Any:
    """What ``wait`` gives: the result, or the error it raises (bounded: a wait that is never
    woken fails the test rather than hanging it)."""
    try:
        return await asyncio.wait_for(flight.wait(), 5)
    except ValueError as exc:
        return exc


async def outcome_of(flight: AsyncFlight) -> Any:
    """What ``wait`` gives, an error :func:`seen_as` a waiter sees it."""
    outcome = await raised_by(flight)
    return seen_as(outcome) if isinstance(outcome, ValueError) else outcome


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_a_coroutine_that_waits_after_the_flight_landed_takes_its_outcome(outcome: str) -> None:
    """A caller that joined the flight, then awaited it once its leader had landed it."""
    flight, result, error = landed(outcome)
    flight.join()
    flight.land(result, error)

    async def late() -> tuple[Any, Any]:
        first = await outcome_of(flight)
        await flight.settle()  # whatever the outcome: the flight's error is not this caller's
        return first, await outcome_of(flight)

    assert asyncio.run(late()) == (expected(result, error),) * 2


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_settle_waits_for_a_flight_that_fails_without_raising_its_error(outcome: str) -> None:
    flight, result, error = landed(outcome)

    async def behind() -> list[Any]:
        settled = asyncio.create_task(flight.settle())
        waiting = asyncio.create_task(outcome_of(flight))
        await asyncio.sleep(0)  # both wait
        assert not settled.done()
        flight.land(result, error)
        return await asyncio.gather(settled, waiting)

    assert asyncio.run(behind()) == [None, expected(result, error)]


def test_the_waiters_of_a_failed_flight_each_raise_an_error_of_their_own() -> None:
    """Every waiter raised the flight's exception object itself (its loop's future's): one
    waiter's raise in an except block made what it handled the ``__context__`` of the error
    the leader and every other waiter held."""
    flight = AsyncFlight()
    error = ValueError("the source failed")

    async def handling_its_own() -> Any:
        try:
            raise KeyError("the waiter's own")
        except KeyError:
            return await raised_by(flight)

    async def waiters() -> list[Any]:
        flight.join()
        flight.join()
        first = asyncio.create_task(handling_its_own())
        second = asyncio.create_task(raised_by(flight))
        await asyncio.sleep(0)  # both wait
        flight.land(None, error)
        return await asyncio.gather(first, second)

    first, second = asyncio.run(waiters())
    assert error.__context__ is None  # the leader's
    assert second.__context__ is None
    assert isinstance(first.__context__, KeyError)
    assert [seen_as(got) for got in (first, second)] == [seen_as(error)] * 2


@pytest.mark.parametrize("landing", ["in another loop", "outside any loop"])
@pytest.mark.parametrize("outcome", OUTCOMES)
def test_a_flight_landed_elsewhere_wakes_the_waiters_of_another_threads_loop(
    outcome: str, landing: str
) -> None:
    """The other thread's three waiters share one future, settled on their own loop."""
    flight, result, error = landed(outcome)
    waiting = threading.Event()
    seen: list[Any] = []

    def other_thread() -> None:
        async def waiters() -> list[Any]:
            tasks = [asyncio.create_task(outcome_of(flight)) for _ in range(3)]
            await asyncio.sleep(0)  # each waits
            waiting.set()
            return await asyncio.gather(*tasks)

        seen.extend(asyncio.run(waiters()))

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert waiting.wait(5)

    async def land() -> None:
        flight.land(result, error)

    if landing == "in another loop":
        asyncio.run(land())
    else:
        flight.land(result, error)
    thread.join(10)
    assert not thread.is_alive()
    assert seen == [expected(result, error)] * 3


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_a_loop_closed_while_it_waited_does_not_keep_the_outcome_from_the_others(
    outcome: str,
) -> None:
    """A loop run by hand whose waiter was cancelled, then closed: its future stays with the
    flight, and delivering to it raises (the loop is closed); the loops after it still get
    the outcome."""
    flight, result, error = landed(outcome)
    gone = asyncio.new_event_loop()
    waiter = gone.create_task(flight.wait())
    gone.run_until_complete(asyncio.sleep(0))  # it waits
    waiter.cancel()
    gone.run_until_complete(asyncio.gather(waiter, return_exceptions=True))
    gone.close()

    async def here() -> Any:
        waiting = asyncio.create_task(outcome_of(flight))
        await asyncio.sleep(0)
        flight.land(result, error)
        return await waiting

    assert asyncio.run(here()) == expected(result, error)
