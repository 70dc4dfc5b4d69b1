"""A load that fails, or outlives its caller, gives its Redis lease back or fills under it.

Two chains over one real redis-server stand for two processes. A lease left behind by a load
that failed makes the other process wait ``lease_wait`` for nothing (counted in
``lease_waits``); a load that outlived its caller must still fill only under its lease, so
that a write made meanwhile by another process is never overwritten with what it read before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier
from tiered_cache_redis.leases import lease_key

from tiered_cache import (
    MISSING,
    CodecError,
    Entry,
    LoadTimeout,
    MemoryTier,
    PartialBatchError,
    TieredCache,
)
from tiered_cache.compiled import compiled_core
from tiered_cache.errors import TierUnavailable
from tiered_cache.leases import PartialFill
from tiered_cache.protection import Protection
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.gates import Held as Gate
from tiered_cache.testing.polling import until
from tiered_cache.testing.pure_core import on_the_pure_core
from tiered_cache.testing.servers import RedisCluster, RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MissingType

from .leases_held import leases_in


class Abort(BaseException):
    """Not an Exception: what a loader interrupted from outside raises."""


def chain(
    url: str, namespace: str, redis_tier: dict[str, object] | None = None, **protection: object
) -> TieredCache:
    # No bus: the two chains hear of each other only through Redis (its data and leases).
    return TieredCache.from_config(
        namespace=namespace,
        bus={"kind": "off"},  # "auto" would add one: its fence, not the lease, would decide
        tiers=[
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s", **(redis_tier or {})},
        ],
        protection={
            "lease_poll": "10ms",
            "lease_ttl": "30s",
            "lease_wait": "30s",
            "max_stale": "0s",
            "soft_timeout": None,
            **protection,
        },
    )


def loads_without_waiting(cache: TieredCache, keys: list[str]) -> None:
    """``cache`` reads ``keys`` with a lease of its own: nobody else holds one any more."""
    assert cache.get_many(keys, lambda wanted: {key: "fresh" for key in wanted}) == dict.fromkeys(
        keys, "fresh"
    )
    assert cache.stats()["lease_waits"] == 0


def test_a_batch_whose_source_fails_gives_its_leases_back(
    redis_server: RedisServer, namespace: str
) -> None:
    first, second = chain(redis_server.url, namespace), chain(redis_server.url, namespace)

    def failing(keys: Sequence[str]) -> dict[str, str]:
        raise ConnectionError("source down")

    with pytest.raises(PartialBatchError):
        first.get_many(["a", "b"], failing)
    loads_without_waiting(second, ["a", "b"])
    first.close()
    second.close()


class FailingAt(DictSource):
    """A source whose ``store`` fails for one key (after storing the ones before it)."""

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing

    def store(self, key: str, value: Any) -> None:
        if key == self.failing:
            raise ConnectionError(f"cannot write {key}")
        super().store(key, value)


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_write_whose_source_fails_gives_back_the_leases_it_took(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """A write takes the keys' leases before writing the source; the keys it did not get to
    write are given back, the ones it wrote are filled or invalidated (either ends a lease)."""
    writer = TieredCache(
        [MemoryTier(), RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)],
        FailingAt("b"),
        protection=Protection.never_stale(lease_ttl=30.0),
    )
    second = chain(redis_server.url, namespace, lease_wait="300ms")
    with pytest.raises(ConnectionError, match="cannot write b"):
        if how == "set_many":
            writer.set_many({"a": 1, "b": 2, "c": 3})
        else:
            for key, value in {"a": 1, "b": 2, "c": 3}.items():
                writer.set(key, value)
    loads_without_waiting(second, ["b", "c"])
    # "a" reached the source: filled under its lease (set) or invalidated (set_many).
    assert second.get_many(["a"], lambda keys: {"a": 1}) == {"a": 1}
    assert second.stats()["lease_waits"] == 0
    writer.close()
    second.close()


def test_a_batch_interrupted_by_a_base_exception_gives_its_leases_back(
    redis_server: RedisServer, namespace: str
) -> None:
    first, second = chain(redis_server.url, namespace), chain(redis_server.url, namespace)

    def interrupted(keys: Sequence[str]) -> dict[str, str]:
        raise Abort()

    with pytest.raises(Abort):
        first.get_many(["a", "b"], interrupted)
    loads_without_waiting(second, ["a", "b"])
    first.close()
    second.close()


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_a_load_whose_fill_is_refused_gives_its_lease_back(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """Another process invalidates the key while the load reads the source, and only its
    message reaches this one (that process has no Redis tier here; in production: its
    delete did not reach Redis): the fence refuses the fill, and nothing deleted the lease in
    Redis, so the load itself gives it back; left behind, the other process would wait its
    ``lease_wait`` for a fill that never comes."""
    bus = CuttableBus()
    first = TieredCache(
        [MemoryTier(), RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)],
        bus=bus,
        protection=Protection(lease_ttl=30.0, lease_wait=0.3, soft_timeout=None),
    )
    heard_only = TieredCache([MemoryTier()], bus=bus)
    second = chain(redis_server.url, namespace, lease_wait="300ms")

    def read_while_invalidated(keys: Sequence[str]) -> dict[str, str]:
        heard_only.invalidate_many(list(keys))
        return {key: "read before the invalidation" for key in keys}

    if how == "get":
        got = first.get("a", lambda: read_while_invalidated(["a"])["a"])
        assert got == "read before the invalidation"
    else:
        got_many = first.get_many(["a"], read_while_invalidated)
        assert got_many == {"a": "read before the invalidation"}
    assert first.stats()["fills_refused"] == 1
    loads_without_waiting(second, ["a"])
    first.close()
    heard_only.close()
    second.close()


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_a_load_across_a_bus_gap_fills_redis_under_its_lease(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """The bus drops and comes back while the load reads the source: a gap, which clears this
    process's memory but says nothing of Redis. The load held the key's lease from before
    its read, so a write or invalidation of the key meanwhile would have taken or deleted
    it and failed the fill: the fill lands in Redis (and in memory: the gap came before the
    leased write), and the other process reads it there without a load of its own. (The gap
    once refused the fill: each process then read the source again.)"""
    bus = CuttableBus()
    memory = MemoryTier()
    first = TieredCache(
        [memory, RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)],
        bus=bus,
        protection=Protection(lease_ttl=30.0, lease_wait=0.3, soft_timeout=None),
    )
    second = chain(redis_server.url, namespace, lease_wait="300ms")

    def read_during_an_outage(keys: Sequence[str]) -> dict[str, str]:
        bus.cut()
        bus.restore()
        return {key: "read under the lease" for key in keys}

    if how == "get":
        assert first.get("a", lambda: read_during_an_outage(["a"])["a"]) == "read under the lease"
    else:
        assert first.get_many(["a"], read_during_an_outage) == {"a": "read under the lease"}
    assert first.stats()["fills_refused"] == 0
    assert "a" in memory
    assert second.get_many(["a"], lambda keys: dict.fromkeys(keys, "loaded")) == {
        "a": "read under the lease"
    }
    assert second.stats()["lease_waits"] == 0
    first.close()
    second.close()


def test_a_batch_interrupted_after_some_keys_were_served_raises_what_interrupted_it(
    redis_server: RedisServer, namespace: str
) -> None:
    """The batch loads "a" under its lease at once, waits for the holder of "b", then loads
    "b" itself and is interrupted: the caller gets the interruption (each flight landed
    once), and "a" was kept."""
    holder = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    token, _ = holder.acquire_lease("b", ttl=30)  # another process loads "b", never finishes
    assert token is not None
    cache = chain(redis_server.url, namespace, lease_wait="200ms")

    def load(keys: Sequence[str]) -> dict[str, str]:
        if "b" in keys:
            raise Abort()
        return dict.fromkeys(keys, "A")

    with pytest.raises(Abort):
        cache.get_many(["a", "b"], load)
    assert cache.get_many(["a"], lambda keys: {}) == {"a": "A"}
    holder.close()
    cache.close()


class Held:
    """Keys whose leases another process holds and never fills, and a chain on a fake clock
    whose sleep moves that clock (so a lease wait takes no real time)."""

    def __init__(self, url: str, namespace: str, keys: Sequence[str], **protection: Any):
        self.clock = FakeClock(time.time())  # near the real time: Redis's PX uses it
        self.slept: list[float] = []
        holder = RedisTier(redis.Redis.from_url(url), namespace=namespace, clock=self.clock)
        for key in keys:
            assert holder.acquire_lease(key, 30.0)[0] is not None
        # A holder that died: its client gone, its tier never closed (a closing tier gives
        # back the leases it took).
        holder.client.close()
        self.shared = RedisTier(redis.Redis.from_url(url), namespace=namespace, clock=self.clock)
        self.cache = TieredCache(
            [MemoryTier(clock=self.clock), self.shared],
            clock=self.clock,
            sleep=self.sleep,
            ttl=600,
            protection=Protection(
                **{
                    "soft_timeout": None,
                    "early_refresh_beta": 0.0,
                    "stale_while_revalidate": False,
                    "lease_wait": 0.5,
                    "lease_poll": 0.125,
                    "lease_ttl": 30.0,
                    **protection,
                }
            ),
        )

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)


def test_a_batch_gives_up_on_a_silent_holder_when_lease_wait_is_over(
    redis_server: RedisServer, namespace: str
) -> None:
    """It looks every lease_poll until lease_wait has passed, not one look more, then loads
    the keys itself in one read, with the ttl it was asked for: into memory, not into Redis,
    where a value loaded without the lease could overwrite a later write's."""
    held = Held(redis_server.url, namespace, ["a", "b"], max_stale=0.0)
    reads: list[list[str]] = []

    def load_many(keys: Sequence[str]) -> dict[str, str]:
        reads.append(sorted(keys))
        return {key: key.upper() for key in keys}

    assert held.cache.get_many(["a", "b"], load_many, ttl=5) == {"a": "A", "b": "B"}
    assert held.slept == [0.125] * 4
    assert reads == [["a", "b"]]
    stats = held.cache.stats()
    assert (stats["lease_waits"], stats["lease_wait_expired"]) == (2, 2)
    entry = held.cache.tiers[0].get("a")
    assert isinstance(entry, Entry) and entry.soft_expiry == held.clock() + 5
    assert held.shared.get("a") is MISSING  # the holder's lease still stands
    held.cache.close()


def test_a_miss_gives_up_on_a_silent_holder_when_lease_wait_is_over(
    redis_server: RedisServer, namespace: str
) -> None:
    """A single key's miss, as a batch: a look every lease_poll until lease_wait has passed,
    not one more, then it loads the key itself."""
    held = Held(redis_server.url, namespace, ["a"], max_stale=0.0)
    assert held.cache.get("a", lambda: "A") == "A"
    assert held.slept == [0.125] * 4
    stats = held.cache.stats()
    assert (stats["lease_waits"], stats["lease_wait_expired"]) == (1, 1)
    held.cache.close()


def test_a_batch_that_gave_up_on_a_holder_serves_the_stale_copy_when_the_source_fails(
    redis_server: RedisServer, namespace: str
) -> None:
    held = Held(redis_server.url, namespace, [], max_stale=60.0, fail_safe=True)
    now = held.clock()
    held.shared.set_many({"a": Entry("old", now - 20, now - 10, now + 50)})
    # Taken after the write (a write voids the lease): the holder refreshes "a", never fills.
    assert held.shared.acquire_lease("a", 30.0)[0] is not None

    def failing(keys: Sequence[str]) -> dict[str, str]:
        raise ConnectionError("source down")

    assert held.cache.get_many(["a"], failing) == {"a": "old"}
    assert held.slept == [0.125] * 4  # it waited for the holder, then loaded itself
    assert held.cache.stats()["stale_served_on_error"] == 1
    held.cache.close()


def test_a_load_that_outlived_its_caller_and_failed_gives_its_lease_back(
    redis_server: RedisServer, namespace: str
) -> None:
    first = chain(redis_server.url, namespace, hard_timeout="100ms")
    second = chain(redis_server.url, namespace)
    release = threading.Event()

    def hangs_then_fails() -> str:
        release.wait(10)
        raise ConnectionError("source down")

    with pytest.raises(LoadTimeout):
        first.get("k", hangs_then_fails)
    release.set()
    assert first.wait_background(10)
    loads_without_waiting(second, ["k"])
    first.close()
    second.close()


def test_a_load_that_outlived_its_caller_fills_under_its_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    """The late load read before another process wrote: its value must not land in Redis."""
    first = chain(redis_server.url, namespace, hard_timeout="100ms")
    writer = chain(redis_server.url, namespace)
    release = threading.Event()

    def slow_old_read() -> str:
        release.wait(10)
        return "old"

    with pytest.raises(LoadTimeout):
        first.get("k", slow_old_read)
    writer.set("k", "new")  # takes the lease from the late load, writes Redis
    release.set()
    assert first.wait_background(10)
    third = chain(redis_server.url, namespace)
    assert third.get("k", lambda: "reloaded") in ("new", "reloaded")
    for cache in (first, writer, third):
        cache.close()


def test_a_load_that_outlived_its_caller_fills_redis_when_it_finishes(
    redis_server: RedisServer, namespace: str, tier: RedisTier
) -> None:
    first = chain(redis_server.url, namespace, hard_timeout="100ms")
    release = threading.Event()

    def slow() -> str:
        release.wait(10)
        return "late"

    with pytest.raises(LoadTimeout):
        first.get("k", slow)
    release.set()
    assert first.wait_background(10)
    # It filled under its lease, which the fill used up: the next miss of "k" anywhere (after
    # an invalidation) takes the lease at once instead of waiting lease_ttl for nothing.
    token, _ = tier.acquire_lease("k", 30.0)
    assert token is not None
    tier.release_lease("k", token)
    assert first.get("k", lambda: "reloaded") == "late"
    other = chain(redis_server.url, namespace)
    assert other.get("k", lambda: "reloaded") == "late"
    first.close()
    other.close()


@pytest.fixture
def tier(redis_server: RedisServer, namespace: str) -> Iterator[RedisTier]:
    """The chains' Redis tier, seen directly: what another process holds and reads."""
    tier = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    yield tier
    tier.close()


def test_a_leased_batch_keeps_the_ttl_its_read_asked_for(
    redis_server: RedisServer, namespace: str, tier: RedisTier
) -> None:
    cache = chain(redis_server.url, namespace)
    before = time.time()
    cache.get_many(["a", "b"], lambda keys: {key: key for key in keys}, ttl="3s")
    entries = tier.get_many(["a", "b"])
    assert all(before + 3 <= entry.soft_expiry <= time.time() + 3 for entry in entries.values())
    assert len(entries) == 2
    cache.close()


def test_a_batch_takes_over_the_leases_of_a_holder_that_died(
    redis_server: RedisServer, namespace: str, tier: RedisTier
) -> None:
    cache = chain(redis_server.url, namespace)
    for key in ("a", "b"):  # a holder that took these leases and died
        assert tier.acquire_lease(key, ttl=0.2)[0] is not None
    got = cache.get_many(["a", "b"], lambda keys: {key: "mine" for key in keys})
    assert got == {"a": "mine", "b": "mine"}
    stats = cache.stats()
    assert (stats["lease_waits"], stats["lease_takeovers"]) == (2, 2)
    cache.close()


def test_a_batch_that_finds_the_holders_value_gives_back_the_lease_it_got_with_it(
    redis_server: RedisServer, namespace: str, tier: RedisTier
) -> None:
    cache = chain(redis_server.url, namespace)
    token, _ = tier.acquire_lease("k", ttl=30)  # another process is loading "k"
    assert token is not None
    results: list[object] = []
    reader = threading.Thread(
        target=lambda: results.append(cache.get_many(["k"], lambda keys: {"k": "own load"}))
    )
    reader.start()
    deadline = time.monotonic() + 10
    while cache.stats()["lease_waits"] == 0:
        assert time.monotonic() < deadline, "the batch never waited for the holder"
        time.sleep(0.01)
    now = time.time()
    assert tier.fill_with_lease("k", Entry("holder's", now, now + 60, now + 60), token)
    reader.join(10)
    assert results == [{"k": "holder's"}]
    assert tier.acquire_lease("k", ttl=1)[0] is not None  # nobody keeps the lease
    cache.close()


def test_a_leased_batch_counts_every_key_it_filled_and_every_lease_it_lost(
    redis_server: RedisServer, namespace: str, tier: RedisTier
) -> None:
    cache = chain(redis_server.url, namespace)
    cache.get_many(["a", "b"], lambda keys: dict.fromkeys(keys, "v"))
    assert [entry["fills"] for entry in cache.stats()["tiers"]] == [2, 2]
    other = chain(redis_server.url, namespace)  # another process: no bus between the two

    def load_while_the_other_invalidates(keys: Sequence[str]) -> dict[str, str]:
        other.invalidate_many(["c", "d"])  # deletes the keys' leases in Redis
        return dict.fromkeys(keys, "old")

    got = cache.get_many(["c", "d"], load_while_the_other_invalidates)
    assert got == {"c": "old", "d": "old"}  # its caller is served what it read
    assert cache.stats()["lease_lost"] == 2
    assert tier.get_many(["c", "d"]) == {}
    assert cache.get_many(["c", "d"], lambda keys: dict.fromkeys(keys, "new")) == {
        "c": "new",
        "d": "new",
    }
    cache.close()
    other.close()


class FillsFail(RedisTier):
    """A Redis that answers the lease look, then fails the fill under the leases with
    ``error``."""

    error: Exception = redis.ConnectionError("Redis went away")

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        raise self.error

    def fill_with_leases(self, leased: Any) -> set[str]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "in_memory", "errors_and_skips"),
    [
        # Redis is down: nothing there to protect, so the values read go into memory.
        (redis.ConnectionError("Redis went away"), [True, True], (1, 0)),
        # The breaker opened meanwhile: counted as a skip, as every call it turns away.
        (TierUnavailable("circuit open"), [True, True], (0, 1)),
        # Redis answered, but the fill of "b" failed: a writer may have come for it.
        (PartialFill("the fill of b failed", kept={"a"}), [True, False], (0, 1)),
    ],
)
def test_a_leased_batch_whose_fill_fails_on_redis_fills_memory_with_what_it_may(
    redis_server: RedisServer,
    namespace: str,
    error: Exception,
    in_memory: list[bool],
    errors_and_skips: tuple[int, int],
) -> None:
    memory = MemoryTier(name="memory", max_entries=100)
    shared = FillsFail(redis.Redis.from_url(redis_server.url), namespace=namespace)
    shared.error = error
    cache = TieredCache([memory, shared], protection=Protection.never_stale())
    got = cache.get_many(["a", "b"], lambda keys: dict.fromkeys(keys, "v"))
    assert got == {"a": "v", "b": "v"}  # its caller is served what it read
    assert [key in memory for key in ("a", "b")] == in_memory
    redis_stats = cache.stats()["tiers"][1]
    assert (redis_stats["errors"], redis_stats["skips"]) == errors_and_skips
    assert redis_stats["fills"] == 0
    cache.close()


def leaves_no_exception_behind(read: Callable[[], object]) -> object:
    """``read()``'s result, run on a new thread that is handling no exception once it
    returned (``sys.exc_info()``) and raises its next error with no ``__context__``. A thread
    of its own, as a left exception stays its thread's until it handles another: on the
    test's thread it would reach the tests after this one."""
    seen: list[tuple[object, object, object]] = []

    def run() -> None:
        got = read()
        left = sys.exc_info()[1]
        try:
            raise ValueError("raised after the read")
        except ValueError as exc:
            seen.append((got, left, exc.__context__))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    got, left, context = seen[0]
    assert left is None
    assert context is None
    return got


def test_a_read_whose_leased_fill_failed_leaves_no_exception_behind(
    redis_server: RedisServer, namespace: str
) -> None:
    """Compiled (mypyc 2.4), the fence's steps gave the leases back from inside the except
    block that caught the fill's failure: a compiled generator suspended there left that
    failure as the exception its thread was handling after the read returned, for good.
    Every error raised on that thread afterwards carried it as ``__context__`` (an asyncio
    test's CodecError showed another test's Redis failure) and kept its frames alive.
    (``get_many`` was spared: its fill runs inside the batch load's uncompiled generator,
    whose own exception state took the leak and was dropped with it.)"""
    memory = MemoryTier(name="memory", max_entries=100)
    shared = FillsFail(redis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = TieredCache([memory, shared], protection=Protection.never_stale())

    assert leaves_no_exception_behind(lambda: cache.get("a", lambda: "v")) == "v"
    assert cache.stats()["tiers"][1]["errors"] == 1  # the fill under the leases failed
    cache.close()


def test_a_read_whose_value_redis_cannot_encode_leaves_no_exception_behind(
    redis_server: RedisServer, namespace: str
) -> None:
    """The same, where the fill under the lease refused the value (a CodecError the caller
    gets and handles): the lease was given back from inside the except block."""
    cache = chain(redis_server.url, namespace)

    def read() -> object:
        with pytest.raises(CodecError):
            cache.get("a", lambda: {1: "a key JSON cannot hold"})
        return "refused"

    assert leaves_no_exception_behind(read) == "refused"
    cache.close()


def test_a_leased_batch_writes_a_tier_below_redis_plainly(
    redis_server: RedisServer, namespace: str
) -> None:
    """Only Redis is filled under the leases; a tier below it (a local disk cache, say) is
    written as the tiers above it are."""
    disk = MemoryTier(name="disk", max_entries=100)
    shared = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = TieredCache(
        [MemoryTier(name="memory", max_entries=100), shared, disk],
        protection=Protection.never_stale(),
    )
    got = cache.get_many(["a", "b"], lambda keys: dict.fromkeys(keys, "v"))
    assert got == {"a": "v", "b": "v"}
    assert "a" in disk and "b" in disk
    stats = cache.stats()["tiers"]
    assert [entry["fills"] for entry in stats] == [2, 2, 2]
    assert [entry["errors"] for entry in stats] == [0, 0, 0]
    cache.close()


def test_a_miss_interrupted_while_its_lease_is_taken_gives_it_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """A Ctrl-C (or a signal-raised time limit) that lands while the miss's lease call is on
    the wire -- sent, Redis took the lease under the token this process made, the reply not
    read yet: where a blocked caller waits -- gave nothing back: the caller never saw the
    token, and the lease stayed until ``lease_ttl`` (every process reading the key waited
    ``lease_wait`` for a holder that was gone). Seen in a storm of interrupts on a real
    Redis: 13 to 26 leases left per 3,000 reads. The interrupt is a real signal; the reply
    is held back by the fault proxy until it landed."""
    from tiered_cache.testing.interrupts import interrupted_when
    from tiered_cache.testing.servers import FaultProxy

    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        first = TieredCache.from_config(
            namespace=namespace,
            bus={"kind": "off"},
            tiers=[{"kind": "memory"}, {"kind": "redis", "url": proxy.url(), "timeout": "30s"}],
            protection={"lease_ttl": "30s", "lease_wait": "30s", "soft_timeout": None},
        )
        assert first.get("warm", lambda: "up") == "up"  # connected, scripts loaded
        watch = redis.Redis.from_url(redis_server.url)
        leases = f"*{namespace}*k*lease*"
        proxy.trickle(1, 0.2)  # every reply comes a byte at a time: the acquire's in seconds

        def once_the_lease_is_taken() -> None:
            until(lambda: watch.keys(leases), "the lease taken")

        # Once interrupted, the replies flow again: a give-back is answered at once.
        interrupted_when(
            once_the_lease_is_taken, lambda: first.get("k", lambda: "loaded"), proxy.restore
        )
        assert watch.keys(leases) == []  # was [b'{...:k}:lease'] until lease_ttl
        second = chain(redis_server.url, namespace, lease_wait="300ms")
        assert second.get("k", lambda: "loaded") == "loaded"
        assert second.stats()["lease_waits"] == 0
        watch.close()
        first.close()
        second.close()


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_write_interrupted_while_it_takes_its_leases_gives_them_back(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """A write takes its keys' leases (one ``SET PX`` each, tokens made here) before it
    writes the source; interrupted while Redis's reply was on its way, the leases stayed until
    ``lease_ttl`` and every reader of the keys waited ``lease_wait`` (seen failing: the lease
    keys still in Redis). ``set_many`` gave its leases back on an Exception only."""
    from tiered_cache.testing.interrupts import interrupted_when
    from tiered_cache.testing.servers import FaultProxy

    keys = ["k"] if how == "set" else ["k", "j"]
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        writer = TieredCache.from_config(
            namespace=namespace,
            bus={"kind": "off"},
            tiers=[{"kind": "memory"}, {"kind": "redis", "url": proxy.url(), "timeout": "30s"}],
            protection={"lease_ttl": "30s", "soft_timeout": None},
        )
        writer.set("warm", "up")  # connected, scripts loaded
        watch = redis.Redis.from_url(redis_server.url)
        leases = f"*{namespace}:[kj]}}:lease"
        proxy.trickle(1, 0.2)  # every reply comes a byte at a time

        def once_the_leases_are_taken() -> None:
            until(lambda: len(watch.keys(leases)) == len(keys), "every lease taken")

        def write() -> None:
            if how == "set":
                writer.set("k", "new")
            else:
                writer.set_many(dict.fromkeys(keys, "new"))

        # Once interrupted, the replies flow again: a give-back is answered at once.
        interrupted_when(once_the_leases_are_taken, write, proxy.restore)
        assert watch.keys(leases) == []
        reader = chain(redis_server.url, namespace, lease_wait="300ms")
        assert reader.get_many(keys, lambda wanted: dict.fromkeys(wanted, "read")) == dict.fromkeys(
            keys, "read"
        )
        assert reader.stats()["lease_waits"] == 0
        watch.close()
        writer.close()
        reader.close()


@pytest.fixture(scope="module")
def small_bulk_redis() -> Iterator[RedisServer]:
    """A redis-server that takes no bulk string over 1 MiB (``proto-max-bulk-len``, 512 MB by
    default): a value it cannot take resets the connection, while it answers every other call."""
    with RedisServer(extra_args=["--proto-max-bulk-len", "1mb"]) as server:
        yield server


TOO_BIG = "x" * (2 * 1024 * 1024)
#: The tier's own bound off: the value must reach Redis to fail there (by default the tier
#: keeps a value over 1 MiB from being sent at all: test_redis_value_size.py).
NO_BOUND: dict[str, object] = {"max_value_size": None}


def leased_chain(face: type[Any], url: str, namespace: str, timeout: str) -> Any:
    """A chain of either face (``TieredCache``, ``AsyncTieredCache``): memory over the Redis at
    ``url``, no bus, leases that outlast the test (a lease left behind stays to be seen)."""
    return face.from_config(
        namespace=namespace,
        bus={"kind": "off"},
        tiers=[
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": timeout, **NO_BOUND},
        ],
        protection={"lease_ttl": "30s", "lease_wait": "30s", "max_stale": "0s"},
    )


@pytest.mark.parametrize("write", ["get", "get_many", "set", "set_many"])
def test_a_fill_that_fails_in_redis_gives_its_leases_back(
    small_bulk_redis: RedisServer, namespace: str, write: str
) -> None:
    """A leased fill that failed (any error but a partial fill) was taken for Redis being
    down, "nothing there to protect", and its leases were kept: with Redis up (a value too
    large for it) every other process waited lease_wait for a fill that never came."""
    first = chain(small_bulk_redis.url, namespace, NO_BOUND)
    second = chain(small_bulk_redis.url, namespace, NO_BOUND)
    if write == "get":
        assert first.get("a", lambda: TOO_BIG) == TOO_BIG
    elif write == "get_many":
        assert first.get_many(["a", "b"], lambda keys: dict.fromkeys(keys, TOO_BIG)) == {
            "a": TOO_BIG,
            "b": TOO_BIG,
        }
    elif write == "set":
        first.set("a", TOO_BIG)
    else:
        first.set_many({"a": TOO_BIG, "b": TOO_BIG})
    assert first.stats()["tiers"][1]["errors"] >= 1  # the fill did fail in Redis
    assert leases_in(small_bulk_redis, namespace) == []
    loads_without_waiting(second, ["a", "b"])
    first.close()
    second.close()


@pytest.mark.anyio
@pytest.mark.parametrize("write", ["get", "set"])
async def test_an_async_fill_that_fails_in_redis_gives_its_leases_back(
    small_bulk_redis: RedisServer, namespace: str, write: str
) -> None:
    """The asyncio chain runs the same fill steps (Fence.afill): the same give-back."""
    from tiered_cache import AsyncTieredCache

    cache = leased_chain(AsyncTieredCache, small_bulk_redis.url, namespace, "2s")

    async def load() -> str:
        return TOO_BIG

    if write == "get":
        assert await cache.get("a", load) == TOO_BIG
    else:
        await cache.set("a", TOO_BIG)
    assert cache.stats()["tiers"][1]["errors"] >= 1  # the fill did fail in Redis
    assert leases_in(small_bulk_redis, namespace) == []
    await cache.aclose()


def keys_on_two_nodes(cluster: RedisCluster, namespace: str) -> tuple[list[str], str]:
    """``([two keys held by one node, a key held by another], that node's address)``."""
    client = redis.RedisCluster.from_url(cluster.redis_url)
    try:
        node = {key: client.get_node_from_key(f"{namespace}:{key}").name for key in KEYS}
    finally:
        client.close()
    paused = node[KEYS[0]]
    alike = [key for key in KEYS if node[key] == paused]
    other = next(key for key in KEYS if node[key] != paused)
    return [*alike[:2], other], paused


KEYS = [f"k{i}" for i in range(64)]


class PausedWrites:
    """The cluster node at ``address`` refuses no call but answers no write (``CLIENT PAUSE
    WRITE``: every lease script waits) until :meth:`end`, or 20 s: a node that hangs."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self._client = redis.Redis(host=host, port=int(port))

    def begin(self) -> None:
        self._client.execute_command("CLIENT", "PAUSE", "20000", "WRITE")

    def end(self) -> None:
        self._client.execute_command("CLIENT", "UNPAUSE")
        self._client.close()


def lease_held(cluster: RedisCluster, namespace: str, key: str) -> bool:
    client = redis.RedisCluster.from_url(cluster.redis_url)
    try:
        return bool(client.exists(lease_key(f"{namespace}:{key}")))
    finally:
        client.close()


def test_a_partial_fill_on_a_cluster_gives_back_the_leases_a_node_that_fails_does_not_hold(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """On a cluster a batch fills one key at a time and stops at the first failure (a node
    that hangs): the tier gives the leases of the keys not filled back (PartialFill), one at a
    time too, and that give-back stopped at the first lease it could not release -- on the
    node that hangs -- so the key of a node that answers kept its lease until lease_ttl, and
    every other process reading it waited lease_wait for a fill that never came."""
    keys, address = keys_on_two_nodes(redis_cluster, namespace)
    paused = PausedWrites(address)
    first = leased_chain(TieredCache, redis_cluster.url, namespace, "200ms")

    def load(wanted: Sequence[str]) -> dict[str, str]:
        paused.begin()  # after the leases were taken: the fill of the first key hangs
        return {key: "v" for key in wanted}

    try:
        assert first.get_many(keys, load) == dict.fromkeys(keys, "v")
        assert first.stats()["tiers"][1]["skips"] == 1  # the PartialFill
        assert not lease_held(redis_cluster, namespace, keys[2])  # on the node that answers
    finally:
        paused.end()
    second = chain(redis_cluster.url, namespace)
    loads_without_waiting(second, keys[2:])
    first.close()
    second.close()


@pytest.mark.anyio
async def test_an_async_partial_fill_on_a_cluster_gives_back_the_leases_it_can(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """The asyncio tier sends the same steps (TierCommands): the same give-back."""
    from tiered_cache import AsyncTieredCache

    keys, address = keys_on_two_nodes(redis_cluster, namespace)
    paused = PausedWrites(address)
    cache = leased_chain(AsyncTieredCache, redis_cluster.url, namespace, "200ms")

    async def load(wanted: Sequence[str]) -> dict[str, str]:
        paused.begin()
        return {key: "v" for key in wanted}

    try:
        assert await cache.get_many(keys, load) == dict.fromkeys(keys, "v")
        assert cache.stats()["tiers"][1]["skips"] == 1
        assert not lease_held(redis_cluster, namespace, keys[2])
    finally:
        paused.end()
    await cache.aclose()


def failing_node_lookup(client: Any, name: str) -> None:
    """Make ``client.get_node_from_key`` fail for ``name`` (a slot-map refresh that fails
    right there: a node that moved, a cluster going down), as redis-py raises it."""
    lookup = client.get_node_from_key

    def get_node_from_key(key: str, *args: Any, **kwargs: Any) -> Any:
        if key == name:
            raise redis.exceptions.ClusterDownError("the slot map could not be refreshed")
        return lookup(key, *args, **kwargs)

    client.get_node_from_key = get_node_from_key


def test_a_cluster_give_back_goes_on_past_a_key_whose_node_cannot_be_found(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """The give-back asked the client which node holds each lease outside its try (ea0e5c5):
    a lookup that failed (the slot map refreshed under it, and that failed) stopped the
    give-back of the keys after it, on nodes that answer, and they held until lease_ttl."""
    keys, _ = keys_on_two_nodes(redis_cluster, namespace)
    client = redis.RedisCluster.from_url(redis_cluster.redis_url)
    tier = RedisTier(client, namespace=namespace)
    try:
        tokens = {key: tier.acquire_lease(key, 30.0)[0] for key in keys}
        failing_node_lookup(client, lease_key(f"{namespace}:{keys[0]}"))
        with pytest.raises(redis.exceptions.ClusterDownError):
            tier.release_leases({key: token for key, token in tokens.items() if token})
        assert [lease_held(redis_cluster, namespace, key) for key in keys] == [True, False, False]
    finally:
        tier.close()


@pytest.mark.anyio
async def test_an_async_cluster_give_back_goes_on_past_a_key_whose_node_cannot_be_found(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """The asyncio tier sends the same steps (TierCommands): the same give-back."""
    from redis.asyncio.cluster import RedisCluster as AsyncCluster
    from tiered_cache_redis import AsyncRedisTier

    keys, _ = keys_on_two_nodes(redis_cluster, namespace)
    client = AsyncCluster.from_url(redis_cluster.redis_url)
    tier = AsyncRedisTier(client, namespace=namespace)
    try:
        tokens = {key: (await tier.acquire_lease(key, 30.0))[0] for key in keys}
        failing_node_lookup(client, lease_key(f"{namespace}:{keys[0]}"))
        with pytest.raises(redis.exceptions.ClusterDownError):
            await tier.release_leases({key: token for key, token in tokens.items() if token})
        assert [lease_held(redis_cluster, namespace, key) for key in keys] == [True, False, False]
    finally:
        await tier.aclose()


# -- an interrupt in the instant a lease call has returned
#
# Redis gave the lease and the caller has the token; an interrupt (Ctrl-C's
# KeyboardInterrupt, a signal-raised time limit, an interrupt raised into an event loop)
# lands before the load's give-back covers it. Each test interrupts at a chosen line with a
# real signal (a trace function stops there: the loaders' modules must run as Python, so on
# a compiled core the test runs itself on the pure one, in a child).


def holding_a_lease(frame: Any) -> bool:
    """At a line run once the frame's ``token`` is a lease's."""
    return frame.f_locals.get("token") is not None


def holding_leases(frame: Any) -> bool:
    """At a line run once the frame's ``tokens`` hold a lease."""
    return any(frame.f_locals.get("tokens") or {})


@contextlib.contextmanager
def interrupted_at(code: Any, when: Any) -> Iterator[None]:
    """The body is interrupted at the first line of ``code`` where ``when(frame)`` holds."""
    from tiered_cache.testing.interrupts import Interrupted, interrupt_once, interrupting

    with interrupting() as interrupt:
        sys.settrace(interrupt_once(code, when, interrupt))
        try:
            with pytest.raises(Interrupted):
                yield
        finally:
            sys.settrace(None)


def no_lease_left(server: RedisServer, namespace: str, keys: list[str]) -> None:
    """Nothing holds the keys' leases: another process loads them without waiting."""
    assert leases_in(server, namespace) == []  # else they stay until lease_ttl
    other = chain(server.url, namespace, lease_wait="300ms")
    loads_without_waiting(other, keys)
    other.close()


def test_a_miss_interrupted_as_its_lease_call_returns_gives_it_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """Interrupted in ``LeaseWait.one`` at the line after the look that took the lease, and
    at the first line of ``SourceLoader.load`` run with the token in hand: both before the
    try whose give-back covered the load."""
    if compiled_core():
        on_the_pure_core(test_a_miss_interrupted_as_its_lease_call_returns_gives_it_back)
        return
    from tiered_cache.lease_wait import LeaseWait
    from tiered_cache.loader import SourceLoader

    cache = chain(redis_server.url, namespace)
    for key, code in [("k", LeaseWait.one.__code__), ("j", SourceLoader.load.__code__)]:
        with interrupted_at(code, holding_a_lease):
            cache.get(key, lambda: "v")
        no_lease_left(redis_server, namespace, [key])
    cache.close()


def test_a_batch_interrupted_as_its_lease_call_returns_gives_them_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """Interrupted in ``BatchLoad.run`` at the line after the look that took the leases,
    before ``load_and_fill``'s give-back covers them."""
    if compiled_core():
        on_the_pure_core(test_a_batch_interrupted_as_its_lease_call_returns_gives_them_back)
        return
    from tiered_cache.batch_load import BatchLoad

    cache = chain(redis_server.url, namespace)
    with interrupted_at(BatchLoad.run.__code__, holding_leases):
        cache.get_many(["a", "b"], lambda keys: dict.fromkeys(keys, "v"))
    no_lease_left(redis_server, namespace, ["a", "b"])
    cache.close()


def test_an_async_miss_interrupted_as_its_lease_call_returns_gives_it_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """Interrupted at the first line of ``AsyncSourceLoader.load`` run with the token in
    hand (an interrupt raised into the event loop), before the try that gives it back."""
    if compiled_core():
        on_the_pure_core(test_an_async_miss_interrupted_as_its_lease_call_returns_gives_it_back)
        return
    import asyncio

    from tiered_cache import AsyncTieredCache
    from tiered_cache.async_loader import AsyncSourceLoader

    cache = leased_chain(AsyncTieredCache, redis_server.url, namespace, "2s")

    async def value() -> str:
        return "v"

    async def read() -> None:
        with interrupted_at(AsyncSourceLoader.load.__code__, holding_a_lease):
            await cache.get("k", value)
        await cache.aclose()

    asyncio.run(read())
    no_lease_left(redis_server, namespace, ["k"])


def test_an_async_caller_cancelled_as_its_loop_ends_gives_its_lease_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """Ctrl-C under ``asyncio.run`` cancels the main task, and the run then cancels every
    task left: a give-back the cancelled caller spawned and did not wait for was cancelled
    before its first step, and the lease stayed until lease_ttl. The run is a forked child's
    (a process that ends after Ctrl-C); the main task is cancelled as asyncio.run's handler
    does, while it loads under the lease."""
    import asyncio

    from tiered_cache import AsyncTieredCache
    from tiered_cache.testing.forked import in_a_child

    def interrupted_run() -> str:
        cache = leased_chain(AsyncTieredCache, redis_server.url, namespace, "2s")

        async def main() -> None:
            me = asyncio.current_task()
            assert me is not None

            async def load() -> str:
                me.cancel()  # asyncio.run's SIGINT handler: the main task is cancelled
                await asyncio.Event().wait()
                return "never"

            await cache.get("k", load)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert in_a_child(interrupted_run, timeout=30) == "cancelled"
    no_lease_left(redis_server, namespace, ["k"])


def started_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[str]]:
    """A started thread that runs ``call``, and the list it ends with: what ``call``
    returned (its repr), or its error's type."""
    ended: list[str] = []

    def end() -> None:
        try:
            ended.append(repr(call()))
        except Exception as exc:
            ended.append(type(exc).__name__)

    thread = threading.Thread(target=end)
    thread.start()
    return thread, ended


class HeldLoad:
    """A reader thread whose load runs until the block ends: ``read(load)`` reads through
    ``load(keys)``; the block is entered once the load runs. ``ended`` holds what the read
    ended with (its value, or its error's type)."""

    def __init__(self, read: Any) -> None:
        self._started, self._release = threading.Event(), threading.Event()
        self.ended: list[str] = []
        self._thread = threading.Thread(target=lambda: self._end(read))

    def _load(self, keys: Sequence[str]) -> dict[str, str]:
        self._started.set()
        self._release.wait(10)
        return dict.fromkeys(keys, "v")

    def _end(self, read: Any) -> None:
        try:
            self.ended.append(repr(read(self._load)))
        except Exception as exc:
            self.ended.append(type(exc).__name__)

    def __enter__(self) -> HeldLoad:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release.set()
        self._thread.join(10)


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_close_while_a_load_is_in_flight_gives_its_lease_back(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """A process shutting down cleanly (``close()``) while a reader loads a key under its
    lease: the tier closed under the load, whose fill and give-back then could not reach
    Redis, and the lease stayed until lease_ttl (every other process waited lease_wait).
    close() gives the leases of the loads in flight back before the tiers close; it does not
    wait for the source (a hung one would hang the shutdown)."""
    cache = chain(redis_server.url, namespace)

    def read(load: Any) -> object:
        if how == "get":
            return cache.get("k", lambda: load(["k"])["k"])
        return cache.get_many(["k"], load)

    with HeldLoad(read) as reader:
        assert len(leases_in(redis_server, namespace)) == 1  # the reader's
        cache.close()
        assert leases_in(redis_server, namespace) == []  # at once, the load still running
    # The reader gets what it loaded: its fill of Redis, refused, is the tier's failure (the
    # closed tier's RuntimeError came out of get bare, asking whether the key can be leased).
    assert reader.ended == [repr("v" if how == "get" else {"k": "v"})]
    no_lease_left(redis_server, namespace, ["k"])


async def aread_k(
    cache: Any, how: str, load: Callable[[Sequence[str]], Awaitable[dict[str, str]]]
) -> object:
    """The asyncio ``cache`` reads ``k`` through ``load`` (``get`` or ``get_many``, as
    ``how`` says): what it served, or its error's type."""

    async def one() -> str:
        return (await load(["k"]))["k"]

    try:
        if how == "get":
            return await cache.get("k", one)
        return await cache.get_many(["k"], load)
    except Exception as exc:
        return type(exc).__name__


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["get", "get_many"])
async def test_aclose_while_a_load_is_in_flight_gives_its_lease_back(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """:func:`test_close_while_a_load_is_in_flight_gives_its_lease_back` for the asyncio
    chain: ``aclose()`` while a coroutine loads under the lease."""
    import asyncio

    from tiered_cache import AsyncTieredCache

    cache = leased_chain(AsyncTieredCache, redis_server.url, namespace, "2s")
    started, release = asyncio.Event(), asyncio.Event()

    async def load(keys: Sequence[str]) -> dict[str, str]:
        started.set()
        await release.wait()
        return dict.fromkeys(keys, "v")

    reader = asyncio.ensure_future(aread_k(cache, how, load))
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert len(leases_in(redis_server, namespace)) == 1  # the reader's
        await cache.aclose()
        assert leases_in(redis_server, namespace) == []  # at once, the load still running
    finally:
        release.set()
        ended = await asyncio.wait_for(reader, 10)
    assert ended == ("v" if how == "get" else {"k": "v"})  # see the sync test
    no_lease_left(redis_server, namespace, ["k"])


def test_a_closed_tier_sends_no_lease_script(redis_server: RedisServer, namespace: str) -> None:
    """A Lua script the tier had registered went on reaching Redis after close() (it was
    bound to the client, and did not ask the tier for it): a load's give-back or fill that
    came after close reconnected the closed client's pool, a connection nobody closed."""
    tier = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    for _ in range(2):  # the second time, the scripts are registered
        token, _ = tier.acquire_lease("k", 30.0)
        assert token is not None
        tier.release_lease("k", token)
    # Another holder's lease, which the closing tier does not give back: a release of it
    # that reached Redis would drop it.
    holder = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    token, _ = holder.acquire_lease("k", 30.0)
    assert token is not None
    tier.close()
    with pytest.raises(RuntimeError, match="is closed"):
        tier.release_lease("k", token)
    assert leases_in(redis_server, namespace) != []  # it never reached Redis
    holder.close()


@pytest.mark.anyio
async def test_a_closed_async_tier_sends_no_lease_script(
    redis_server: RedisServer, namespace: str
) -> None:
    """The asyncio tier's twin of :func:`test_a_closed_tier_sends_no_lease_script`."""
    from tiered_cache_redis import AsyncRedisTier, make_async_client

    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    for _ in range(2):  # the second time, the scripts are registered
        token, _ = await tier.acquire_lease("k", 30.0)
        assert token is not None
        await tier.release_lease("k", token)
    holder = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    token, _ = await holder.acquire_lease("k", 30.0)  # see the sync test
    assert token is not None
    await tier.aclose()
    with pytest.raises(RuntimeError, match="is closed"):
        await tier.release_lease("k", token)
    assert leases_in(redis_server, namespace) != []
    await holder.aclose()


def test_a_forked_child_closing_its_chain_leaves_the_parents_leases_alone(
    redis_server: RedisServer, namespace: str
) -> None:
    """close() gives back the leases of the loads in flight: in a child forked while a
    parent thread loads under a lease, those are the parent's (the child inherits the
    loader's memory, not its threads). A child that closed its chain (a worker exiting)
    gave them back and the parent's fill was refused: the key never reached Redis."""
    from tiered_cache.testing.forked import in_a_child

    cache = chain(redis_server.url, namespace)

    def child_closes() -> int:
        cache.close()
        return len(leases_in(redis_server, namespace))

    with HeldLoad(lambda load: cache.get("k", lambda: load(["k"])["k"])):
        assert in_a_child(child_closes, timeout=30) == 1  # still the parent's
    assert cache.stats()["lease_lost"] == 0
    stored = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    assert value_of(stored.get("k")) == "v"  # filled under the lease
    stored.close()
    cache.close()


def value_of(entry: Any) -> Any:
    return MISSING if entry is MISSING else entry.value


def stalled_chain(url: str, namespace: str) -> TieredCache:
    """A chain whose Redis calls time out after 100 ms (no breaker: one timeout is enough)."""
    return TieredCache.from_config(
        namespace=namespace,
        bus={"kind": "off"},
        tiers=[
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "100ms", "breaker": {"enabled": False}},
        ],
        protection={"lease_ttl": "30s", "lease_wait": "30s", "soft_timeout": None},
    )


def test_a_lease_call_that_timed_out_is_given_back_once_redis_answers(
    redis_server: RedisServer, namespace: str
) -> None:
    """Redis stalls (SIGSTOP: a fork for a save, a swap storm, a paused VM) while a miss asks
    for its lease: the call times out and the miss loads without a lease, but the call sat in
    Redis's socket and ran when Redis woke up, taking the lease under a token nobody held.
    It held until lease_ttl and every process reading the key waited lease_wait (seen failing:
    the lease key still in Redis after the chain's next call). The tier now keeps the tokens
    of lease calls that timed out and gives them back after its next call Redis answers."""
    import os
    import signal

    assert redis_server.pid is not None
    first = stalled_chain(redis_server.url, namespace)
    assert first.get("warm", lambda: "up") == "up"  # connected, scripts loaded
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        assert first.get("k", lambda: "loaded alone") == "loaded alone"
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while not leases_in(redis_server, namespace):  # the stalled call runs as Redis wakes up
        assert time.monotonic() < deadline, "the stalled lease call never ran"
        time.sleep(0.01)
    assert first.get("j", lambda: "v") == "v"  # a miss Redis answers
    no_lease_left(redis_server, namespace, ["k"])
    first.close()


def test_a_fill_and_give_back_that_timed_out_are_given_back_once_redis_answers(
    redis_server: RedisServer, namespace: str
) -> None:
    """Redis stalls (SIGSTOP) while a miss loads under its lease: its fill and then its
    give-back time out, and neither ever ran (each went out on a connection made during the
    stall, whose handshake timed out first). The lease held until lease_ttl: every process
    reading the key waited lease_wait (seen failing: the lease key still in Redis after the
    chain's next call). The tier keeps the tokens of fills and give-backs that timed out and
    gives them back after its next lease call Redis answers."""
    import os
    import signal

    assert redis_server.pid is not None
    pid = redis_server.pid
    first = stalled_chain(redis_server.url, namespace)
    assert first.get("warm", lambda: "up") == "up"  # connected, scripts loaded
    shared = first.tiers[1]

    def load() -> str:
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(redis.TimeoutError):  # its connection is dropped: the next is new
            shared.release_lease("another", "token")
        return "loaded"

    try:
        assert first.get("k", load) == "loaded"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert first.get("j", lambda: "v") == "v"  # a miss Redis answers
    no_lease_left(redis_server, namespace, ["k"])
    first.close()


def nothing_of_k_in_redis(server: RedisServer, namespace: str) -> None:
    """Neither a lease nor a value of the key ``k``: filled nowhere shared, nothing held."""
    client = redis.Redis.from_url(server.url)
    try:
        assert client.keys(f"*{namespace}*k*") == []
    finally:
        client.close()


class HeldRead(RedisTier):
    """A Redis tier whose next read, once :attr:`held` is armed, waits at the gate (after
    Redis answered it): the instant a chain closes under a read in flight."""

    def __init__(self, url: str, namespace: str, held: Gate) -> None:
        super().__init__(redis.Redis.from_url(url), namespace=namespace, owns_client=True)
        self.held = held

    def get(self, key: str) -> Entry | MissingType:
        entry = super().get(key)
        self.held.hold()
        return entry

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        entries = super().get_many(keys)
        self.held.hold()
        return entries


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_a_read_that_missed_redis_as_the_chain_closed_ends_without_a_bare_error(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """close() while a read's Redis read is in flight (it misses): the read goes on to its
    lease and its load, and asked the closed tier whether the key can be leased, which asked
    for the client: ``RuntimeError: tier 'redis' is closed`` came out of ``get`` bare (seen
    failing; the same after a lease call that failed on the closing tier, and in the fill).
    The read ends with what it loaded, nothing taken or written in Redis."""
    held = Gate(timeout=10)
    cache = TieredCache(
        [MemoryTier(), HeldRead(redis_server.url, namespace, held)],
        protection=Protection.never_stale(lease_ttl=30.0),
    )
    assert cache.get("warm", lambda: "up") == "up"  # connected
    held.armed = True

    def read(load: Any) -> object:
        if how == "get":
            return cache.get("k", lambda: load(["k"])["k"])
        return cache.get_many(["k"], load)

    reader, ended = started_thread(lambda: read(lambda keys: dict.fromkeys(keys, "v")))
    try:
        assert held.inside.wait(10)
        cache.close()
    finally:
        held.go.set()
        reader.join(10)
    assert ended == [repr("v" if how == "get" else {"k": "v"})]
    nothing_of_k_in_redis(redis_server, namespace)


class AsyncHeldRead(AsyncRedisTier):
    """:class:`HeldRead` for the asyncio tier: its next read, once armed, waits for ``go``
    after Redis answered it."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(aioredis.Redis.from_url(url), namespace=namespace)
        self.armed = False
        self.inside, self.go = asyncio.Event(), asyncio.Event()

    async def _hold(self) -> None:
        if self.armed:
            self.armed = False
            self.inside.set()
            await self.go.wait()

    async def get(self, key: str) -> Entry | MissingType:
        entry = await super().get(key)
        await self._hold()
        return entry

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        entries = await super().get_many(keys)
        await self._hold()
        return entries


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["get", "get_many"])
async def test_an_async_read_that_missed_redis_as_the_chain_closed_ends_without_a_bare_error(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """:func:`test_a_read_that_missed_redis_as_the_chain_closed_ends_without_a_bare_error`
    for the asyncio chain: ``aclose()`` while a coroutine's Redis read is in flight."""
    from tiered_cache import AsyncTieredCache

    tier = AsyncHeldRead(redis_server.url, namespace)
    cache = AsyncTieredCache(
        [MemoryTier(), tier], protection=Protection.never_stale(lease_ttl=30.0)
    )

    async def up() -> str:
        return "up"

    async def load(keys: Sequence[str]) -> dict[str, str]:
        return dict.fromkeys(keys, "v")

    assert await cache.get("warm", up) == "up"  # connected
    tier.armed = True
    reader = asyncio.ensure_future(aread_k(cache, how, load))
    try:
        await asyncio.wait_for(tier.inside.wait(), 10)
        await cache.aclose()
    finally:
        tier.go.set()
        ended = await asyncio.wait_for(reader, 10)
    assert ended == ("v" if how == "get" else {"k": "v"})
    nothing_of_k_in_redis(redis_server, namespace)


class StopsAfterRead(RedisTier):
    """A Redis tier over a cluster whose batch reads, while :attr:`stop` names a node's
    pid, SIGSTOP that node once Redis answered: the lease calls that follow go out on
    connections already open and sit in the stopped node's socket."""

    stop: int | None = None

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        entries = super().get_many(keys)
        if self.stop is not None:
            os.kill(self.stop, signal.SIGSTOP)
        return entries


def test_a_cluster_batch_lease_call_that_timed_out_is_given_back_once_redis_answers(
    namespace: str,
) -> None:
    """On a cluster a batch's lease calls go one key at a time, each failure kept in its
    place: a call to a node that stalled (SIGSTOP) timed out there, was neither kept nor
    given back, and ran when the node woke, taking the lease under a token nobody held (seen
    failing: the lease held after the chain's next lease call). Kept like the other calls
    that timed out (doubted.py), it is given back after the next lease call Redis answers.
    (A cluster of its own: a node of the shared one stopped would stall the other tests.)"""
    with RedisCluster() as cluster:
        keys, address = keys_on_two_nodes(cluster, namespace)
        node = next(node for node in cluster.nodes if address.endswith(f":{node.port}"))
        client = redis.RedisCluster.from_url(cluster.redis_url, socket_timeout=0.2)
        tier = StopsAfterRead(client, namespace=namespace)
        first = TieredCache([MemoryTier(), tier], protection=Protection.never_stale(lease_ttl=30.0))
        alike = keys[:2]  # both on the node that stops
        assert first.get_many(alike, lambda wanted: dict.fromkeys(wanted, "up"))  # connected
        first.invalidate_many(alike)
        tier.stop = node.pid
        try:
            loaded = first.get_many(alike, lambda wanted: dict.fromkeys(wanted, "v"))
        finally:
            tier.stop = None
            assert node.pid is not None
            os.kill(node.pid, signal.SIGCONT)
        assert loaded == dict.fromkeys(alike, "v")
        deadline = time.monotonic() + 10
        while not lease_held(cluster, namespace, alike[0]):  # the stalled call runs
            assert time.monotonic() < deadline, "the stalled lease call never ran"
            time.sleep(0.01)
        assert first.get(keys[2], lambda: "v") == "v"  # a lease call Redis answers
        assert not lease_held(cluster, namespace, alike[0])
        first.close()


# -- a write in flight as the chain closes


class HeldStores(DictSource):
    """A source whose ``store`` of each key waits at that key's gate: a write held between
    its leases and its fill (it takes the leases before it writes the source)."""

    def __init__(self, gates: dict[str, Gate]) -> None:
        super().__init__()
        self.gates = gates

    def store(self, key: str, value: Any) -> None:
        self.gates[key].hold()
        super().store(key, value)


def write_k(cache: Any, how: str) -> Any:
    """``cache`` writes ``k`` (``set`` or ``set_many``, as ``how`` says): its call."""
    if how == "set":
        return cache.set("k", "w")
    return cache.set_many({"k": "w", "j": "w"})


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_close_while_a_write_is_in_flight_gives_its_leases_back(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """A write steals its keys' leases before it writes the source; ``close()`` while it is
    there gave back only the loads' leases, and the write's fill (or invalidation) then found
    the tier closed: its leases stayed until lease_ttl (seen: 2 to 5 left in each of 15
    rounds of 6 writer threads). close() gives them back as it does a load's."""
    gate = Gate(timeout=10.0)
    gate.armed = True
    cache = TieredCache(
        [MemoryTier(), RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)],
        HeldStores({"k": gate, "j": gate}),  # one gate: the first store waits
        namespace=namespace,
        protection=Protection.never_stale(lease_ttl=30.0, lease_wait=30.0),
    )
    writer, ended = started_thread(lambda: write_k(cache, how))
    try:
        assert gate.inside.wait(10)
        assert len(leases_in(redis_server, namespace)) == (1 if how == "set" else 2)
        cache.close()
        assert leases_in(redis_server, namespace) == []  # at once, the write still held
    finally:
        gate.go.set()
        writer.join(10)
    assert not writer.is_alive() and len(ended) == 1
    no_lease_left(redis_server, namespace, ["k"] if how == "set" else ["k", "j"])


class HeldGiveBack(RedisTier):
    """A Redis tier whose give-backs of one lease (``release_lease``) wait at ``gate`` once
    they went out: a close held between its give-back and the closing of its tiers."""

    def __init__(self, gate: Gate, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    def release_lease(self, key: str, token: str) -> None:
        super().release_lease(key, token)
        self.gate.hold()


def test_a_write_begun_as_close_gives_leases_back_takes_none(
    redis_server: RedisServer, namespace: str
) -> None:
    """A write that began once close() had given the leases back, before it closed the
    chain's paths, stole a lease that nothing gave back (its fill then found the tier
    closed): it held until lease_ttl. Such a write is refused (ChainClosedError)."""
    stores = {key: Gate(timeout=10.0) for key in ("k", "j")}
    for gate in stores.values():
        gate.armed = True
    give_back = Gate(timeout=10.0)
    give_back.armed = True
    tier = HeldGiveBack(give_back, redis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = TieredCache(
        [MemoryTier(), tier],
        HeldStores(stores),
        namespace=namespace,
        protection=Protection.never_stale(lease_ttl=30.0, lease_wait=30.0),
    )
    first, _ = started_thread(lambda: cache.set("k", "w"))  # a lease for close to give back
    assert stores["k"].inside.wait(10)
    closer, _ = started_thread(cache.close)
    try:
        assert give_back.inside.wait(10)
        second, ended = started_thread(lambda: cache.set("j", "w"))
        while second.is_alive() and not stores["j"].inside.is_set():
            second.join(0.01)  # it ends (refused) or is held in its store, its lease taken
    finally:
        give_back.go.set()
        closer.join(10)
        for gate in stores.values():
            gate.go.set()
        first.join(10)
        second.join(10)
    assert leases_in(redis_server, namespace) == []  # else j's stays until lease_ttl
    assert ended == ["ChainClosedError"]
    no_lease_left(redis_server, namespace, ["k", "j"])
