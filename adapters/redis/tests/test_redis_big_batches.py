"""A batch larger than one call's reply can carry within the timeout is read in calls
(tiered_cache_redis.chunks), on both faces.

The tier's ``timeout`` bounds a whole reply, so a ``get_many`` whose MGET reply could not
arrive within it failed on every call, however healthy Redis was: its keys went to the
source (the tier counted an error each call, as if Redis were down). Here a proxy hands the
server's bytes on at about 800 KB/s: 2,000 values of 400 bytes (about 0.8 MB, 1 s) cannot
come in one reply within the 0.5 s timeout, and 50 of them (20 KB, tens of ms) can.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest
import redis
from redis.utils import HIREDIS_AVAILABLE
from tiered_cache_redis.commands import Command, RedisIO, TierCommands
from tiered_cache_redis.stored import StoredFormat

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.steps import run
from tiered_cache.testing.servers import FaultProxy, RedisServer
from tiered_cache.tier import Entry

KEYS = 2000
PER_CALL = 50
VALUE = "v" * 400

# With hiredis, redis-py's sync parser bounds each receive, not the whole reply.
whole_reply_bounded = pytest.mark.skipif(
    HIREDIS_AVAILABLE, reason="with hiredis, the sync face bounds each receive, not a reply"
)


def settings(url: str, namespace: str, **redis: Any) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "bus": {"kind": "off"},
        "tiers": [{"kind": "redis", "url": url, **redis}],
    }


@pytest.fixture
def slow_link(proxy: FaultProxy) -> Iterator[FaultProxy]:
    proxy.trickle(8192, 0.01)  # about 800 KB/s from the server
    yield proxy


def stored(redis_server: RedisServer, namespace: str, items: dict[str, Any]) -> None:
    """``items`` written to Redis past the proxy, with time to spare."""
    with TieredCache.from_config(**settings(redis_server.url, namespace, timeout="10s")) as cache:
        cache.set_many(items)


class Source:
    """A batch loader that records the keys it was asked for."""

    def __init__(self, prefix: str = "") -> None:
        self.loaded: list[str] = []
        self._prefix = prefix

    def __call__(self, keys: Sequence[str]) -> dict[str, Any]:
        self.loaded += keys
        return {key: self._prefix + VALUE for key in keys}

    async def aload(self, keys: Sequence[str]) -> dict[str, Any]:
        return self(keys)


def chained(slow_link: FaultProxy, namespace: str, **protection: Any) -> dict[str, Any]:
    return {
        **settings(slow_link.url(), namespace, timeout="0.5s", keys_per_call=PER_CALL),
        "protection": protection,
    }


def unleased(slow_link: FaultProxy, namespace: str) -> dict[str, Any]:
    """:func:`chained` without leases: the keys a read did not answer go to the source
    straight (a lease call's reply would carry their values, the big one too)."""
    return chained(slow_link, namespace, lease="off")


@whole_reply_bounded
def test_a_get_many_larger_than_one_reply_is_served_from_redis(
    redis_server: RedisServer, slow_link: FaultProxy, namespace: str
) -> None:
    items = {f"k{index}": VALUE for index in range(KEYS)}
    stored(redis_server, namespace, items)
    source = Source()
    with TieredCache.from_config(**chained(slow_link, namespace)) as cache:
        assert cache.get_many(list(items), loader=source) == items
        tier = cache.stats()["tiers"][0]
    assert (source.loaded, tier["errors"], tier["hits"]) == ([], 0, KEYS)


@pytest.mark.anyio
async def test_an_async_get_many_larger_than_one_reply_is_served_from_redis(
    redis_server: RedisServer, slow_link: FaultProxy, namespace: str
) -> None:
    items = {f"k{index}": VALUE for index in range(KEYS)}
    stored(redis_server, namespace, items)
    source = Source()
    cache = AsyncTieredCache.from_config(**chained(slow_link, namespace))
    try:
        assert await cache.get_many(list(items), loader=source.aload) == items
        tier = cache.stats()["tiers"][0]
    finally:
        await cache.aclose()
    assert (source.loaded, tier["errors"], tier["hits"]) == ([], 0, KEYS)


def big_second_call(redis_server: RedisServer, namespace: str) -> list[str]:
    """Three calls' keys in Redis; the second call's reply cannot come within the timeout
    (a value of 1 MB among its keys: over a second on the slow link)."""
    keys = [f"k{index}" for index in range(3 * PER_CALL)]
    stored(redis_server, namespace, dict.fromkeys(keys, VALUE))
    client = redis.Redis.from_url(redis_server.url)
    try:
        name = f"{namespace}:{keys[PER_CALL + 1]}"
        data = client.get(name)
        assert data is not None
        client.set(name, data + b" " * 1_000_000, keepttl=True)  # still a readable entry
    finally:
        client.close()
    return keys


def assert_only_the_calls_answered_were_served(
    keys: list[str], values: dict[str, Any], source: Source, tier: dict[str, Any]
) -> None:
    read = keys[:PER_CALL]  # the first call's: from Redis
    assert {key: values[key] for key in read} == dict.fromkeys(read, VALUE)
    # The second call failed, the third was not sent: their keys came from the source.
    assert source.loaded == keys[PER_CALL:]
    assert {key: values[key] for key in keys[PER_CALL:]} == {
        key: "fresh " + VALUE for key in keys[PER_CALL:]
    }
    assert (tier["hits"], tier["misses"], tier["errors"]) == (PER_CALL, 0, 1)


@whole_reply_bounded
def test_a_call_that_fails_sends_only_its_keys_and_the_unsent_to_the_next_tier(
    redis_server: RedisServer, slow_link: FaultProxy, namespace: str, caplog: Any
) -> None:
    keys = big_second_call(redis_server, namespace)
    source = Source("fresh ")
    with (
        caplog.at_level(logging.WARNING),
        TieredCache.from_config(**unleased(slow_link, namespace)) as cache,
    ):
        values = cache.get_many(keys, loader=source)
        tier = cache.stats()["tiers"][0]
    assert_only_the_calls_answered_were_served(keys, values, source, tier)
    assert f"read {PER_CALL} of {len(keys)} keys, then TimeoutError" in caplog.text


@pytest.mark.anyio
async def test_an_async_call_that_fails_sends_only_its_keys_and_the_unsent_to_the_next_tier(
    redis_server: RedisServer, slow_link: FaultProxy, namespace: str, caplog: Any
) -> None:
    keys = big_second_call(redis_server, namespace)
    source = Source("fresh ")
    cache = AsyncTieredCache.from_config(**unleased(slow_link, namespace))
    try:
        with caplog.at_level(logging.WARNING):
            values = await cache.get_many(keys, loader=source.aload)
        tier = cache.stats()["tiers"][0]
    finally:
        await cache.aclose()
    assert_only_the_calls_answered_were_served(keys, values, source, tier)
    assert f"read {PER_CALL} of {len(keys)} keys, then TimeoutError" in caplog.text


def test_a_fill_in_several_calls_is_refused_for_a_key_invalidated_during_its_load(
    redis_server: RedisServer, namespace: str
) -> None:
    """The fence's rule holds for a batch filled in calls: a key invalidated while the batch
    was loading (in the last call's share of it) is kept out of every tier; the others are
    filled."""
    keys = [f"k{index}" for index in range(5 * 10)]
    late = keys[-3]
    config = {
        **settings(redis_server.url, namespace, timeout="5s", keys_per_call=10),
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": redis_server.url, "timeout": "5s", "keys_per_call": 10},
        ],
    }
    client = redis.Redis.from_url(redis_server.url)
    with TieredCache.from_config(**config) as cache:

        def loader(asked: Sequence[str]) -> dict[str, Any]:
            cache.invalidate(late)  # a write elsewhere, as the batch reads the source
            return dict.fromkeys(asked, VALUE)

        assert cache.get_many(keys, loader=loader) == dict.fromkeys(keys, VALUE)
        in_redis = client.mget([f"{namespace}:{key}" for key in keys])
        assert cache.lookup_many([late]) == {}
        assert cache.stats()["fills_refused"] >= 1
    client.close()
    assert [key for key, data in zip(keys, in_redis, strict=True) if data is None] == [late]


class RecordedIO:
    """A RedisIO that records what it is asked to send (each call answered)."""

    def __init__(self) -> None:
        self.sent: list[list[Command]] = []
        self.scripted: list[int] = []

    def is_cluster(self) -> bool:
        return False

    def send(self, commands: Sequence[Command]) -> list[Any]:
        self.sent.append(list(commands))
        return [True] * len(commands)

    def scripts(self, source: str, calls: Sequence[Any], raise_first: bool) -> list[Any]:
        self.scripted.append(len(calls))
        return [1] * len(calls)


def test_writes_deletes_and_lease_batches_are_sent_in_calls_of_keys_per_call() -> None:
    """Sent whole, a set_many of 50,000 values of 250 bytes on the asyncio face timed out
    writing its pipeline ("Timeout writing to socket"), and a delete_many of as many keys
    timed out on its one UNLINK of 100,000 names."""
    io = RecordedIO()
    stored = StoredFormat("redis", namespace="n", ttl=None, ttl_jitter=0.0, codec="json")
    commands = TierCommands(stored, cast(RedisIO, io), lambda: 0.0, 500)
    entries = {f"k{index}": Entry(VALUE, 0.0) for index in range(1201)}
    run(commands.set_many(entries))
    # A SET per key, then an UNLINK of the call's leases.
    assert [len(sent) for sent in io.sent] == [501, 501, 202]
    assert [len(sent[-1]) - 1 for sent in io.sent] == [500, 500, 201]
    io.sent.clear()
    run(commands.delete_many(list(entries)))
    assert [len(sent[0]) - 1 for sent in io.sent] == [1000, 1000, 402]  # names and leases
    io.sent.clear()
    run(commands.steal_leases(list(entries), 10.0))
    assert [len(sent) for sent in io.sent] == [500, 500, 201]
    run(commands.release_leases(dict.fromkeys(entries, "token")))
    assert io.scripted == [500, 500, 201]
