"""The threads a blocking call is awaited from (tiered_cache/own_thread.py): kept and reused
while the calls do not overlap, a new one beside a call stuck, all daemons, ended by the close.
Waits are guards against a hang, never measures."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.bus import Invalidation, LocalBus
from tiered_cache.own_thread import OwnThreads

NAME = "own-thread-test"


def workers(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_a_call_returns_or_raises_through_the_await() -> None:
    threads = OwnThreads(NAME)

    def fail() -> None:
        raise KeyError("k")

    async def main() -> int:
        with pytest.raises(KeyError):
            await threads.run(fail)
        return await threads.run(int, "42")

    assert asyncio.run(main()) == 42
    threads.close()


def test_calls_one_after_another_share_one_daemon_thread() -> None:
    threads = OwnThreads(NAME)

    async def main() -> set[threading.Thread]:
        return {await threads.run(threading.current_thread) for _ in range(5)}

    (thread,) = asyncio.run(main())
    assert thread.daemon
    assert thread.name == NAME
    threads.close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_call_stuck_does_not_hold_the_next_one_back() -> None:
    name = f"{NAME}-stuck"  # its own: the other tests' threads may not have ended yet
    threads = OwnThreads(name)
    stuck = threading.Event()

    async def main() -> tuple[threading.Thread, threading.Thread]:
        first = asyncio.ensure_future(threads.run(stuck.wait))
        await asyncio.sleep(0)
        second = await asyncio.wait_for(threads.run(threading.current_thread), timeout=10)
        third = await threads.run(threading.current_thread)
        assert not first.done()
        first.cancel()  # the wait, not the call
        return second, third

    second, third = asyncio.run(main())
    assert second is third  # the second's thread, idle again; the first's still in its call
    assert len(workers(name)) == 2
    threads.close()
    second.join(timeout=10)
    assert workers(name) != [] and not second.is_alive()  # the busy one ends after its call
    stuck.set()
    for thread in workers(name):
        thread.join(timeout=10)
    assert workers(name) == []


def test_a_call_after_the_close_still_runs() -> None:
    threads = OwnThreads(NAME)
    threads.close()

    async def main() -> threading.Thread:
        return await threads.run(threading.current_thread)

    thread = asyncio.run(main())
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_an_asyncio_chain_publishes_on_a_threaded_bus_from_one_thread_its_close_ends() -> None:
    bus = LocalBus()
    publishers: list[threading.Thread] = []
    publish = bus.publish

    def noted(message: Invalidation) -> None:
        publishers.append(threading.current_thread())
        publish(message)

    bus.publish = noted  # type: ignore[method-assign]
    cache = AsyncTieredCache([MemoryTier(max_entries=10)], namespace="hop", bus=bus)

    async def main() -> None:
        for n in range(5):
            await cache.set(f"k{n}", n)
        await cache.aclose()

    asyncio.run(main())
    (thread,) = set(publishers)
    assert thread.name == "tiered-cache-publish:hop" and thread.daemon
    thread.join(timeout=10)
    assert not thread.is_alive()
