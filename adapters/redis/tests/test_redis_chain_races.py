"""Races between loads, writes and invalidations, against a real redis-server.

Each test pins down one way an old value used to survive in a tier (issue 16): an invalidation
by prefix or of everything while a load is in flight, concurrent write-through ``set`` calls
from two chains (threads) and from two processes while Redis is stalled, and a circuit
breaker that hid the memory tier's capabilities from the chain.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from tiered_cache_redis import RedisTier
from tiered_cache_redis.bus import RedisBus

from tiered_cache import MISSING, MemoryTier, TieredCache
from tiered_cache.breaker import CircuitBreakerTier
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.polling import eventually
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import Entry, MissingType

#: Generous bound for "the bus has delivered" (measured by benchmarks/bench_bus_delay.py).
BUS_DELAY_BOUND = 2.0


def chain(
    url: str,
    namespace: str,
    clock: Callable[[], float],
    *,
    bus: bool,
    memory: dict[str, Any] | None = None,
    redis_tier: dict[str, Any] | None = None,
) -> TieredCache:
    cache = TieredCache.from_config(
        clock=clock,
        namespace=namespace,
        ttl="10m",
        tiers=[
            {"kind": "memory", "admission": "always", "ttl": "10m", **(memory or {})},
            {"kind": "redis", "url": url, "timeout": "5s", **(redis_tier or {})},
        ],
        protection={"lease_poll": "10ms", "soft_timeout": None},
        bus={"kind": "redis" if bus else "off", "health_check_interval": "1s"},
    )
    if bus:
        assert cache._bus_link is not None
        assert cache._bus_link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    return cache


@pytest.fixture
def clock() -> FakeClock:
    # Near the real time: Redis computes its PX expiries from the chain's clock.
    return FakeClock(time.time())


def in_memory(cache: TieredCache, key: str) -> Any:
    memory = cache.tiers[0]
    if isinstance(memory, CircuitBreakerTier):
        memory = memory.tier
    assert isinstance(memory, MemoryTier)
    entry = memory.peek(key)
    return MISSING if entry is MISSING else entry.value


def in_redis(cache: TieredCache, key: str) -> Any:
    entry = cache.tiers[1].get(key)
    return MISSING if entry is MISSING else entry.value


# -- defect 1: a prefix invalidation or a clear during a slow load ------------------------------


@pytest.mark.parametrize("how", ["prefix", "clear"])
@pytest.mark.parametrize("who", ["same chain", "other chain over the bus", "other chain, no bus"])
def test_a_prefix_invalidation_or_clear_during_a_slow_load_keeps_the_old_value_out(
    redis_server: RedisServer, namespace: str, clock: FakeClock, how: str, who: str
) -> None:
    bus = who == "other chain over the bus"
    reader = chain(redis_server.url, namespace, clock, bus=bus)
    writer = reader if who == "same chain" else chain(redis_server.url, namespace, clock, bus=bus)
    source = {"user:42:profile": "old"}
    read_done = threading.Event()
    may_finish = threading.Event()

    def slow_load() -> str:
        value = source["user:42:profile"]
        read_done.set()
        assert may_finish.wait(10)
        return value

    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(reader.get("user:42:profile", slow_load)))
    thread.start()
    assert read_done.wait(10)
    source["user:42:profile"] = "new"  # the source changes after the load read it ...
    if how == "prefix":
        writer.invalidate_prefix("user:42:")  # ... and is announced before the load fills
    else:
        writer.clear()
    if bus:  # the reader hears of it before its load finishes
        assert eventually(lambda: reader.stats()["bus_received"] >= 1, BUS_DELAY_BOUND)
    may_finish.set()
    thread.join(10)
    assert got == ["old"]  # the caller that asked before the write may see the old value
    # ... but no tier took it: every later read sees the new one.
    assert in_redis(reader, "user:42:profile") is MISSING
    assert in_memory(reader, "user:42:profile") is MISSING
    assert reader.get("user:42:profile", lambda: source["user:42:profile"]) == "new"
    reader.close()
    if writer is not reader:
        writer.close()


# -- defect 2: concurrent write-through set() ----------------------------------------------------


class SlowDictSource:
    """A source shared by two chains: writes are atomic, but the reply comes back after a
    random pause, as a network round trip does, so two writers can return in either order."""

    name = "slow-dict"

    def __init__(self, seed: int) -> None:
        self.items: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def load(self, key: str) -> Any:
        with self._lock:
            return self.items.get(key, MISSING)

    def load_many(self, keys: list[str]) -> dict[str, Any]:
        with self._lock:
            return {key: self.items[key] for key in keys if key in self.items}

    def store(self, key: str, value: Any) -> None:
        with self._lock:
            self.items[key] = value
            pause = self._rng.random() * 0.002
        time.sleep(pause)

    def remove(self, key: str) -> None:
        with self._lock:
            self.items.pop(key, None)

    def close(self) -> None:
        pass


def sharing(url: str, namespace: str, clock: FakeClock, source: SlowDictSource) -> TieredCache:
    """A chain (memory + Redis + the Redis bus) of one process of a fleet writing ``source``."""
    bus = RedisBus(lambda: redis.Redis.from_url(url), f"{namespace}:invalidations")
    cache = TieredCache(
        [
            MemoryTier(ttl=600, clock=clock),
            RedisTier(redis.Redis.from_url(url), namespace=namespace, clock=clock),
        ],
        source,
        ttl=600,
        clock=clock,
        bus=bus,
    )
    assert bus.wait_subscribed(10)
    return cache


def test_concurrent_sets_from_two_chains_leave_no_tier_behind_the_source(
    redis_server: RedisServer, namespace: str, clock: FakeClock
) -> None:
    source = SlowDictSource(seed=16)
    chains = [sharing(redis_server.url, namespace, clock, source) for _ in range(2)]
    rounds = 40
    behind: list[str] = []
    for round_ in range(rounds):
        key = f"k{round_}"
        barrier = threading.Barrier(8)

        def writer(
            cache: TieredCache, worker: int, key: str = key, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            for n in range(20):
                cache.set(key, {"v": n, "by": worker})

        threads = [
            threading.Thread(target=writer, args=(chains[index // 4], index)) for index in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        truth = source.items[key]

        def coherent(key: str = key, truth: Any = truth) -> bool:
            held = [in_redis(chains[0], key)] + [in_memory(cache, key) for cache in chains]
            return all(value is MISSING or value == truth for value in held)

        if not eventually(coherent, BUS_DELAY_BOUND):
            behind.append(key)
        for cache in chains:
            assert cache.get(key) == truth
    assert behind == [], f"{len(behind)} of {rounds} rounds left a tier behind the source"
    for cache in chains:
        cache.close()


class WriterInBetween(DictSource):
    """A source whose next ``store`` of ``key`` is followed, before it returns, by ``then()``:
    another process's write of the same key, which reaches the source last."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.then: Callable[[], None] | None = None

    def store(self, key: str, value: Any) -> None:
        super().store(key, value)
        then, self.then = (self.then, None) if key == self.key else (None, self.then)
        if then is not None:
            then()


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_write_overtaken_by_another_processes_write_leaves_no_tier_behind(
    redis_server: RedisServer, namespace: str, clock: FakeClock, how: str
) -> None:
    """set and set_many take each key's lease before they write the source, and fill under
    it: a write that came in between took the lease, so the older value reaches no tier."""
    source = WriterInBetween("k")
    first, second = (
        TieredCache(
            [
                MemoryTier(ttl=600, clock=clock),
                RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock),
            ],
            source,
            ttl=600,
            clock=clock,
        )
        for _ in range(2)
    )
    source.then = lambda: second.set_many({"k": "second"})
    if how == "set_many":
        first.set_many({"k": "first", "j": "first"})
    else:
        first.set("k", "first")
        first.set("j", "first")
    assert source.items == {"k": "second", "j": "first"}
    assert in_redis(first, "k") in (MISSING, "second")
    assert in_memory(first, "k") is MISSING
    assert (first.get("k"), second.get("k"), first.get("j")) == ("second", "second", "first")
    first.close()
    second.close()


WORKER = Path(__file__).with_name("set_worker.py")


@pytest.fixture
def source_server() -> Iterator[RedisServer]:
    """A second redis-server standing for the table: it keeps answering while the cache's
    Redis is stopped."""
    with RedisServer() as server:
        yield server


def test_sets_from_two_processes_while_redis_is_stalled_leave_no_older_value(
    source_server: RedisServer, namespace: str
) -> None:
    keys = 10
    with RedisServer() as cache_server:
        table = redis.Redis.from_url(source_server.url, decode_responses=True)
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    cache_server.url,
                    source_server.url,
                    namespace,
                    name,
                    str(keys),
                    delay,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, delay in (("first", "0"), ("second", "0.5"))
        ]
        try:
            deadline = time.monotonic() + 30
            while int(table.get(f"{namespace}:ready") or 0) < 2:
                assert time.monotonic() < deadline, "the workers never got ready"
                time.sleep(0.01)
            pid = cache_server.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # Redis stalls: both writers' tier writes queue up
            try:
                table.set(f"{namespace}:go", 1)
                time.sleep(2.0)
            finally:
                os.kill(pid, signal.SIGCONT)
            outputs = [worker.communicate(timeout=60) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        for worker, (out, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, err
            assert json.loads(out.strip().splitlines()[-1]) == "done"
        tier = RedisTier(redis.Redis.from_url(cache_server.url), namespace=namespace)
        older = []
        for index in range(keys):
            key = f"k{index}"
            truth = table.get(f"{namespace}:table:{key}")
            held = tier.get(key)
            if held is not MISSING and held.value != truth:
                older.append((key, held.value, truth))
        tier.close()
        table.close()
    assert older == [], f"Redis holds an older value than the source for {len(older)} keys"


# -- defect 3: a circuit breaker must not hide a tier's capabilities ----------------------------


def test_a_breaker_on_the_memory_tier_keeps_it_in_process_for_the_bus(
    redis_server: RedisServer, namespace: str, clock: FakeClock
) -> None:
    breaker = {"breaker": {"enabled": True}}
    a = chain(redis_server.url, namespace, clock, bus=True, memory=breaker)
    b = chain(redis_server.url, namespace, clock, bus=True, memory=breaker)
    source = {"k": "old"}
    assert a.get("k", lambda: source["k"]) == "old"
    assert in_memory(a, "k") == "old"
    source["k"] = "new"
    b.set("k", "new")  # the bus tells a to drop its in-process copy
    assert eventually(lambda: in_memory(a, "k") is MISSING, BUS_DELAY_BOUND)
    assert a.get("k", lambda: source["k"]) == "new"
    a.close()
    b.close()


def test_a_breaker_keeps_hot_keys_and_the_quiet_second_look(clock: FakeClock) -> None:
    cache = TieredCache.from_config(
        clock=clock,
        tiers=[
            {"kind": "memory", "max_entries": 100, "admission": "hot-keys"},
        ],
    )
    guarded = TieredCache.from_config(
        clock=clock,
        tiers=[
            {
                "kind": "memory",
                "max_entries": 100,
                "admission": "hot-keys",
                "breaker": {"enabled": True},
            },
        ],
    )
    for each in (cache, guarded):
        for i in range(300):
            each.get("tweet:viral", lambda: "v")
            each.get(f"tweet:{i}", lambda: "cold")
            clock.advance(0.01)
    assert guarded.hot_keys(1)[0][0] == "tweet:viral"
    keys = [[key for key, _ in each.stats()["hot_keys"]] for each in (cache, guarded)]
    assert keys[0] == keys[1]


def test_a_breaker_keeps_the_second_look_quiet_for_the_sketch(clock: FakeClock) -> None:
    policy = TinyLfuPolicy(100, clock=clock)
    memory = CircuitBreakerTier(MemoryTier(policy=policy, clock=clock), clock=clock)
    cache = TieredCache([memory], clock=clock)
    assert cache.get("tweet:1", lambda: "v") == "v"
    assert policy.sketch.frequency("tweet:1") == 1  # one read, not two


def test_a_breaker_on_redis_keeps_leases_and_prefix_deletes(
    redis_server: RedisServer, namespace: str, clock: FakeClock
) -> None:
    cache = chain(redis_server.url, namespace, clock, bus=False)
    raw = redis.Redis.from_url(redis_server.url)
    seen: list[int] = []

    def load() -> str:
        seen.append(raw.exists(f"{{{namespace}:k}}:lease"))
        return "v"

    assert cache.get("k", load) == "v"
    assert seen == [1]  # the load ran under Redis's lease
    cache.set("user:1:a", 1)
    cache.set("other", 2)
    cache.invalidate_prefix("user:1:")
    assert raw.exists(f"{namespace}:other") == 1  # only the prefix went, not everything
    assert raw.exists(f"{namespace}:user:1:a") == 0
    raw.close()
    cache.close()


def two_processes(
    first: type[RedisTier], url: str, namespace: str, clock: FakeClock, source: Any
) -> tuple[TieredCache, TieredCache]:
    """Two chains (memory + Redis) of two processes writing ``source``, the first on a Redis
    tier of type ``first``; no bus (the Redis lease alone orders their fills in Redis)."""
    first_chain, second_chain = (
        TieredCache(
            [
                MemoryTier(ttl=600, clock=clock),
                tier(redis.Redis.from_url(url), namespace=namespace, clock=clock),
            ],
            source,
            ttl=600,
            clock=clock,
        )
        for tier in (first, RedisTier)
    )
    return first_chain, second_chain


class StealTimesOut(RedisTier):
    """A Redis tier whose next lease steal times out (a latency spike on that one command;
    Redis answers the commands after it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times_out = True

    def steal_lease(self, key: str, ttl: float) -> str:
        if self.times_out:
            self.times_out = False
            raise redis.TimeoutError("Timeout reading from socket")
        return super().steal_lease(key, ttl)

    def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        if self.times_out:
            self.times_out = False
            raise redis.TimeoutError("Timeout reading from socket")
        return super().steal_leases(keys, ttl)


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_write_whose_lease_steal_timed_out_does_not_fill_redis_over_a_later_write(
    redis_server: RedisServer, namespace: str, clock: FakeClock, how: str
) -> None:
    """A write that could not take the key's lease (the steal timed out, Redis answered
    again right after) wrote Redis without one: a write of another process that came in
    between, and filled under its own lease, was overwritten by the older value, which Redis
    then served to everyone until its TTL. Without the lease the order of the two writes
    cannot be told, so the write invalidates Redis instead of filling it."""
    source = WriterInBetween("k")
    first, second = two_processes(StealTimesOut, redis_server.url, namespace, clock, source)
    source.then = lambda: second.set("k", "second")
    if how == "set_many":
        first.set_many({"k": "first"})
    else:
        first.set("k", "first")
    assert source.items == {"k": "second"}
    assert in_redis(first, "k") in (MISSING, "second")
    assert in_memory(first, "k") in (MISSING, "second")
    assert (first.get("k"), second.get("k")) == ("second", "second")
    first.close()
    second.close()


class LeaseTimesOut(RedisTier):
    """A Redis tier whose next lease acquisition (one key's or a batch's) times out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times_out = True

    def _spike(self) -> None:
        if self.times_out:
            self.times_out = False
            raise redis.TimeoutError("Timeout reading from socket")

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        self._spike()
        return super().acquire_lease(key, ttl)

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        self._spike()
        return super().acquire_leases(keys, ttl)


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_a_load_without_its_lease_does_not_fill_redis_over_a_write_made_meanwhile(
    redis_server: RedisServer, namespace: str, clock: FakeClock, how: str
) -> None:
    """A miss whose lease could not be taken (the acquisition timed out; or the holder took
    longer than lease_wait) loads without one. Its fill wrote Redis plainly: a write of
    another process made while it loaded, filled under the write's lease, was overwritten
    with the value read before it, and every process read that from Redis until its TTL.
    Such a load now fills only the faster tiers."""
    source = DictSource({"k": "old"})
    reader, writer = two_processes(LeaseTimesOut, redis_server.url, namespace, clock, source)

    def load() -> str:
        read = source.items["k"]
        writer.set("k", "new")  # another process writes while this load is in flight
        return read

    if how == "get":
        assert reader.get("k", load) == "old"  # its caller is served what it read
    else:
        assert reader.get_many(["k"], lambda keys: {"k": load()}) == {"k": "old"}
    assert in_redis(writer, "k") in (MISSING, "new")
    writer.tiers[0].clear()
    assert writer.get("k") == "new"
    reader.close()
    writer.close()
