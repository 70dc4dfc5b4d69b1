"""Two edges of the asyncio chain's event loops, counted (docs/testing.md and docs/async.md).

``loop-end``: a chain of memory -> Redis (a private ``redis-server``) reads 40 keys, the
source changes them, the service leaves 40 ``invalidate`` tasks it never awaits (each given
one turn of the loop) and its ``asyncio.run`` ends. Prints how many keys Redis still holds
with the old value, and the errors of the Redis tier in the next loop.

``two-loops``: one such chain (30 keys, memory of 2 entries) used from two threads at once,
each running its own loop: 210 calls each, a fifth of them a source write and an
``invalidate``, the rest a ``get``. Prints the calls, what they raised, the errors of the
Redis tier, and the keys whose Redis copy is older than the source at the end.

``loop-end-bus``: ``loop-end`` with the Redis bus and another process's chain (a sync one,
its memory filled): also how many keys that process still serves old once it heard the bus,
the subscriptions of the ended loop left open, the tasks destroyed pending, and the publish
errors of the next loop.

``listener-cancel``: a chain of memory -> Redis with the bus reads 20 keys for 3 s while
another process's chain writes them (a new version every 5 ms); 1 s in, every task but the
reader is cancelled, the loop going on (a framework's shutdown that cancels tasks and keeps
the loop): the listener with them. Run twice in a row (two ``asyncio.run``) on one chain.
Prints the reads, those older than a write done more than 1 s before the read began (the
bus's bound, ``max_stale_when_disconnected``), those served from memory, the bus's state at
the loop's last read and its counters.

``left-open``: a chain of memory -> Redis with the bus reads 20 keys on a loop run by hand and
left open; the next loop misses 20 other keys, writes the 20 and closes the chain; the first
loop is then closed by hand without running again. Prints the next loop's errors of the
tier, publish errors, loads, moves off a loop left open, and the ``ResourceWarning``s as the
first loop is closed (sockets closed off it and never finished).

Run: ``.venv/bin/python tools/loop_edges.py
loop-end|loop-end-bus|two-loops|listener-cancel|left-open [RUNS] [--uvloop]`` (``--uvloop``:
each loop a uvloop one, the one run by hand too, if uvloop is installed)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis
from tiered_cache_redis import AsyncRedisTier, make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.testing.bus_chains import bus_chain_settings, subscribed_chain
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, or the same on a uvloop loop (``--uvloop``)."""
    if "--uvloop" not in sys.argv:
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def new_loop() -> asyncio.AbstractEventLoop:
    """A loop to run by hand: asyncio's, or uvloop's (``--uvloop``)."""
    if "--uvloop" not in sys.argv:
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


class DestroyedPending(logging.Handler):
    """Counts the tasks asyncio reports destroyed while pending."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "destroyed but it is pending" in record.getMessage():
            self.count += 1


def chain(
    url: str, namespace: str, source: AsyncDictSource, memory: int
) -> tuple[AsyncTieredCache, AsyncRedisTier]:
    tier = AsyncRedisTier(make_async_client(url, timeout=2.0), namespace=namespace)
    cache = AsyncTieredCache([MemoryTier(max_entries=memory), tier], source, namespace=namespace)
    return cache, tier


def older_in_redis(url: str, tier: AsyncRedisTier, source: AsyncDictSource) -> int:
    """The keys whose Redis copy differs from the source's value."""
    client = redis.Redis.from_url(url)
    try:
        older = 0
        for key, value in source.inner.items.items():
            data = client.get(tier.redis_key(key))
            if isinstance(data, bytes) and tier._stored.decode(key, data, 0.0).value != value:
                older += 1
        return older
    finally:
        client.close()


def loop_end(url: str, run: int) -> str:
    keys = [f"k{i}" for i in range(40)]
    source = AsyncDictSource({key: f"old {key}" for key in keys})
    cache, tier = chain(url, f"loop-end-{run}", source, 100)

    async def warm() -> None:
        for key in keys:
            await cache.get(key)

    async def service() -> None:
        for key in keys:
            source.inner.write(key, "new")
        left = [asyncio.create_task(cache.invalidate(key)) for key in keys]
        await asyncio.sleep(0)
        assert left  # never awaited

    async def next_loop() -> None:
        for key in keys:
            await cache.get(key)

    run_loop(warm())
    run_loop(service())
    older = older_in_redis(url, tier, source)
    run_loop(next_loop())
    errors = cache.stats()["tiers"][1]["errors"]
    run_loop(cache.aclose())
    return f"old in Redis {older} of {len(keys)}; errors of the tier in the next loop {errors}"


def loop_end_bus(url: str, run: int) -> str:
    keys = [f"k{i}" for i in range(40)]
    settings = bus_chain_settings(url, f"loop-end-bus-{run}", bus={"url": url}, timeout="2s")
    truth = {key: f"old {key}" for key in keys}
    other = subscribed_chain(settings)
    for key in keys:
        other.get(key, lambda key=key: truth[key])
    cache = AsyncTieredCache.from_config(**settings)
    assert cache._bus_link is not None
    bus = cache._bus_link.bus
    destroyed = DestroyedPending()
    logging.getLogger("asyncio").addHandler(destroyed)

    async def service() -> None:
        assert await bus.wait_subscribed(10)  # type: ignore[attr-defined]
        for key in keys:
            truth[key] = "new"
        left = [asyncio.create_task(cache.invalidate(key)) for key in keys]
        await asyncio.sleep(0)
        assert left  # never awaited

    run_loop(service())
    client = redis.Redis.from_url(url)
    tier = AsyncRedisTier(make_async_client(url), namespace=settings["namespace"])
    old = sum(1 for key in keys if b"old" in (client.get(tier.redis_key(key)) or b""))  # type: ignore[operator]
    left_open = dict(client.pubsub_numsub(bus.channel))[bus.channel.encode()] - 1  # type: ignore[attr-defined]
    client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and other.stats().get("bus_received", 0) < len(keys):
        time.sleep(0.05)
    stale = sum(1 for key in keys if other.get(key, lambda key=key: truth[key]) != truth[key])

    async def next_job() -> None:
        await cache.invalidate("another")

    run_loop(next_job())
    gc.collect()
    stats = cache.stats()
    run_loop(cache.aclose())
    other.close()
    logging.getLogger("asyncio").removeHandler(destroyed)
    return (
        f"old in Redis {old} of {len(keys)}; old in the other process {stale}; subscriptions "
        f"of the ended loop left {left_open}; tasks destroyed pending {destroyed.count}; next "
        f"loop: publish errors {stats.get('bus_publish_errors', 0)}, errors of the tier "
        f"{stats['tiers'][1]['errors']}"
    )


class OtherWriter:
    """Another process's chain writing the keys (a new version every 5 ms, in a thread), and
    when each version's write was done."""

    def __init__(self, settings: dict[str, Any], keys: list[str], seed: int) -> None:
        self.keys = keys
        self.truth = dict.fromkeys(keys, 0)
        self.done: dict[str, list[tuple[float, int]]] = {key: [] for key in keys}
        self.lock = threading.Lock()
        self._chain = subscribed_chain(settings)
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write)

    def __enter__(self) -> OtherWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._chain.close()

    def _write(self) -> None:
        while not self._stop.is_set():
            key = self._rng.choice(self.keys)
            with self.lock:
                self.truth[key] += 1
                version = self.truth[key]
            self._chain.set(key, version)
            with self.lock:
                self.done[key].append((time.monotonic(), version))
            time.sleep(0.005)

    async def load(self, key: str) -> int:
        with self.lock:
            return self.truth[key]

    def stale_for(self, key: str, value: int, began: float) -> float:
        """How long before ``began`` a newer version than ``value`` was written (0: none)."""
        with self.lock:
            newer = [at for at, version in self.done[key] if version > value]
        return began - min(newer) if newer else 0.0


def listener_cancel(url: str, run: int) -> str:
    settings = bus_chain_settings(url, f"listener-cancel-{run}", bus={"url": url}, timeout="2s")
    cache = AsyncTieredCache.from_config(**settings)
    bound = 1.0

    async def job(other: OtherWriter, seed: int) -> str:
        rng = random.Random(seed)
        ages: list[float] = []

        async def reader() -> str:
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                key = rng.choice(other.keys)
                began = time.monotonic()
                value = await cache.get(key, lambda key=key: other.load(key))  # type: ignore[misc]
                ages.append(other.stale_for(key, value, began))
                await asyncio.sleep(0.002)
            return str(cache.stats()["bus"])

        hits = cache.stats()["tiers"][0]["hits"]
        reading = asyncio.create_task(reader())
        await asyncio.sleep(1.0)
        for task in asyncio.all_tasks():  # every task but the service's reader
            if task is not reading and task is not asyncio.current_task():
                task.cancel()
        state = await reading
        stale = [age for age in ages if age > bound]
        return (
            f"reads {len(ages)}, stale beyond {bound} s {len(stale)} "
            f"(oldest {max(stale, default=0.0):.2f} s), from memory "
            f"{cache.stats()['tiers'][0]['hits'] - hits}, bus {state}"
        )

    with OtherWriter(settings, [f"k{i}" for i in range(20)], run) as other:
        first = run_loop(job(other, run * 2))
        second = run_loop(job(other, run * 2 + 1))
    stats = cache.stats()
    run_loop(cache.aclose())
    counters = {
        name: stats.get(name, 0)
        for name in ("bus_disconnects", "bus_down_bypasses", "bus_received")
    }
    return f"first loop: {first}; second loop: {second}; {counters}"


def two_loops(url: str, run: int) -> str:
    keys = [f"k{i}" for i in range(30)]
    source = AsyncDictSource(dict.fromkeys(keys, 0))
    cache, tier = chain(url, f"two-loops-{run}", source, 2)
    raised: Counter[str] = Counter()
    calls = [0]
    lock = threading.Lock()

    async def job(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(210):
            key = rng.choice(keys)
            try:
                if rng.random() < 0.2:
                    source.inner.write(key, source.inner.items[key] + 1)
                    await cache.invalidate(key)
                else:
                    await cache.get(key)
            except Exception as exc:
                with lock:
                    raised[type(exc).__name__] += 1
            with lock:
                calls[0] += 1
            await asyncio.sleep(0)

    threads = [threading.Thread(target=run_loop, args=(job(seed),)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = cache.stats()["tiers"][1]["errors"]
    older = older_in_redis(url, tier, source)
    run_loop(cache.aclose())
    return f"calls {calls[0]}; raised {dict(raised)}; errors of the tier {errors}; older {older}"


def left_open(url: str, run: int) -> str:
    keys = [f"k{i}" for i in range(20)]
    settings = bus_chain_settings(url, f"left-open-{run}", bus={"url": url}, timeout="2s")
    cache = AsyncTieredCache.from_config(**settings)
    loads: Counter[str] = Counter()

    async def load(key: str) -> str:
        loads[key] += 1
        return f"value {key}"

    async def warm() -> None:
        for key in keys:
            await cache.get(key, lambda key=key: load(key))

    async def next_loop() -> dict[str, Any]:
        for key in keys:
            await cache.get(f"other {key}", lambda key=key: load(f"other {key}"))
        for key in keys:
            await cache.set(key, "new")
        stats = cache.stats()
        await cache.aclose()
        return stats

    first = new_loop()
    first.run_until_complete(warm())  # and left open
    stats = run_loop(next_loop())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first.close()  # by hand, without running again
        del first
        gc.collect()
    unclosed = sum(1 for warning in seen if issubclass(warning.category, ResourceWarning))
    tier = stats["tiers"][1]
    return (
        f"next loop: errors of the tier {tier['errors']}, publish errors "
        f"{stats.get('bus_publish_errors', 0)}, loads {sum(loads.values())} of {2 * len(keys)}, "
        f"loops left open {tier['loops_left_open']}; ResourceWarnings as the first loop is "
        f"closed by hand {unclosed}"
    )


def main() -> None:
    logging.disable(logging.WARNING)  # the tier's failures are counted, not printed
    scenario = {
        "loop-end": loop_end,
        "loop-end-bus": loop_end_bus,
        "two-loops": two_loops,
        "listener-cancel": listener_cancel,
        "left-open": left_open,
    }[sys.argv[1]]
    numbers = [arg for arg in sys.argv[2:] if arg.isdigit()]
    runs = int(numbers[0]) if numbers else 3
    with RedisServer() as server:
        for run in range(runs):
            print(f"run {run}: {scenario(server.url, run)}")


if __name__ == "__main__":
    main()
