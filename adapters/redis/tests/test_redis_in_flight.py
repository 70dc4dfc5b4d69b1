"""The one counter of a Redis tier's calls on the wire (:mod:`tiered_cache_redis.in_flight`),
for both tiers: counted by owner (a thread, a task), refused once closing, waited for by close.

The closes of whole chains under traffic are in test_redis_close_in_flight.py; these ask the
counter itself, with no server and no timing (events order the threads)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Hashable
from typing import Any

import pytest
from tiered_cache_redis.in_flight import CallsInFlight, current_task

from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.polling import until


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
    until(lambda: calls._closing, "the closer waiting for the call")
    with pytest.raises(RuntimeError, match="tier 'redis' is closed"), calls:
        pass
    assert not closed.is_set()
    leave.set()
    closer.join()
    caller.join()
    assert closed.is_set()


def test_a_close_that_stops_waiting_leaves_its_last_act_to_the_last_call_to_end() -> None:
    """``close(within=..., then=...)`` past ``within``: it returns, refusing new calls, and
    ``then`` runs once, on the thread of the last call to end, as that call ends."""
    calls = CallsInFlight("redis", threading.get_ident, kind="bus")
    done: list[str] = []
    leave = {name: threading.Event() for name in ("a", "b")}

    def one_call(name: str) -> None:
        with calls:
            leave[name].wait()
        done.append(name)

    callers = {name: threading.Thread(target=one_call, args=(name,), name=name) for name in leave}
    for caller in callers.values():
        caller.start()
    until(lambda: len(calls._running) == 2, "both calls running")
    calls.close(within=0.0, then=lambda: done.append(f"then, on {threading.current_thread().name}"))
    with pytest.raises(RuntimeError, match="bus 'redis' is closed"), calls:
        pass
    returned = list(done)
    for name in ("a", "b"):
        leave[name].set()
        callers[name].join()
    assert [returned, done] == [[], ["a", "then, on b", "b"]]


def test_a_failing_last_act_left_to_a_call_is_logged_not_raised_into_that_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last act a close left (the bus's: close its publisher) runs as the last call ends,
    on that call's thread: its caller (a publish) did nothing wrong, so the act's error is
    logged there, once, and the call returns as it would have."""
    calls = CallsInFlight("redis", threading.get_ident, kind="bus")
    inside, leave = threading.Event(), threading.Event()
    outcome: list[str] = []

    def one_call() -> None:
        try:
            with calls:
                inside.set()
                leave.wait()
        except Exception as exc:  # what the caller would see
            outcome.append(f"raised {exc!r}")
        else:
            outcome.append("returned")

    def close_publisher() -> None:
        raise ConnectionError("the publisher's close failed")

    caller = threading.Thread(target=one_call)
    caller.start()
    inside.wait()
    calls.close(within=0.0, then=close_publisher)
    caplog.set_level(logging.ERROR, logger="tiered_cache.bus.redis")
    leave.set()
    caller.join()
    assert outcome == ["returned"]
    assert [
        (record.name, record.getMessage(), type(record.exc_info[1]) if record.exc_info else None)
        for record in caplog.records
    ] == [
        (
            "tiered_cache.bus.redis",
            "bus 'redis': closing its client after its last call failed",
            ConnectionError,
        )
    ]


def test_calls_of_one_thread_nest_and_a_call_that_raised_is_counted_out() -> None:
    calls = CallsInFlight("redis", threading.get_ident)
    with calls, calls:
        assert calls._running == {threading.get_ident(): 2}
    with pytest.raises(KeyError), calls:
        raise KeyError("the call failed")
    assert calls._running == {}
    calls.close()  # nothing running: returns at once


@pytest.mark.parametrize("nth", [1, 3], ids=["a call starting", "a nested call ending"])
def test_close_from_a_signal_handler_landing_while_the_count_is_updated_returns(nth: int) -> None:
    """A SIGTERM handler that closes the chain runs on the main thread between two of its
    steps -- possibly while that thread holds the count's own lock, as a call starts or ends.
    With a plain lock the handler's close waited for that lock, held by the frame it
    interrupted, for ever (seen: the child reported nothing). The signal is raised from the
    count's ``nth`` update, which runs under the lock; the handler runs before it returns."""

    def body() -> list[str]:
        calls = CallsInFlight("redis", threading.get_ident)
        seen: list[str] = []

        class SignalOnUpdate(dict[Hashable, int]):
            updates = 0

            def __setitem__(self, key: Hashable, value: int) -> None:
                SignalOnUpdate.updates += 1
                if SignalOnUpdate.updates == nth:
                    signal.raise_signal(signal.SIGUSR1)
                super().__setitem__(key, value)

        def on_signal(signum: int, frame: Any) -> None:
            calls.close()
            seen.append("closed")

        signal.signal(signal.SIGUSR1, on_signal)
        calls._running = SignalOnUpdate()
        with calls:  # updates: this call's start (1)
            if nth == 3:
                with calls:  # the nested call's start (2) and end (3)
                    pass
        seen.append(f"running {len(calls._running)}")
        try:
            with calls:
                pass
        except RuntimeError:
            seen.append("refused")
        return seen

    assert in_a_child(body, timeout=20) == ["closed", "running 0", "refused"]


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
