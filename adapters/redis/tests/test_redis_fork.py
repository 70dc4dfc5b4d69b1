"""The Redis tiers and the asyncio bus in a forked child (gunicorn ``--preload``, Celery
prefork, multiprocessing's fork start from a service), against a private redis-server.

The sync tier's connections restart by themselves (redis-py's pool checks its pid, the wire
reader forgets its parked connections: test_redis_wire). ``redis.asyncio`` has no such
check: its connections in a child are the parent's sockets, bound to the parent's loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from tiered_cache_redis import AsyncRedisTier, RedisTier, make_async_client, make_client
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache, TierUnavailable
from tiered_cache.coherence import BusLink
from tiered_cache.forking import restart_after_fork
from tiered_cache.testing.async_conformance import LoopThread
from tiered_cache.testing.forked import ForkedChild, in_a_child, refusals
from tiered_cache.testing.gates import Held
from tiered_cache.testing.polling import async_eventually, eventually
from tiered_cache.testing.servers import RedisCluster, RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MISSING, Entry, MissingType

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 30.0


def value(entry: Entry | MissingType) -> Any:
    return MISSING if entry is MISSING else entry.value


def test_a_child_forked_while_a_thread_connects_the_tier_reads_it(
    redis_server: RedisServer, namespace: str
) -> None:
    """A tier made with ``connect`` makes its client on first use, under its lock (a
    cluster client discovers its nodes there: round trips). Held by another thread at the
    fork, the lock stayed held in the child, whose first read waited for ever."""
    held = Held()

    def connect() -> redis.Redis:
        held.hold()
        return make_client(redis_server.url, timeout=2.0)

    tier = RedisTier(connect=connect, namespace=namespace)
    make_client(redis_server.url).set(tier.redis_key("k"), b"")  # unreadable: a miss
    held.armed = True
    thread = threading.Thread(target=lambda: tier.get("k"))
    thread.start()
    try:
        assert held.inside.wait(HUNG)

        def child(report: Callable[[Any], None]) -> None:
            tier.set("c", Entry("child", 0.0))
            report(value(tier.get("c")))

        forked = ForkedChild(child)
        try:
            assert forked.read(timeout=HUNG) == "child"
        finally:
            held.go.set()
        assert forked.wait() == 0
    finally:
        held.go.set()
        thread.join(HUNG)
    assert value(tier.get("c")) == "child"
    tier.clear()
    tier.close()


async def outcome(call: Awaitable[Any]) -> Any:
    """What ``call`` returned (an entry's value), or the name of what it raised."""
    try:
        got = await call
    except Exception as exc:
        return type(exc).__name__
    return value(got) if isinstance(got, Entry) or got is MISSING else got


def async_tier(url: str, namespace: str, *, given: bool) -> AsyncRedisTier:
    """An async tier that makes its client (as ``from_config`` builds it), or is given one."""
    if given:
        return AsyncRedisTier(make_async_client(url, timeout=2.0), namespace=namespace)
    return AsyncRedisTier(connect=lambda: make_async_client(url, timeout=2.0), namespace=namespace)


def reads_both_sides(redis_server: RedisServer, namespace: str, *, given: bool) -> None:
    """The parent reads on its loop (a connection parked) and runs a lease script, forks;
    the child reads, writes, reads and runs the script on a loop of its own, then the parent
    reads again: each gets its own keys' values."""
    tier = async_tier(redis_server.url, namespace, given=given)
    loop = LoopThread()
    keys = [f"k{i}" for i in range(10)]
    loop.run(tier.set_many({key: Entry(key.upper(), 0.0) for key in keys}))
    assert value(loop.run(tier.get("k0"))) == "K0"  # a connection is parked now
    token, _ = loop.run(tier.acquire_lease("parent", 5.0))
    assert token is not None
    loop.run(tier.release_lease("parent", token))  # a script registered on the client

    async def main() -> list[Any]:
        seen = [await outcome(tier.get(key)) for key in keys]
        await outcome(tier.set("c", Entry("child", 0.0)))
        seen += [await outcome(tier.get("c"))]
        token, _ = await tier.acquire_lease("child", 5.0)
        assert token is not None
        seen += [await outcome(tier.release_lease("child", token))]
        await tier.aclose()
        return seen

    seen = in_a_child(lambda: asyncio.run(main()), HUNG)
    in_the_parent = [loop.run(outcome(tier.get(key))) for key in reversed(keys)]
    assert in_the_parent == [key.upper() for key in reversed(keys)]
    assert seen == [key.upper() for key in keys] + ["child", None]
    loop.run(tier.clear())
    loop.run(tier.aclose())
    loop.close()


def test_a_forked_childs_async_reads_are_its_own_with_a_tier_that_connects(
    redis_server: RedisServer, namespace: str
) -> None:
    """The child wrote its GET on the parent's parked socket (and failed reading it on a
    loop that is not the parent's); the parent's next read on that socket got the child's
    reply: ``get("k0")`` returned K1's value in the parent."""
    reads_both_sides(redis_server, namespace, given=False)


def test_a_forked_childs_async_reads_are_its_own_with_a_given_client(
    redis_server: RedisServer, namespace: str
) -> None:
    """As above for a tier given its client: the child's pool forgets the parent's sockets."""
    reads_both_sides(redis_server, namespace, given=True)


def chain_settings(url: str, namespace: str) -> dict[str, Any]:
    """Memory over Redis, and the bus on the same server, checked every 500 ms."""
    memory = {"kind": "memory", "admission": "always", "ttl": "10m"}
    bus = {"kind": "redis", "health_check_interval": "500ms", "timeout": "500ms"}
    redis = {"kind": "redis", "url": url, "timeout": "1s"}
    return {"namespace": namespace, "tiers": [memory, redis], "ttl": "10m", "bus": bus}


def test_a_child_forked_from_a_running_async_chain_hears_another_process_write(
    redis_server: RedisServer, namespace: str
) -> None:
    """The parent's chain listens on the bus in a task of its loop, which does not run in a
    forked child: the child must not trust the memory it inherited until it listens on a
    loop of its own, and then hear the other processes' writes. It went on serving its
    memory copy after another process's write, for good (its bus looked connected, and its
    listener looked alive: a task of the parent's loop)."""
    settings = chain_settings(redis_server.url, namespace)
    cache = AsyncTieredCache.from_config(**settings)
    loop = LoopThread()

    async def warm() -> None:
        assert await cache.get("k", constant("v0")) == "v0"  # in memory (and Redis)
        bus = cache._bus_link.bus  # type: ignore[union-attr]
        assert await bus.wait_subscribed(10)  # type: ignore[union-attr]

    loop.run(warm())
    writer = TieredCache.from_config(**settings)
    assert writer._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]

    marker = make_client(redis_server.url)
    disconnects = cache.stats().get("bus_disconnects", 0)

    def child(report: Callable[[Any], None]) -> None:
        async def main() -> None:
            report(await cache.get("k", constant("not v0")))
            assert await async_eventually(lambda: marker.exists(f"{namespace}:wrote v1"))
            assert await async_eventually(lambda: cache.stats()["bus"] == "connected")
            read = [await cache.get("k", constant("never")) for _ in range(2)]
            report(read)

            async def heard() -> bool:
                return await cache.get("k", constant("never")) == "v2"

            # Counted once heard: taken before, the counts missed v2's message, and v1's was
            # never heard when the child subscribed after that write (seen under load).
            was_heard = await async_eventually(heard)
            stats = cache.stats()
            # One period with the bus down (from the fork until it listened): counted once.
            report([was_heard, stats["bus_received"] >= 1, stats["bus_disconnects"] - disconnects])
            await cache.aclose()

        asyncio.run(main())

    forked = ForkedChild(child)
    try:
        assert forked.read(timeout=HUNG) == "v0"
        writer.set("k", "v1")  # the child may not listen yet
        marker.set(f"{namespace}:wrote v1", b"")
        assert forked.read(timeout=HUNG) == ["v1", "v1"]
        writer.set("k", "v2")  # it listens: heard (its memory copy dropped)
        assert forked.read(timeout=HUNG) == [True, True, 1]  # heard on its own subscription
    finally:
        assert forked.wait() == 0
    marker.close()
    loop.run(cache.aclose())
    loop.close()
    writer.close()


def constant(value: str) -> Callable[[], Any]:
    async def load() -> str:
        return value

    return load


class HeldReturn:
    """Holds a forked child's bus at its return to the chain (its link's call of the chain's
    ``set_connected(True)``, on the listener's thread, once the child's subscription is
    confirmed) until :attr:`go`: the window between the confirmation and the drop of what
    memory kept during the outage. The parent's calls pass."""

    def __init__(self, link: BusLink) -> None:
        self.parent = os.getpid()
        self.reached = threading.Event()
        self.go = threading.Event()
        self._chain_side = link._set_connected
        link._set_connected = self

    def __call__(self, connected: bool, *, starting: bool = False) -> None:
        if connected and os.getpid() != self.parent:
            self.reached.set()
            self.go.wait(HUNG)
        self._chain_side(connected, starting=starting)


def kept_through_outages(url: str, namespace: str) -> dict[str, Any]:
    """:func:`chain_settings` whose memory keeps a copy filled while the bus is down past any
    delay of a loaded run (``max_stale_when_disconnected``)."""
    settings = chain_settings(url, namespace)
    settings["bus"]["max_stale_when_disconnected"] = "10m"
    return settings


class WriteWhileHeld:
    """The parent's side of the tests below: another process's writer, a marker key the
    child waits for, and the child's bus held at its return (:class:`HeldReturn`)."""

    def __init__(self, settings: dict[str, Any], link: BusLink | None, url: str) -> None:
        self.writer = TieredCache.from_config(**settings)
        assert self.writer._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]
        self.marker = make_client(url)
        self.wrote = f"{settings['namespace']}:wrote v1"
        assert link is not None
        self.held = HeldReturn(link)

    def run(self, child: Callable[[Callable[[Any], None]], None]) -> None:
        """Once the child kept "v0" while its bus was down, "v1" is written (unheard: the
        child's listener is held at its return); the child, held, says its bus is down and
        serves the outage's copy; let go, it serves "v1"."""
        forked = ForkedChild(child)
        try:
            assert forked.read(timeout=HUNG) == "v0"
            self.writer.set("k", "v1")
            self.marker.set(self.wrote, b"")
            assert forked.read(timeout=HUNG) == ["down", ["v0", "v0"]]
            assert forked.read(timeout=HUNG) == ["v1", "v1"]
        finally:
            self.held.go.set()
            assert forked.wait() == 0

    def close(self) -> None:
        self.marker.close()
        self.writer.close()


def test_a_forked_async_childs_bus_says_connected_only_once_the_outages_copies_are_gone(
    redis_server: RedisServer, namespace: str
) -> None:
    """Seen once under load in the test above (its child served "v0" twice after its bus
    said "connected"): the link showed the bus connected before it told the chain, whose
    memory still held the copy its first read took while the bus was down (kept then, as
    ``max_stale_when_disconnected`` allows), filled before another process's write that the
    child never heard. A read that saw "connected" was served that copy. Held at that point,
    the bus says down, and memory serves the outage's copy as while down; once back, the
    copy is gone."""
    settings = kept_through_outages(redis_server.url, namespace)
    cache = AsyncTieredCache.from_config(**settings)
    loop = LoopThread()

    async def warm() -> None:
        assert await cache.get("k", constant("v0")) == "v0"
        assert await cache._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]

    loop.run(warm())
    race = WriteWhileHeld(settings, cache._bus_link, redis_server.url)
    held = race.held

    def child(report: Callable[[Any], None]) -> None:
        async def main() -> None:
            report(await cache.get("k", constant("not v0")))  # the bus is down: kept
            assert await async_eventually(lambda: race.marker.exists(race.wrote))
            assert await asyncio.to_thread(held.reached.wait, HUNG)
            seen = cache.stats()["bus"]
            report([seen, [await cache.get("k", constant("never")) for _ in range(2)]])
            held.go.set()
            assert await async_eventually(lambda: cache.stats()["bus"] == "connected")
            report([await cache.get("k", constant("never")) for _ in range(2)])
            await cache.aclose()

        asyncio.run(main())

    race.run(child)
    race.close()
    loop.run(cache.aclose())
    loop.close()


def test_a_forked_sync_childs_bus_says_connected_only_once_the_outages_copies_are_gone(
    redis_server: RedisServer, namespace: str
) -> None:
    """The test above for the threaded chain, whose bus's listener restarts in the child as
    the asyncio chain's does (the link and its rule are the same)."""
    settings = kept_through_outages(redis_server.url, namespace)
    cache = TieredCache.from_config(**settings)
    assert cache.get("k", lambda: "v0") == "v0"
    assert cache._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]
    race = WriteWhileHeld(settings, cache._bus_link, redis_server.url)
    held = race.held

    def child(report: Callable[[Any], None]) -> None:
        report(cache.get("k", lambda: "not v0"))  # the bus is down: kept
        assert eventually(lambda: race.marker.exists(race.wrote), HUNG)
        assert held.reached.wait(HUNG)
        seen = cache.stats()["bus"]
        report([seen, [cache.get("k", lambda: "never") for _ in range(2)]])
        held.go.set()
        assert eventually(lambda: cache.stats()["bus"] == "connected", HUNG)
        report([cache.get("k", lambda: "never") for _ in range(2)])
        cache.close()

    race.run(child)
    race.close()
    cache.close()


class SlowToRestart:
    """A part registered between the bus and the chain (:func:`restart_after_fork`) whose
    restart takes a while: it gives the bus's new listener thread the time a scheduler may
    give it, before the chain's parts have restarted."""

    def __init__(self) -> None:
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        time.sleep(0.2)


def test_a_child_forked_while_a_lock_of_the_fence_is_held_listens_on_its_bus(
    redis_server: RedisServer, namespace: str
) -> None:
    """The threaded bus starts its listener again in a forked child, and the listener's first
    act is to tell the chain the bus is down (the fence's invalidation of everything). It was
    started while the child was still restarting the parts built after the bus (the chain's
    fence, its log, memory and metrics): a lock of theirs that a thread of the parent held at
    the fork (the bus's listener applying another process's invalidation; here a thread
    holding the fence log's lock) was still the parent's, and the child's listener waited on
    it for ever, before it told the chain anything: the child never subscribed, and served
    its memory copy after another process's write, for good."""
    settings = chain_settings(redis_server.url, namespace)
    bus = RedisBus(
        lambda: make_client(redis_server.url, timeout=1.0),
        f"{namespace}:invalidations",
        health=Health(interval=0.5, timeout=0.5),
    )
    slow = SlowToRestart()
    cache = TieredCache(
        [
            MemoryTier(max_entries=100),
            RedisTier(connect=lambda: make_client(redis_server.url), namespace=namespace),
        ],
        namespace=namespace,
        ttl=600,
        bus=bus,
    )
    assert bus.wait_subscribed(10)
    assert cache.get("k", lambda: "v0") == "v0"
    held = Held()
    log_lock = cache._fence._log._lock

    def inside_the_log() -> None:
        with log_lock:
            held.hold()

    def child() -> list[Any]:
        subscribed = bus.wait_subscribed(HUNG / 3)
        writer = TieredCache.from_config(**settings)  # another process's write
        assert writer._bus_link.bus.wait_subscribed(10)  # type: ignore[union-attr]
        writer.set("k", "v1")
        deadline = time.monotonic() + HUNG / 3
        while cache.get("k", lambda: "loaded") != "v1" and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = [subscribed, cache.stats()["bus"], cache.get("k", lambda: "loaded")]
        writer.close()
        return seen

    thread = threading.Thread(target=inside_the_log)
    held.armed = True
    thread.start()
    try:
        assert held.inside.wait(HUNG)
        assert in_a_child(child, timeout=HUNG) == [True, "connected", "v1"]
    finally:
        held.go.set()
        thread.join(HUNG)
    cache.close()
    del slow


def test_a_forked_child_refuses_the_connections_of_a_given_cluster_client(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """A tier given a ``redis.asyncio`` Cluster client cannot let go of its nodes'
    connections in a forked child (it can empty a plain client's pool, not a cluster
    client's): they are the parent's sockets, on which a command is answered to whichever
    process reads first. The child's tier refuses every call, before anything is sent, with
    a TierUnavailable that says to build the tier with ``connect`` (a skip of the tier in a
    chain), and its ``aclose`` closes nothing of the parent's; the parent reads its own."""
    client = AsyncRedisCluster.from_url(redis_cluster.redis_url)
    tier = AsyncRedisTier(client, namespace=namespace)
    loop = LoopThread()
    keys = [f"k{i}" for i in range(10)]
    loop.run(tier.set_many({key: Entry(key.upper(), 0.0) for key in keys}))
    assert value(loop.run(tier.get("k0"))) == "K0"  # the nodes' connections are open now

    async def main() -> list[Any]:
        calls = [tier.get("k1"), tier.set("c", Entry("child", 0.0)), tier.acquire_lease("c", 5)]
        seen = await refusals(calls, TierUnavailable, "connect=")
        await tier.aclose()
        return seen

    seen = in_a_child(lambda: asyncio.run(main()), HUNG)
    in_the_parent = [loop.run(outcome(tier.get(key))) for key in reversed(keys)]
    assert in_the_parent == [key.upper() for key in reversed(keys)]
    assert seen == [True, True, True]
    loop.run(tier.clear())
    loop.run(tier.aclose())
    loop.close()


class StoreThenSubscribe(DictSource):
    """A table whose write, in a forked child, lets the child's bus subscribe and waits for
    it: the bus comes back (a gap) while the write is in flight, as it did by chance in 20
    of 20 gunicorn ``--preload`` forks (the child's first write and its bus's first
    subscription ran side by side)."""

    def __init__(self, parent: int) -> None:
        super().__init__()
        self.parent = parent
        self.writing = threading.Event()
        self.bus: RedisBus | None = None

    def connect(self, url: str) -> redis.Redis:
        """The bus's connection: in the child, only once a write has begun."""
        if os.getpid() != self.parent:
            assert self.writing.wait(HUNG)
        return make_client(url, timeout=1.0)

    def store(self, key: str, value: Any) -> None:
        super().store(key, value)
        if os.getpid() != self.parent:
            self.writing.set()
            assert self.bus is not None and self.bus.wait_subscribed(HUNG / 3)


def test_a_forked_childs_first_write_stays_in_redis_while_its_bus_subscribes(
    redis_server: RedisServer, namespace: str
) -> None:
    """The child's bus starts as disconnected and comes back once subscribed: a gap of the
    child's memory, which says nothing of Redis. The child's first write, made meanwhile
    under its Redis lease, lost its value from Redis (the fence refused its fill and the
    write invalidated the key everywhere); every process then read the table again."""
    source = StoreThenSubscribe(os.getpid())
    bus = RedisBus(
        lambda: source.connect(redis_server.url),
        f"{namespace}:invalidations",
        health=Health(interval=0.5, timeout=0.5),
    )
    source.bus = bus
    cache = TieredCache(
        [
            MemoryTier(max_entries=100),
            RedisTier(connect=lambda: make_client(redis_server.url), namespace=namespace),
        ],
        source,
        namespace=namespace,
        ttl=600,
        bus=bus,
    )
    assert bus.wait_subscribed(10)
    assert cache.get("other", lambda: "v0") == "v0"  # the chain has read and filled

    def child() -> list[Any]:
        cache.set("k", "child")
        reader = RedisTier(make_client(redis_server.url), namespace=namespace)
        stored = value(reader.get("k"))
        seen = [repr(stored), cache.get("k"), source.loads, cache.stats()["bus"]]
        reader.close()
        return seen

    # Failed at the first: "MISSING" (the write undid itself in Redis).
    assert in_a_child(child, timeout=HUNG) == ["'child'", "child", [], "connected"]
    reader = RedisTier(make_client(redis_server.url), namespace=namespace)
    assert value(reader.get("k")) == "child"  # the parent reads the child's write
    reader.close()
    cache.close()
