"""The threads a blocking call is awaited from (tiered_cache/own_thread.py): kept and reused
while the calls do not overlap, a new one beside a call stuck, all daemons, ended by the close.
Waits are guards against a hang, never measures."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.bus import Invalidation, LocalBus
from tiered_cache.own_thread import OwnThreads
from tiered_cache.testing.polling import eventually

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


def test_a_worker_with_no_call_for_its_idle_time_ends_by_itself() -> None:
    """Kept until the close only, the workers of an owner never closed waited for good."""
    name = f"{NAME}-idle"
    threads = OwnThreads(name, idle=0.05)

    async def main() -> threading.Thread:
        return await threads.run(threading.current_thread)

    thread = asyncio.run(main())
    thread.join(timeout=10)  # a guard, not a measure: never closed, it ends by itself
    assert not thread.is_alive()
    assert asyncio.run(main()) is not thread  # the next call starts a worker again
    threads.close()


def test_calls_racing_a_worker_ending_on_its_idle_time_each_run() -> None:
    """A call handed to a worker whose wait ran out meanwhile is run, never left queued."""
    name = f"{NAME}-race"
    threads = OwnThreads(name, idle=0.0005)

    async def main() -> list[int]:
        answers = []
        for n in range(300):
            if n % 3 == 0:
                await asyncio.sleep(0.0005)  # about the idle time: a worker may be ending
            calls = [threads.run(int, str(n)) for _ in range(n % 4 + 1)]
            answers += await asyncio.wait_for(asyncio.gather(*calls), timeout=10)
        return answers

    answers = asyncio.run(main())
    assert len(answers) == sum(n % 4 + 1 for n in range(300))
    threads.close()


def test_the_publishing_threads_of_asyncio_chains_dropped_unclosed_end() -> None:
    """Chains dropped without aclose() left their publishing threads waiting for good (20
    chains, three publishes at once each: 58 threads): a chain collected closes them."""
    names = [f"dropped-{n}" for n in range(20)]

    def build(namespace: str) -> None:
        cache = AsyncTieredCache([MemoryTier(max_entries=10)], namespace=namespace, bus=LocalBus())

        async def main() -> None:
            await asyncio.gather(*(cache.set(f"k{n}", n) for n in range(3)))

        asyncio.run(main())
        assert workers(f"tiered-cache-publish:{namespace}") != []

    for namespace in names:
        build(namespace)  # and dropped, never closed
    gc.collect()
    left = [t for name in names for t in workers(f"tiered-cache-publish:{name}")]
    eventually(lambda: not any(t.is_alive() for t in left), 10.0)  # a guard, not a measure
    assert len([t for t in left if t.is_alive()]) == 0
