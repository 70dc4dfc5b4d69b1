"""An asyncio chain used on a loop run by hand and LEFT OPEN (``run_until_complete``, never
closed, never run again), then on a loop of ``asyncio.run``: the first loop neither runs nor
ends, so nothing of it (a task, a connection) serves the second one."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from tiered_cache_redis import AsyncRedisBus

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.bus_chains import bus_chain_settings
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.loops import left_open
from tiered_cache.testing.polling import async_eventually, async_until
from tiered_cache.testing.servers import RedisServer


@contextlib.contextmanager
def a_reader_and_a_writer(
    redis_server: RedisServer, namespace: str
) -> Iterator[tuple[AsyncTieredCache, TieredCache]]:
    """An asyncio chain that reads, and another process's chain (threaded) that writes, on
    one Redis and one channel."""
    settings = bus_chain_settings(redis_server.url, namespace)
    writer = TieredCache.from_config(**settings)
    try:
        yield AsyncTieredCache.from_config(**settings), writer
    finally:
        writer.close()


def filled_on(loop: asyncio.AbstractEventLoop, chain: AsyncTieredCache, *keys: str) -> None:
    """``chain`` reads each of ``keys`` ("old", from the source) on ``loop``, run by hand
    until it hears the bus; the loop is then left open."""

    async def fill() -> None:
        for key in keys:
            assert await chain.get(key, load_old) == "old"
        assert await async_eventually(lambda: chain.stats()["bus"] == "connected")

    loop.run_until_complete(fill())


async def load_old() -> str:
    return "old"


def on_a_new_loop(chain: AsyncTieredCache, main: Callable[[], Awaitable[Any]]) -> Any:
    """``main()`` on a loop of ``asyncio.run``, the chain closed there after it."""

    async def run() -> Any:
        try:
            return await main()
        finally:
            await chain.aclose()

    return asyncio.run(run())


def test_memory_hits_on_the_next_loop_see_another_processs_write(
    redis_server: RedisServer, namespace: str
) -> None:
    with left_open() as first, a_reader_and_a_writer(redis_server, namespace) as (reader, writer):
        filled_on(first, reader, "k")
        writer.set("k", "new")

        async def main() -> bool:
            # Within the bus's delivery bound (a local Redis: well under a second), the
            # chain must stop serving "old" from its memory.
            return await async_eventually(_new(reader, "k"), within=5.0)

        assert on_a_new_loop(reader, main)


def _new(chain: AsyncTieredCache, key: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await chain.get(key, load_old) == "new")

    return check


def test_the_bus_state_on_the_next_loop_is_not_connected_while_nothing_listens(
    redis_server: RedisServer, namespace: str
) -> None:
    """Either the bus listens for the next loop (and then a write is heard: the test above),
    or the chain must not say "connected"."""
    with left_open() as first, a_reader_and_a_writer(redis_server, namespace) as (reader, writer):
        filled_on(first, reader, "k")

        async def main() -> list[Any]:
            await reader.get("k", load_old)
            writer.set("k", "new")
            heard = await async_eventually(_new(reader, "k"), within=5.0)
            return [reader.stats()["bus"], heard]

        assert on_a_new_loop(reader, main) == ["connected", True]


def test_a_miss_and_a_write_on_the_next_loop_use_redis_without_errors(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The Redis tier's connections are the first loop's: a call on the next loop must move
    the tier there (as for a closed loop), not fail in redis-py (``attached to a different
    loop``) and read through to the source."""
    loads: list[str] = []

    async def load(key: str) -> str:
        loads.append(key)
        return "from-source"

    with left_open() as first, a_reader_and_a_writer(redis_server, namespace) as (reader, writer):
        filled_on(first, reader, "k")
        writer.set("shared", "in-redis")  # in Redis, not in the reader's memory

        async def main() -> list[Any]:
            got = await reader.get("shared", lambda: load("shared"))
            await reader.set("mine", "written")
            back = writer.get("mine")
            return [got, back, reader.stats()["tiers"][1]["errors"]]

        with caplog.at_level(logging.WARNING):
            seen = on_a_new_loop(reader, main)
        assert seen == ["in-redis", "written", 0]
        assert loads == []


# -- an operator's bad day, with the first loop left open


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own: it is stopped and woken."""
    with RedisServer() as private:
        yield private


def test_a_loop_blocked_by_user_code_serves_no_copy_written_meanwhile(
    redis_server: RedisServer, namespace: str
) -> None:
    """The loop blocked for a second by CPU-bound user code while another process writes:
    the first read after the block must not be the old copy. A listener that is a task of
    the loop reads nothing while the loop is blocked, and the read after it runs before it."""
    with a_reader_and_a_writer(redis_server, namespace) as (reader, writer):

        async def main() -> str:
            assert await reader.get("k", load_old) == "old"
            assert await async_eventually(lambda: reader.stats()["bus"] == "connected")
            writer.set("k", "new")  # another process's write, as this loop is blocked
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # user code that never yields
                pass
            return str(await reader.get("k", load_old))

        assert on_a_new_loop(reader, main) == "new"


def test_redis_stopped_under_load_while_the_first_loop_is_left_open(
    server: RedisServer, namespace: str
) -> None:
    """SIGSTOP of the redis-server while the chain reads on the second loop, the first left
    open: the bus goes down (its PING unanswered), the memory is not served as fresh while
    it is down, nothing raises; once woken the bus is back and another process's write is
    heard."""
    settings = bus_chain_settings(
        server.url,
        namespace,
        bus={"health_check_interval": "200ms", "timeout": "300ms"},
        timeout="300ms",
    )
    writer = TieredCache.from_config(**settings)
    reader = AsyncTieredCache.from_config(**settings)
    truth = {"k": "old"}

    async def load_truth() -> str:
        return truth["k"]

    try:
        with left_open() as first:
            filled_on(first, reader, "k")

            async def main() -> list[Any]:
                assert server.pid is not None
                os.kill(server.pid, signal.SIGSTOP)
                try:
                    went_down = await async_eventually(
                        lambda: reader.stats()["bus"] == "down", within=10
                    )
                    # Reads under load while it is stopped: no error reaches the caller.
                    await asyncio.gather(*(reader.get(f"x{i}", load_old) for i in range(20)))
                finally:
                    os.kill(server.pid, signal.SIGCONT)
                back = await async_eventually(
                    lambda: reader.stats()["bus"] == "connected", within=10
                )
                truth["k"] = "new"  # the source has it (the tier's breaker may be open)
                await asyncio.to_thread(writer.set, "k", "new")

                async def heard() -> bool:
                    return bool(await reader.get("k", load_truth) == "new")

                return [
                    went_down,
                    back,
                    await async_eventually(heard, within=5.0),
                    reader.stats()["tiers"][1]["loops_left_open"],
                ]

            assert on_a_new_loop(reader, main) == [True, True, True, 1]
    finally:
        writer.close()


def test_two_loops_left_open_in_turn_use_redis_without_errors(
    redis_server: RedisServer, namespace: str
) -> None:
    """Two loops run by hand in turn, both left open between their runs: each move closes the
    other loop's connections (no error of the tier, no source load, no ResourceWarning once
    both loops end), and every read sees the last write."""
    loads: list[str] = []

    async def load() -> str:
        loads.append("load")
        return "from-source"

    with (
        left_open() as one,
        left_open() as two,
        a_reader_and_a_writer(redis_server, namespace) as (reader, writer),
    ):
        writer.set("k", "v0")
        for turn in range(6):
            loop = one if turn % 2 == 0 else two

            async def step(turn: int = turn) -> None:
                assert await reader.get("k", load) == f"v{turn}"
                await reader.set("k", f"v{turn + 1}")

            loop.run_until_complete(step())
        assert writer.get("k") == "v6"
        stats = reader.stats()
        assert [stats["tiers"][1]["errors"], loads] == [0, []]
        assert stats["tiers"][1]["loops_left_open"] == 5
        assert stats.get("bus_publish_errors", 0) == 0
        one.run_until_complete(reader.aclose())


def test_a_child_forked_with_the_first_loop_left_open_hears_the_writes(
    redis_server: RedisServer, namespace: str
) -> None:
    """Forked after the first loop was left open: the child's bus listens on its own thread
    and its loop uses Redis without the parent's connections."""
    with left_open() as first, a_reader_and_a_writer(redis_server, namespace) as (reader, writer):
        filled_on(first, reader, "k")
        writer.set("k2", "in-redis")

        def child() -> list[Any]:
            async def main() -> list[Any]:
                await async_until(lambda: reader.stats()["bus"] == "connected", "subscribed")
                await asyncio.to_thread(writer.set, "k", "new")
                heard = await async_eventually(_new(reader, "k"), within=5.0)
                return [heard, await reader.get("k2", load_old)]

            return list(on_a_new_loop(reader, main))

        assert in_a_child(child, 60) == [True, "in-redis"]


def test_a_close_from_another_thread_while_the_first_loop_is_left_open(
    redis_server: RedisServer, namespace: str
) -> None:
    """``aclose()`` on another thread's loop while the loop the chain ran on is left open:
    the listening thread ends, the publisher and the tier move to that loop and close."""
    with left_open() as first, a_reader_and_a_writer(redis_server, namespace) as (reader, _):
        filled_on(first, reader, "k")
        bus = reader._async_bus
        assert isinstance(bus, AsyncRedisBus)
        listening = bus._listening._thread
        assert listening is not None and listening.is_alive()
        closing = threading.Thread(target=asyncio.run, args=(reader.aclose(),))
        closing.start()
        closing.join(30)
        assert not closing.is_alive()
        assert not listening.is_alive()
        assert reader.stats()["bus"] == "closed"
        raw = redis.Redis.from_url(redis_server.url)
        try:
            assert dict(raw.pubsub_numsub(bus.channel)) == {bus.channel.encode(): 1}
        finally:
            raw.close()


def test_redis_killed_and_restarted_while_the_first_loop_is_left_open(
    server: RedisServer, namespace: str
) -> None:
    """The redis-server killed while the chain runs on the second loop, the first left open:
    the bus goes down, the memory's copy is not served (the source's value is read, no
    error reaches the caller); restarted on its port, the bus is back."""
    settings = bus_chain_settings(
        server.url,
        namespace,
        bus={"health_check_interval": "200ms", "timeout": "300ms"},
        timeout="300ms",
    )
    reader = AsyncTieredCache.from_config(**settings)
    truth = {"k": "old"}

    async def load_truth() -> str:
        return truth["k"]

    with left_open() as first:
        filled_on(first, reader, "k")

        async def main() -> list[Any]:
            truth["k"] = "new"  # changed behind the cache while Redis is down
            server.kill()
            went_down = await async_eventually(lambda: reader.stats()["bus"] == "down", 10)
            read = [await reader.get("k", load_truth) for _ in range(5)]
            server.start()
            back = await async_eventually(lambda: reader.stats()["bus"] == "connected", 15)
            return [went_down, read, back]

        assert on_a_new_loop(reader, main) == [True, ["new"] * 5, True]


def test_a_close_on_a_new_loop_after_the_first_was_left_open_closes_the_tier_quietly(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's shutdown ``asyncio.run(cache.aclose())`` after its work ran on a loop
    left open: the tier moves off that loop as any call of it does, and closes. Seen
    failing: its close tried the first loop's connections (``got Future attached to a
    different loop``), logged as a failure of the tier."""
    with left_open() as first, a_reader_and_a_writer(redis_server, namespace) as (reader, _):
        filled_on(first, reader, "k")
        caplog.set_level(logging.WARNING)
        asyncio.run(reader.aclose())
    said = [record.getMessage() for record in caplog.records]
    assert not any("different loop" in line for line in said), said
    tier = reader.stats()["tiers"][1]
    assert (tier["loops_left_open"], tier["errors"]) == (1, 0)


def test_the_moves_off_a_loop_left_open_are_exported(
    redis_server: RedisServer, namespace: str
) -> None:
    """``loops_left_open`` is in the Redis tier's ``stats()``; the exporters publish it, as
    ``tier_loops_left_open`` (Prometheus: ``tiered_cache_tier_loops_left_open_total``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from tiered_cache.contrib.prometheus import TieredCacheCollector
    from tiered_cache.contrib.series import series

    with left_open() as first, a_reader_and_a_writer(redis_server, namespace) as (reader, _):
        filled_on(first, reader, "k")
        asyncio.run(reader.aclose())
    published = {item.spec.name: item.samples for item in series(reader.stats())}
    assert published.get("tier_loops_left_open") == [
        ({"namespace": namespace, "tier": "redis"}, 1.0)
    ]
    registry = CollectorRegistry()
    registry.register(TieredCacheCollector(reader))  # type: ignore[arg-type]
    scraped = generate_latest(registry).decode()
    line = f'tiered_cache_tier_loops_left_open_total{{namespace="{namespace}",tier="redis"}} 1.0'
    assert line in scraped.splitlines()


def test_a_loop_left_open_then_closed_by_hand_leaves_no_socket_to_the_collector(
    redis_server: RedisServer, namespace: str
) -> None:
    """The loop left open is closed at exit by hand, without running again (a warm-up loop
    closed without ``shutdown_asyncgens``): the connections the tier and the bus's publisher
    closed off it, whose sockets that loop was to close when it ran, are not left open for
    the collector to find (each an ``unclosed`` socket and transport ``ResourceWarning``)."""
    first = asyncio.new_event_loop()
    with a_reader_and_a_writer(redis_server, namespace) as (reader, _):
        filled_on(first, reader, "k")

        async def main() -> list[Any]:
            got = await reader.get("absent", load_old)  # the tier moves
            await reader.set("mine", "written")  # the publisher moves
            return [got, reader.stats()["tiers"][1]["loops_left_open"]]

        assert on_a_new_loop(reader, main) == ["old", 1]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first.close()  # by hand, without running
        del first
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []


def test_loops_left_open_and_dropped_unclosed_are_still_collected(
    redis_server: RedisServer, namespace: str
) -> None:
    """A loop run by hand for each call, left open and dropped without a close (a sync
    wrapper's pattern): the chain moves off each, closing its connections. The transports
    kept to be finished should that loop be closed first were held in a table keyed weakly
    by the loop, but each transport holds its loop: no such loop was ever collected (nor
    closed by its ``__del__``), each keeping its selector and sockets open for the process's
    life. Seen failing: 3 of 3 loops alive."""
    seen: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    with a_reader_and_a_writer(redis_server, namespace) as (reader, _):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # each unclosed loop's, collected
            for n in range(4):
                loop = asyncio.new_event_loop()
                assert loop.run_until_complete(reader.get(f"k{n}", load_old)) == "old"
                seen.append(weakref.ref(loop))
                del loop
                gc.collect()
        alive = [ref for ref in seen[:-1] if ref() is not None]
        assert (len(alive), reader.stats()["tiers"][1]["loops_left_open"]) == (0, 3)
        last = seen[-1]()
        assert last is not None
        last.run_until_complete(reader.aclose())
        last.run_until_complete(last.shutdown_asyncgens())
        last.close()
