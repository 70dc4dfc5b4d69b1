"""An asyncio chain whose event loop was closed by hand (``loop.close()`` without
``shutdown_asyncgens``) and which goes on on a new loop, serving memory hits only: nothing of
the bus runs on those, so the dead listener went unnoticed, the bus "connected" and the memory
trusted after other processes' writes, until the chain's next miss or write."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.bus_chains import bus_chain_settings
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.loops import collected_unclosed
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import RedisServer


async def heard(chain: AsyncTieredCache, within: float = 10.0) -> bool:
    """Whether ``chain``'s bus is connected (subscribed) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while chain.stats()["bus"] != "connected" and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return bool(chain.stats()["bus"] == "connected")


def filled_on_a_loop_closed_by_hand(
    chains: list[AsyncTieredCache],
    key: str,
    then: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Each of ``chains`` reads ``key`` ("old", from the source) and hears the bus, on a loop
    run by hand; ``then()`` runs there next; the loop is then closed without its end (the
    listener never runs again)."""

    async def load() -> str:
        return "old"

    async def fill() -> None:
        for chain in chains:
            assert await chain.get(key, load) == "old"
            assert await heard(chain)
        if then is not None:
            await then()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(fill())
    loop.close()  # no shutdown_asyncgens


@contextlib.contextmanager
def a_reader_and_a_writer(
    redis_server: RedisServer, namespace: str
) -> Iterator[tuple[AsyncTieredCache, TieredCache]]:
    """An asyncio chain that reads, and another process's chain (threaded) that writes, on
    one Redis and one channel; what a loop closed by hand in the block leaves is collected
    quietly after it."""
    settings = bus_chain_settings(redis_server.url, namespace)
    writer = TieredCache.from_config(**settings)
    try:
        with collected_unclosed():
            yield AsyncTieredCache.from_config(**settings), writer
    finally:
        writer.close()


def until_heard(chain: AsyncTieredCache, messages: int) -> None:
    """Wait until ``chain`` has heard ``messages`` of the others': the bus listens from its
    thread, whatever the loops do, and delivers within its delay (a closed loop took the bus
    down when it listened from a task of that loop, and the reads went to Redis at once)."""
    until(lambda: chain.stats()["bus_received"] >= messages, f"{messages} message(s) heard")


def read_on_a_new_loop(reads: list[tuple[AsyncTieredCache, str]]) -> list[Any]:
    """What each ``(chain, key)`` of ``reads`` reads, in turn, on a loop of ``asyncio.run``
    (each read within 10 s: a guard), the chains then closed."""

    async def main() -> list[Any]:
        seen = [await asyncio.wait_for(chain.get(key), 10) for chain, key in reads]
        for chain in {id(chain): chain for chain, _ in reads}.values():
            await chain.aclose()
        return seen

    return asyncio.run(main())


@contextlib.contextmanager
def a_reader_that_heard_a_write(
    redis_server: RedisServer, namespace: str
) -> Iterator[AsyncTieredCache]:
    """A reader that filled "k" on a loop closed by hand, and has heard since that another
    process wrote "new" to it."""
    with a_reader_and_a_writer(redis_server, namespace) as (reader, writer):
        filled_on_a_loop_closed_by_hand([reader], "k")
        writer.set("k", "new")
        until_heard(reader, 1)
        yield reader


def test_memory_hits_on_the_next_loop_see_another_processs_write(
    redis_server: RedisServer, namespace: str
) -> None:
    with a_reader_that_heard_a_write(redis_server, namespace) as reader:
        # failed: ['old', 'old'], the bus "connected" (two memory hits)
        assert read_on_a_new_loop([(reader, "k"), (reader, "k")]) == ["new", "new"]


def test_every_chain_on_a_shared_bus_sees_another_processs_write(
    redis_server: RedisServer, namespace: str
) -> None:
    with a_reader_and_a_writer(redis_server, namespace) as (first, writer):
        # One bus, two chains (as a service's two caches of one namespace).
        second = AsyncTieredCache(first.tiers, ttl=600, bus=first._async_bus, namespace=namespace)
        filled_on_a_loop_closed_by_hand([first, second], "k")
        # The bus listens from its thread: the loop's close silences nothing.
        assert [first.stats()["bus"], second.stats()["bus"]] == ["connected", "connected"]
        writer.set("k", "new")
        until_heard(first, 1)
        until_heard(second, 1)
        assert read_on_a_new_loop([(first, "k"), (second, "k")]) == ["new", "new"]


def test_a_child_forked_after_the_close_sees_another_processs_write(
    redis_server: RedisServer, namespace: str
) -> None:
    with a_reader_that_heard_a_write(redis_server, namespace) as reader:
        assert in_a_child(lambda: read_on_a_new_loop([(reader, "k")]), 30) == ["new"]
        assert read_on_a_new_loop([(reader, "k")]) == ["new"]


def test_a_fill_in_flight_as_its_loop_is_closed_is_not_waited_for_on_the_next(
    redis_server: RedisServer, namespace: str
) -> None:
    """The loop is closed while a miss of "k2" awaits its load, which never ends: the next
    loop's read of "k2" joined that flight, and waited for it for ever."""
    loading = asyncio.Event()
    pending: list[asyncio.Task[Any]] = []

    async def hang() -> str:
        loading.set()
        await asyncio.Event().wait()
        return "never"

    with a_reader_and_a_writer(redis_server, namespace) as (reader, writer):

        async def a_miss_loading() -> None:
            pending.append(asyncio.get_running_loop().create_task(reader.get("k2", hang)))
            await loading.wait()

        filled_on_a_loop_closed_by_hand([reader], "k", a_miss_loading)
        assert not pending.pop().done()
        # The task is let go of here, inside the block, so that the block's collection frees
        # it: held to the test's end, it was freed by a later collection, and asyncio's "Task
        # was destroyed but it is pending!" went to a later test's log (failing one that looks).
        writer.set("k", "new")
        writer.set("k2", "new2")
        until_heard(reader, 2)
        # failed: TimeoutError (the read of "k2" joined the flight of the closed loop)
        assert read_on_a_new_loop([(reader, "k"), (reader, "k2")]) == ["new", "new2"]
