"""Leases in Redis: one source read per fleet for a cold key, and no late fill after an
invalidation, with real processes and a real redis-server."""

from __future__ import annotations

import collections
import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from tiered_cache_redis import RedisTier, make_client
from tiered_cache_redis.leases import lease_key

from tiered_cache import MISSING, CodecError, Entry, MemoryTier, TieredCache, TierUnavailable
from tiered_cache.leases import LeasingTier, PartialFill
from tiered_cache.protection import Protection
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.polling import until
from tiered_cache.testing.servers import FaultProxy, RedisCluster, RedisServer
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import MissingType

from .one_cold_key import four_processes_read_one_cold_key


@pytest.fixture
def tier(redis_server: RedisServer, namespace: str) -> Iterator[RedisTier]:
    tier = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    yield tier
    tier.close()


#: No stale serving, no timeouts: a load is the only way to a new value.
STRICT = Protection.never_stale()


def entry(value: object) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60, now + 120)


def test_redis_tier_offers_leases(tier: RedisTier) -> None:
    assert isinstance(tier, LeasingTier)


@pytest.mark.parametrize("batch", [False, True], ids=["one key", "batch"])
def test_a_fill_already_past_its_expiry_removes_the_older_copy(
    tier: RedisTier, batch: bool
) -> None:
    """A load whose entry expired before it could be stored keeps nothing, and the older
    copy it was loaded to replace must not outlive it. The batch form used to give the lease
    back and leave the older copy in Redis (the one-key form and the asyncio tier removed
    it)."""
    tier.set("k", entry("old"))
    token, current = tier.acquire_lease("k", ttl=5)
    assert token is not None and current and current.value == "old"
    now = time.time()
    gone = Entry("new", now - 10, now - 5, now - 1)
    if batch:
        assert tier.fill_with_leases({"k": (gone, token)}) == {"k"}
    else:
        assert tier.fill_with_lease("k", gone, token)
    assert tier.get("k") is MISSING
    assert lease(tier) is not None  # the lease was given back


def lease(tier: RedisTier, key: str = "k", ttl: float = 5) -> str | None:
    token, _ = tier.acquire_lease(key, ttl=ttl)
    return token


def test_one_holder_at_a_time_and_fill_releases(tier: RedisTier) -> None:
    token, current = tier.acquire_lease("k", ttl=5)
    assert token is not None
    assert current is MISSING
    assert lease(tier) is None
    assert tier.fill_with_lease("k", entry("v"), token)
    assert tier.get("k").value == "v"  # type: ignore[union-attr]
    token, current = tier.acquire_lease("k", ttl=5)  # the fill gave the lease up
    assert token is not None
    assert current and current.value == "v"  # and the look came with it


def test_an_invalidation_voids_the_lease(tier: RedisTier) -> None:
    token = lease(tier)
    assert token is not None
    tier.delete("k")  # a writer invalidates while the holder is loading
    assert not tier.fill_with_lease("k", entry("read before the write"), token)
    assert not tier.get("k")


def test_a_write_voids_the_lease(tier: RedisTier) -> None:
    token = lease(tier)
    assert token is not None
    tier.set("k", entry("written"))
    assert not tier.fill_with_lease("k", entry("old"), token)
    assert tier.get("k").value == "written"  # type: ignore[union-attr]


def test_a_dead_holders_lease_expires(tier: RedisTier) -> None:
    assert lease(tier, ttl=0.05) is not None
    deadline = time.monotonic() + 5
    token = None
    while token is None and time.monotonic() < deadline:
        time.sleep(0.02)
        token = lease(tier)
    assert token is not None


def test_release_only_by_the_holder(tier: RedisTier) -> None:
    token = lease(tier)
    assert token is not None
    tier.release_lease("k", "someone-else")
    assert lease(tier) is None
    tier.release_lease("k", token)
    assert lease(tier) is not None


def test_leases_of_a_batch_in_one_round_trip(tier: RedisTier) -> None:
    tier.set("filled", entry("there"))
    looks = tier.acquire_leases(["a", "b", "filled"], ttl=5)
    assert [looks[key][0] is not None for key in ("a", "b", "filled")] == [True, True, True]
    assert looks["a"][1] is MISSING
    filled = looks["filled"][1]
    assert filled and filled.value == "there"  # the look came with the lease
    again = tier.acquire_leases(["a", "b"], ttl=5)
    assert again == {"a": (None, MISSING), "b": (None, MISSING)}  # held: nobody else gets them
    tokens = {key: looks[key][0] for key in ("a", "b", "filled")}
    tier.delete("b")  # an invalidation while "b" loads voids its lease
    kept = tier.fill_with_leases(
        {"a": (entry("A"), tokens["a"]), "b": (entry("B"), tokens["b"])}  # type: ignore[dict-item]
    )
    assert kept == {"a"}
    assert tier.get("a").value == "A"  # type: ignore[union-attr]
    assert not tier.get("b")
    tier.release_leases({"filled": tokens["filled"]})  # type: ignore[dict-item]
    assert tier.acquire_leases(["a", "filled"], ttl=5)["filled"][0] is not None


def test_an_unencodable_value_in_a_batch_fill_writes_nothing(tier: RedisTier) -> None:
    looks = tier.acquire_leases(["good", "bad"], ttl=5)
    with pytest.raises(CodecError):
        tier.fill_with_leases(
            {
                "good": (entry("fine"), looks["good"][0]),  # type: ignore[dict-item]
                "bad": (entry(object()), looks["bad"][0]),  # type: ignore[dict-item]
            }
        )
    assert not tier.get("good")


def test_a_batch_whose_leases_cannot_all_be_taken_leaves_none_behind(
    tier: RedisTier, redis_server: RedisServer, namespace: str
) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    raw.hset(f"{namespace}:bad", "not", "a cache entry")  # the lease script's GET fails on it
    with pytest.raises(TierUnavailable):
        tier.acquire_leases(["a", "bad", "c"], ttl=5)
    # The leases taken for "a" and "c" were given back: nobody waits for a load that the
    # caller, seeing the error, makes without leases.
    assert raw.exists(lease_key(f"{namespace}:a"), lease_key(f"{namespace}:c")) == 0
    raw.close()


def test_a_batch_fill_that_partly_fails_says_which_keys_were_written(
    tier: RedisTier, redis_server: RedisServer, namespace: str
) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    looks = tier.acquire_leases(["a", "b"], ttl=5)
    broken = lease_key(f"{namespace}:b")
    raw.delete(broken)
    raw.hset(broken, "not", "a lease")  # the fill script's GET of b's lease fails on it
    with pytest.raises(PartialFill) as failure:
        tier.fill_with_leases(
            {key: (entry(key.upper()), looks[key][0]) for key in ("a", "b")}  # type: ignore[misc]
        )
    assert failure.value.kept == {"a"}
    assert tier.get("a").value == "A"  # type: ignore[union-attr]
    assert not tier.get("b")
    raw.close()


def chain(url: str, namespace: str, bus: str = "auto", **protection: object) -> TieredCache:
    """Memory over Redis; with a bus, subscribed before it is used: while the bus starts,
    memory is bypassed (nothing kept there), and a test that reads memory after a load saw
    MISSING on a busy machine (`assert 'MISSING' == 'A'`, a fresh clone's run)."""
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s"},
        ],
        protection={"lease_poll": "10ms", **protection},
        bus={"kind": bus},
    )
    link = cache._bus_link
    if link is not None:
        assert link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    return cache


def every_copy_fresh_for(cache: TieredCache, key: str, seconds: float) -> None:
    """Every tier of ``cache`` holds ``key``, fresh for ``seconds`` after its load (the
    write's ttl, not the chain's)."""
    for tier in cache.tiers:
        entry = tier.get(key)
        assert isinstance(entry, Entry), tier.name
        assert entry.soft_expiry - entry.loaded_at == pytest.approx(seconds, abs=1e-3), tier.name


def test_a_set_under_the_keys_lease_keeps_its_ttl(
    redis_server: RedisServer, namespace: str
) -> None:
    """A write-through under the key's lease (the chain leases): every copy it writes goes
    stale after the set's ttl, not the chain's (an hour by default)."""
    cache = chain(redis_server.url, namespace, bus="off")
    cache.set("k", "v", ttl="2s")
    every_copy_fresh_for(cache, "k", 2.0)
    cache.close()


def test_two_chains_threads_on_a_cold_key_read_the_source_once(
    redis_server: RedisServer, namespace: str
) -> None:
    caches = [chain(redis_server.url, namespace), chain(redis_server.url, namespace)]
    reads: list[int] = []
    lock = threading.Lock()

    def source() -> str:
        with lock:
            reads.append(1)
        # Loads until the other chain's leader finds the lease held (it then waits for it).
        until(
            lambda: sum(cache.stats()["lease_waits"] for cache in caches) == 1,
            "the other chain waited for the lease",
        )
        return "value"

    results: list[str] = []
    barrier = threading.Barrier(40)

    def reader(cache: TieredCache) -> None:
        barrier.wait()
        results.append(cache.get("cold", source))

    threads = [threading.Thread(target=reader, args=(caches[i % 2],)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["value"] * 40
    assert len(reads) == 1
    waited = [cache.stats()["lease_waits"] for cache in caches]
    assert sum(waited) == 1  # the chain that lost the race waited once, for all its threads
    for cache in caches:
        cache.close()


def test_two_chains_batches_of_overlapping_cold_keys_read_each_key_once(
    redis_server: RedisServer, namespace: str
) -> None:
    caches = [chain(redis_server.url, namespace), chain(redis_server.url, namespace)]
    reads: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def batch_source(keys: Sequence[str]) -> dict[str, str]:
        with lock:
            reads.update(keys)
        time.sleep(0.1)
        return {key: f"value of {key}" for key in keys}

    keys = [f"tweet:{index}" for index in range(30)]
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def reader(cache: TieredCache, seed: int) -> None:
        wanted = random.Random(seed).sample(keys, 20)
        barrier.wait()
        try:
            assert cache.get_many(wanted, batch_source) == {k: f"value of {k}" for k in wanted}
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(caches[i % 2], i)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    read_keys = set(reads)
    assert all(reads[key] == 1 for key in read_keys), reads
    for cache in caches:
        cache.close()


@contextlib.contextmanager
def a_load_in_progress(cache: TieredCache, key: str, value: str) -> Iterator[threading.Event]:
    """``cache`` loads ``key`` on another thread, holding its lease until the event is set."""
    loading = threading.Event()
    may_finish = threading.Event()

    def slow_load() -> str:
        loading.set()
        assert may_finish.wait(10)
        return value

    thread = threading.Thread(target=lambda: cache.get(key, slow_load))
    thread.start()
    assert loading.wait(10)
    try:
        yield may_finish
    finally:
        may_finish.set()
        thread.join()


def test_a_batch_waits_for_the_holder_of_a_lease_then_loads_only_the_rest(
    redis_server: RedisServer, namespace: str
) -> None:
    holder = chain(redis_server.url, namespace)
    batch = chain(redis_server.url, namespace)
    loaded: list[list[str]] = []
    with a_load_in_progress(holder, "held", "from the holder") as may_finish:

        def batch_source(keys: Sequence[str]) -> dict[str, str]:
            loaded.append(list(keys))
            may_finish.set()  # the holder finishes while this batch waits for it
            return {key: "from the batch" for key in keys}

        got = batch.get_many(["free", "held"], batch_source)
    assert got == {"free": "from the batch", "held": "from the holder"}
    assert loaded == [["free"]]
    assert batch.stats()["lease_waits"] == 1
    holder.close()
    batch.close()


def test_a_batch_loads_a_key_itself_once_the_holder_is_too_slow(
    redis_server: RedisServer, namespace: str
) -> None:
    holder = chain(redis_server.url, namespace)
    batch = chain(redis_server.url, namespace, lease_wait="100ms")
    with a_load_in_progress(holder, "held", "late"):
        got = batch.get_many(["held"], lambda keys: {key: "own load" for key in keys})
    assert got == {"held": "own load"}
    assert batch.stats()["lease_wait_expired"] == 1
    holder.close()
    batch.close()


def test_keys_a_batch_loaded_are_served_while_it_waits_for_another_holder(
    redis_server: RedisServer, namespace: str
) -> None:
    # The holder's lease and the batch's patience both outlast the test: "held" stays held.
    holder = chain(redis_server.url, namespace, lease_ttl="30s")
    batch = chain(redis_server.url, namespace, lease_wait="30s")
    loading, may_return = threading.Event(), threading.Event()
    read: list[object] = []
    batches: list[dict[str, str]] = []

    def batch_source(keys: Sequence[str]) -> dict[str, str]:
        loading.set()
        assert may_return.wait(10)
        return {key: "from the batch" for key in keys}

    def waiters_of(key: str) -> int:
        flight = batch._loader.flights.in_flight(key)
        return 0 if flight is None else flight.waiters

    # The bus's first subscription is a gap (memory may have missed messages): landing while
    # "free" loads, it kept the reader from taking the batch's value (it read Redis again,
    # no wait counted: assert 0 == 1, one run in about ten on a loaded machine).
    until(lambda: batch.stats()["bus"] == "connected", "the batch's bus subscribed")
    with a_load_in_progress(holder, "held", "from the holder"):
        waiting = threading.Thread(
            target=lambda: batches.append(batch.get_many(["free", "held"], batch_source))
        )
        waiting.start()
        assert loading.wait(10)
        # While "free" loads, another caller asks for it and joins this batch's flight.
        reader = threading.Thread(target=lambda: read.append(batch.get("free")))
        reader.start()
        until(lambda: waiters_of("free") == 1, "the reader joined the batch's flight of free")
        may_return.set()
        reader.join(5)  # within the holder's own bound (10 s), which then lets it finish
        # The flight of "free" landed as soon as "free" was loaded: its reader is not held
        # up until the other process's holder of "held" finishes.
        assert read == ["from the batch"]
        assert batch.stats()["singleflight_waits"] == 1
    waiting.join(10)
    assert batches == [{"free": "from the batch", "held": "from the holder"}]
    holder.close()
    batch.close()


def redis_alone(url: str, namespace: str, *, bus: bool, **protection: object) -> TieredCache:
    """A chain whose first tier is the leasing tier: Redis alone (with a bus, subscribed)."""
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "redis", "url": url, "timeout": "2s"}],
        protection={"lease_poll": "10ms", **protection},
        bus={"kind": "redis", "url": url} if bus else {"kind": "off"},
    )
    if bus:
        assert cache._bus_link is not None
        assert cache._bus_link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    return cache


@pytest.mark.parametrize("batch", [False, True], ids=["one key", "batch"])
def test_a_holders_value_found_in_the_first_tier_fills_nothing_and_refuses_nothing(
    redis_server: RedisServer, namespace: str, batch: bool
) -> None:
    """The leasing tier first in the chain: the value its lease holder filled meanwhile has
    no faster tier to go to, so no fill to refuse, even when an invalidation of the key came
    since the wait's mark (as a first-tier hit of ``get`` or ``get_many``). Such a wait used
    to count a ``fills_refused`` for a copy that never was."""
    holder = redis_alone(redis_server.url, namespace, bus=False)  # its fill is not refused
    waiter = redis_alone(redis_server.url, namespace, bus=True, lease_wait="30s")
    announcer = TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "memory"}],
        bus={"kind": "redis", "url": redis_server.url},
    )
    got: list[object] = []

    def read() -> object:
        if batch:
            return waiter.get_many(["held"], lambda keys: dict.fromkeys(keys, "own load"))["held"]
        return waiter.get("held", lambda: "own load")

    with a_load_in_progress(holder, "held", "from the holder") as may_finish:
        reader = threading.Thread(target=lambda: got.append(read()))
        reader.start()
        until(lambda: waiter.stats()["lease_waits"] == 1, "the waiter waits for the holder")
        announcer.invalidate("held")  # heard by the waiter alone: Redis keeps the lease
        until(lambda: waiter.stats()["bus_received"] >= 1, "the waiter heard the invalidation")
        may_finish.set()
        reader.join(10)
    assert got == ["from the holder"]
    assert waiter.stats()["fills_refused"] == 0
    for cache in (holder, waiter, announcer):
        cache.close()


def test_a_batch_fill_that_partly_fails_keeps_the_failed_keys_out_of_memory(
    redis_server: RedisServer, namespace: str
) -> None:
    cache = chain(redis_server.url, namespace)
    raw = redis.Redis.from_url(redis_server.url)

    def load_and_break_a_lease(keys: Sequence[str]) -> dict[str, str]:
        broken = lease_key(f"{namespace}:b")
        raw.delete(broken)
        raw.hset(broken, "not", "a lease")
        return {key: key.upper() for key in keys}

    assert cache.get_many(["a", "b"], load_and_break_a_lease) == {"a": "A", "b": "B"}
    memory = cache.tiers[0]
    assert memory.get("a").value == "A"  # type: ignore[union-attr]
    assert not memory.get("b")  # its fill failed: a writer may have come meanwhile
    assert cache.stats()["tiers"][1]["errors"] + cache.stats()["tiers"][1]["skips"] == 1
    raw.close()
    cache.close()


def test_a_batch_load_racing_an_invalidation_keeps_the_old_value_out(
    redis_server: RedisServer, namespace: str
) -> None:
    reader = chain(redis_server.url, namespace, bus="off")
    writer = chain(redis_server.url, namespace, bus="off")
    source = {"a": "old", "b": "old"}

    def load_then_write(keys: Sequence[str]) -> dict[str, str]:
        values = {key: source[key] for key in keys}
        source["b"] = "new"  # a writer changes "b" after the batch read it ...
        writer.invalidate("b")  # ... and invalidates it before the batch fills
        return values

    assert reader.get_many(["a", "b"], load_then_write) == {"a": "old", "b": "old"}
    assert reader.stats()["lease_lost"] == 1
    assert reader.tiers[1].get("a").value == "old"  # type: ignore[union-attr]
    assert not reader.tiers[1].get("b")  # Redis did not take the old "b" ...
    assert not reader.tiers[0].get("b")  # ... nor the reader's memory
    assert reader.get("b", lambda: source["b"]) == "new"
    reader.close()
    writer.close()


def test_a_batch_with_a_value_redis_cannot_store_gives_its_leases_back(
    tier: RedisTier, redis_server: RedisServer, namespace: str
) -> None:
    cache = chain(redis_server.url, namespace)
    with pytest.raises(CodecError):
        cache.get_many(["a", "b"], lambda keys: {"a": "fine", "b": object()})
    looks = tier.acquire_leases(["a", "b"], ttl=5)  # nobody is left holding them
    assert all(token is not None for token, _ in looks.values())
    assert not tier.get("a") and not tier.get("b")  # and nothing was half written
    cache.close()


def test_a_batch_whose_lease_look_fails_loads_every_key_without_a_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    """Redis answers the batch's read but refuses its lease look: the batch loads every key
    in one read without leases, and the refusal is counted as an error of the tier: a call
    made that failed (a skip until the batch's failure became a TierCallFailed)."""
    raw = redis.Redis.from_url(redis_server.url)
    raw.hset(f"{namespace}:bad", "not", "a cache entry")  # the lease script's GET fails on it
    cache = chain(redis_server.url, namespace, bus="off")
    reads: list[list[str]] = []

    def load_many(keys: Sequence[str]) -> dict[str, str]:
        reads.append(list(keys))
        return {key: key.upper() for key in keys}

    assert cache.get_many(["a", "bad", "c"], load_many) == {"a": "A", "bad": "BAD", "c": "C"}
    assert reads == [["a", "bad", "c"]]
    stats = cache.stats()
    assert (stats["tiers"][1]["skips"], stats["tiers"][1]["errors"]) == (0, 1)
    assert stats["lease_waits"] == 0
    cache.close()
    raw.close()


def test_a_batch_loads_a_key_whose_copy_expires_at_the_very_moment_of_its_lease_look(
    redis_server: RedisServer, namespace: str
) -> None:
    """The lease look finds a copy that stops being fresh at this instant: that is no value
    a holder filled, so the batch loads the key under the lease it just got."""
    clock = FakeClock(time.time())  # near the real time: Redis's PX comes from this clock
    shared = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace, clock=clock)
    now = clock()
    shared.set_many(
        {"k": Entry("old", now - 10, now, now + 60), "one": Entry("old", now - 10, now, now + 60)}
    )
    cache = TieredCache([MemoryTier(clock=clock), shared], clock=clock, protection=STRICT)
    assert cache.get_many(["k"], lambda keys: {"k": "new"}) == {"k": "new"}
    assert shared.get("k").value == "new"  # type: ignore[union-attr]
    assert cache.get("one", lambda: "new") == "new"  # the single key's look, the same
    assert shared.get("one").value == "new"  # type: ignore[union-attr]
    cache.close()


class Refusing(DictSource):
    """A source that refuses every write."""

    def store(self, key: str, value: object) -> None:
        raise ConnectionError("source down")


def test_a_cluster_batch_loads_keys_with_braces_of_their_own_without_a_lease(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """On a cluster a key with braces of its own cannot share its slot with its lease: a
    batch loads it without one, the other keys under theirs, all in one read."""
    shared = RedisTier(make_client(redis_cluster.url, timeout=2.0), namespace=namespace)
    cache = TieredCache([MemoryTier(), shared], protection=Protection.never_stale())
    keys = ["plain", "{user:1}:a", "other"]
    reads: list[list[str]] = []

    def load_many(wanted: Sequence[str]) -> dict[str, str]:
        reads.append(sorted(wanted))
        return {key: key.upper() for key in wanted}

    assert cache.get_many(keys, load_many) == {key: key.upper() for key in keys}
    assert reads == [sorted(keys)]
    stats = cache.stats()
    assert (stats["tiers"][1]["skips"], stats["tiers"][1]["errors"]) == (0, 0)
    assert all(shared.get(key) is not MISSING for key in keys)
    # A single key's miss, too.
    assert cache.get("{user:1}:b", lambda: "B") == "B" and cache.get("single", lambda: "S") == "S"
    # Writes take the leases they can, too.
    cache.set("plain", "written")
    cache.set("{user:1}:a", "written")
    assert cache.get_many(keys) == {"plain": "written", "{user:1}:a": "written", "other": "OTHER"}
    # A write the source refuses gives back only the leases it took.
    refusing = TieredCache([MemoryTier(), shared], Refusing(), protection=Protection.never_stale())
    for key in ("{user:1}:c", "plain2"):
        with pytest.raises(ConnectionError):
            refusing.set(key, "never")
    for chain_ in (cache, refusing):
        tier = chain_.stats()["tiers"][1]
        assert (tier["skips"], tier["errors"]) == (0, 0)
    shared.clear()
    cache.close()


def cluster_chain(cluster: RedisCluster, namespace: str) -> tuple[TieredCache, RedisTier]:
    shared = RedisTier(make_client(cluster.url, timeout=2.0), namespace=namespace)
    return TieredCache([MemoryTier(), shared], protection=Protection.never_stale()), shared


@pytest.mark.parametrize("key", ["plain", "{user:1}:t"], ids=["leased", "braces"])
def test_a_cluster_write_keeps_its_ttl_whether_or_not_it_can_take_the_lease(
    redis_cluster: RedisCluster, namespace: str, key: str
) -> None:
    """A key with braces of its own cannot be leased on a cluster: its write goes as on a
    chain without leases, with the set's ttl all the same (not the chain's hour)."""
    cache, _ = cluster_chain(redis_cluster, namespace)
    cache.set(key, "v", ttl="2s")
    every_copy_fresh_for(cache, key, 2.0)
    cache.close()


def test_a_cluster_set_many_takes_the_leases_it_can_and_writes_every_key(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """A batch write asks, key by key, whether it takes the key's lease (not for a key with
    braces of its own on a cluster): every key is written, Redis refusing nothing."""
    cache, shared = cluster_chain(redis_cluster, namespace)
    items = {"plain": "1", "{user:1}:m": "2", "other": "3"}
    cache.set_many(items)
    assert {key: getattr(shared.get(key), "value", None) for key in items} == items
    assert cache.get_many(list(items)) == items
    tier = cache.stats()["tiers"][1]
    assert (tier["skips"], tier["errors"]) == (0, 0)
    cache.close()


class AnyStrKeys(RedisTier):
    """A leasing tier that takes any ``str`` as a key (it declares no UTF-8 keys), as a
    third party's may: the chain then has no key that UTF-8 must encode to refuse."""

    utf8_keys = False


def test_a_set_on_a_leasing_tier_that_takes_any_str_key_writes_it(
    redis_server: RedisServer, namespace: str
) -> None:
    """The key check of a write under a lease with no UTF-8 tier in the chain: any ``str``
    passes, and the write takes the lease and fills every tier."""
    shared = AnyStrKeys(redis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = TieredCache([MemoryTier(), shared], protection=Protection.never_stale())
    cache.set("k", "v")
    assert [getattr(tier.get("k"), "value", None) for tier in cache.tiers] == ["v", "v"]
    cache.close()


def test_a_set_many_of_one_key_writes_it_under_its_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    """A batch of one takes its key's lease as ``set`` does (one steal, not a batch's): the
    write fills every tier with it. Without the token no tier is filled (see leased())."""
    cache = chain(redis_server.url, namespace, bus="off")
    cache.set_many({"k": "v"})
    assert [getattr(tier.get("k"), "value", None) for tier in cache.tiers] == ["v", "v"]
    cache.close()


def test_writes_hold_their_leases_for_their_length_only(
    redis_server: RedisServer, namespace: str
) -> None:
    """A write under leases keeps them in the loader's holdings (which its close gives back)
    while it runs, and lets go of them as it ends: writes that ended hold nothing, rather
    than one record per write kept for ever."""
    cache = chain(redis_server.url, namespace, bus="off")
    cache.set("k", "v")
    cache.set_many({"a": "1", "b": "2"})
    assert cache._loader.holdings._helds == set()
    cache.close()


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_writes_lease_refused_by_an_open_breaker_is_a_skip_not_an_error(
    proxy: FaultProxy, namespace: str, how: str
) -> None:
    """The steal of a write's lease (one key, or a batch's in one round trip) that the open
    breaker refused made no call: counted as a skip, as every call the breaker refuses, not
    as a failure of Redis."""
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory"},
            {
                "kind": "redis",
                "url": proxy.url(),
                "timeout": "500ms",
                "breaker": {"failure_threshold": 1, "cool_down": "1h"},
            },
        ],
        bus={"kind": "off"},
    )
    proxy.cut()
    assert cache.get("x", lambda: "x") == "x"  # Redis fails: the breaker opens
    before = cache.stats()["tiers"][1]
    assert before["breaker"] == "open"
    if how == "set":
        cache.set("k", "v")
    else:
        cache.set_many({"k": "v", "j": "w"})
    after = cache.stats()["tiers"][1]
    assert after["errors"] == before["errors"]
    assert after["skips"] > before["skips"]
    proxy.restore()
    cache.close()


@pytest.mark.slow
def test_four_processes_batches_of_overlapping_cold_keys_one_read_per_key(
    redis_server: RedisServer, namespace: str
) -> None:
    """4 processes x 10 threads, each get_many of 30 of the same 60 cold keys: every key is
    read from the source once in the whole fleet (lease TTL far above the load time)."""
    worker = Path(__file__).with_name("redis_workers.py")
    processes = [
        subprocess.Popen(
            [sys.executable, str(worker), redis_server.url, namespace, "batch", "10", str(seed)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    counter = redis.Redis.from_url(redis_server.url, decode_responses=True)
    deadline = time.monotonic() + 60
    while int(counter.get(f"{namespace}:ready") or 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    counter.set(f"{namespace}:go", 1)
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4
    batches = [batch for output in outputs for batch in json.loads(output)]
    assert len(batches) == 40
    assert all(value == {"tweet_id": key} for batch in batches for key, value in batch.items())
    reads = {key: int(count) for key, count in counter.hgetall(f"{namespace}:reads").items()}
    counter.close()
    assert set(reads) == {key for batch in batches for key in batch}
    assert set(reads.values()) == {1}, reads


@pytest.mark.slow
def test_four_processes_fifty_threads_one_cold_key(
    redis_server: RedisServer, namespace: str
) -> None:
    """4 processes x 50 threads: one source read. A second read is allowed only if a lease
    expired by design (the lease TTL here, 5 s, is far longer than the 0.3 s load)."""
    results, source_reads = four_processes_read_one_cold_key(
        "redis_workers.py", redis_server.url, namespace, 50
    )
    assert [len(result) for result in results] == [50] * 4
    assert all(value == {"tweet_id": "tweet:1", "text": "viral"} for r in results for value in r)
    assert source_reads == 1


def test_slow_load_racing_an_invalidation_never_brings_the_old_value_back(
    redis_server: RedisServer, namespace: str
) -> None:
    # No bus: the lease alone must keep the old value out (with the bus, the reader would
    # also hear of the invalidation and cancel its fill one step earlier).
    reader = chain(redis_server.url, namespace, bus="off")
    writer = chain(redis_server.url, namespace, bus="off")
    source = {"k": "old"}
    read_done = threading.Event()
    may_finish = threading.Event()

    def slow_load() -> str:
        value = source["k"]
        read_done.set()
        assert may_finish.wait(10)
        return value

    thread = threading.Thread(target=lambda: reader.get("k", slow_load))
    thread.start()
    assert read_done.wait(10)
    source["k"] = "new"  # the write happens after the slow load read the source ...
    writer.invalidate("k")  # ... and is announced before the load fills
    may_finish.set()
    thread.join()
    assert reader.stats()["lease_lost"] == 1
    # neither Redis nor the reader's memory took the old value
    assert writer.get("k", lambda: source["k"]) == "new"
    fresh_reader_view = reader.tiers[1].get("k")
    assert fresh_reader_view and fresh_reader_view.value == "new"
    assert not MemoryTier.__contains__(reader.tiers[0], "k") or reader.get("k") == "new"  # type: ignore[arg-type]
    reader.close()
    writer.close()


def test_redis_killed_mid_load_no_caller_errors(redis_server: RedisServer, namespace: str) -> None:
    server = RedisServer()
    server.start()
    try:
        cache = chain(server.url, namespace)
        errors: list[BaseException] = []
        results: list[str] = []

        def load() -> str:
            server.kill()  # Redis dies while the value is being loaded
            return "value"

        try:
            results.append(cache.get("k", load))
            results.append(cache.get("k2", lambda: "value2"))
        except BaseException as exc:  # asserted below: no exception may reach the caller
            errors.append(exc)
        assert errors == []
        assert results == ["value", "value2"]
        assert cache.stats()["tiers"][1]["skips"] + cache.stats()["tiers"][1]["errors"] >= 1
        cache.close()
    finally:
        server.close()


def test_redis_stopped_in_the_middle_of_a_read_loop(namespace: str) -> None:
    """Stop the server mid-loop: zero exceptions reach the caller, every value is correct,
    and after a restart Redis serves again."""
    items = {f"tweet:{i}": {"tweet_id": str(i)} for i in range(20)}
    reads: list[str] = []

    def source(key: str) -> dict[str, str]:
        reads.append(key)
        return items[key]

    with RedisServer() as server:
        cache = TieredCache.from_config(
            namespace=namespace,
            tiers=[
                {"kind": "memory", "max_entries": 5, "admission": "always"},
                {
                    "kind": "redis",
                    "url": server.url,
                    "timeout": "200ms",
                    "breaker": {"failure_threshold": 2, "cool_down": "100ms"},
                },
            ],
        )
        errors = 0
        for round_ in range(6):
            if round_ == 2:
                server.stop()
            if round_ == 4:
                server.start()
                time.sleep(0.2)  # let the breaker's cool-down pass so a probe goes through
            for key, expected in items.items():
                try:
                    value = cache.get(key, lambda key=key: source(key))  # type: ignore[misc]
                except Exception:
                    errors += 1
                else:
                    assert value == expected
        assert errors == 0
        stats = cache.stats()["tiers"][1]
        assert stats["skips"] > 0  # the breaker skipped Redis while it was down
        assert stats["hits"] > 0
        cache.close()


@pytest.mark.parametrize("breaker", [True, False])
def test_a_lease_batch_that_failed_in_redis_counts_an_error_not_a_skip(
    redis_server: RedisServer, namespace: str, breaker: bool
) -> None:
    """A batch of lease calls Redis answered with an error for one key (here WRONGTYPE: the
    key holds a list) was made and failed: the tier's error, as any failed call (e813b31),
    where a skip is a call not made. It was counted as a skip: the tier raised its own
    TierUnavailable for it."""
    raw = redis.Redis.from_url(redis_server.url)
    raw.rpush(f"{namespace}:k2", "not an entry")
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "redis", "url": redis_server.url, "breaker": {"enabled": breaker}}],
        bus={"kind": "off"},
    )
    loaded = cache.get_many(["k1", "k2"], lambda keys: dict.fromkeys(keys, "loaded"))
    assert loaded == {"k1": "loaded", "k2": "loaded"}
    redis_stats = cache.stats()["tiers"][0]
    assert (redis_stats["errors"], redis_stats["skips"]) == (1, 0)
    raw.close()
    cache.close()


class LeaseCallsTier(RedisTier):
    """A Redis tier that records which of its lease operations were called."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lease_calls: list[str] = []

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        self.lease_calls.append("acquire_lease")
        return super().acquire_lease(key, ttl)

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        self.lease_calls.append("acquire_leases")
        return super().acquire_leases(keys, ttl)

    def steal_lease(self, key: str, ttl: float) -> str:
        self.lease_calls.append("steal_lease")
        return super().steal_lease(key, ttl)


def test_lease_off_means_no_lease_calls(redis_server: RedisServer, namespace: str) -> None:
    """Not for loads, nor for writes: before, a write with ``lease="off"`` still stole the
    key's lease (a round trip per write; when it failed, the write invalidated instead of
    filling), as the write path named its leasing tier without asking the protection."""
    tier = LeaseCallsTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    cache = TieredCache([tier], protection=Protection(lease="off"))
    assert cache.get("k", lambda: 1) == 1
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.exists(f"{{{namespace}:k}}:lease") == 0
    assert cache.stats()["lease_waits"] == 0
    # Without leases Redis is filled plainly: the next read finds the value there.
    assert cache.get("k", lambda: 2) == 1
    assert cache.stats()["tiers"][0]["hits"] == 1
    assert cache.get_many(["m1", "m2"], lambda keys: dict.fromkeys(keys, 3)) == {"m1": 3, "m2": 3}
    cache.set("w", 4)
    cache.set_many({"w1": 5, "w2": 6})
    assert cache.get_many(["w", "w1", "w2"]) == {"w": 4, "w1": 5, "w2": 6}
    assert tier.lease_calls == []
    raw.close()
    cache.close()
