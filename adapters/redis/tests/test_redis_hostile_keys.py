"""A key UTF-8 cannot encode (a lone surrogate: a path decoded with ``surrogateescape``,
``os.fsdecode`` of bytes that are not UTF-8) is the caller's data, which Redis cannot hold.
A chain with a tier that stores keys as UTF-8 (``utf8_keys``: the Redis tiers) refuses it at
its face, on every call and both faces, before anything is sent: no tier, source, loader or
breaker sees it, and the error names the problem, not the key.

Before, the Redis tier failed encoding its command: the circuit breaker counted that as Redis
failing (one request with such a key opened it for every key of the process), then a special
case in the breaker and another in the async tier's read coalescing let it pass as an error of
that call only. (A memory-only chain holds such keys as any other: tests/test_fast_paths.py.)

A key longer than ``MAX_KEY_LENGTH`` is refused the same way (``KeyTooLong``, an
``UnencodableKey``): sent, one of 40 MB timed out writing to the socket, counted as Redis
failing, its delete owed and never paid (every try timed out), and every later call of the
process to Redis was refused behind that debt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tiered_cache import (
    AsyncTieredCache,
    BlockingTierWarning,
    KeyTooLong,
    TieredCache,
    UnencodableKey,
)
from tiered_cache.keys import MAX_KEY_LENGTH, check_keys
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource

HOSTILE = ["\udcff", "tweet:\udc80"]
SOURCE = {"fine": "at the source"}


def settings(url: str, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "1s"},
        ],
        "ttl": "10m",
        "bus": {"kind": "off"},  # the chains below are built again around a source
    }


def decorated(cache: TieredCache, key: str) -> object:
    @cache.cached(key="{name}")
    def read(name: str) -> str:
        return "loaded"

    return read(key)


def decorated_invalidate(cache: TieredCache, key: str) -> object:
    @cache.cached(key="{name}")
    def read(name: str) -> str:
        return "loaded"

    read.invalidate(name=key)
    return None


SYNC_CALLS: dict[str, Callable[[TieredCache, str], object]] = {
    "get": lambda cache, key: cache.get(key, lambda: "loaded"),
    "get from the source": lambda cache, key: cache.get(key),
    "get_many": lambda cache, key: cache.get_many(["fine", key]),
    "lookup_many": lambda cache, key: cache.lookup_many(["fine", key]),
    "set": lambda cache, key: cache.set(key, "written"),
    "set_many": lambda cache, key: cache.set_many({"fine": 1, key: 2}),
    "invalidate": lambda cache, key: cache.invalidate(key),
    "invalidate_many": lambda cache, key: cache.invalidate_many(["fine", key]),
    "invalidate_prefix": lambda cache, key: cache.invalidate_prefix(key),
    "decorated": decorated,
    "decorated invalidate": decorated_invalidate,
}


def redis_counts(stats: dict[str, Any]) -> dict[str, Any]:
    redis = stats["tiers"][1]
    return {name: redis[name] for name in ("hits", "misses", "fills", "errors", "skips")} | {
        "breaker": redis["breaker"]
    }


def assert_refused(raised: pytest.ExceptionInfo[UnencodableKey], key: str) -> None:
    message = str(raised.value)
    assert "lone surrogate" in message
    assert "UTF-8" in message and "'redis'" in message
    assert key not in message and repr(key)[1:-1] not in message  # names the problem only


#: Keys one character past the bound: ASCII, and not (UTF-8's longer characters, a lone
#: surrogate at the end: the length is refused first, the message names the length).
TOO_LONG = ["k" * (MAX_KEY_LENGTH + 1), "é" * MAX_KEY_LENGTH + "\udcff"]


def assert_too_long(raised: pytest.ExceptionInfo[KeyTooLong], key: str) -> None:
    message = str(raised.value)
    assert f"{MAX_KEY_LENGTH + 1} characters" in message and "'redis'" in message
    assert f"at most {MAX_KEY_LENGTH}" in message
    assert key[:100] not in message  # names the problem only


#: Each key a chain with a Redis tier refuses, the error, and what its message must say.
REFUSED = [(key, UnencodableKey, assert_refused) for key in HOSTILE] + [
    (key, KeyTooLong, assert_too_long) for key in TOO_LONG
]
REFUSED_IDS = ["surrogate", "surrogate after text", "too long", "too long, UTF-8"]
Refusal = tuple[str, type[UnencodableKey], Callable[[Any, str], None]]


@pytest.mark.parametrize("refusal", REFUSED, ids=REFUSED_IDS)
@pytest.mark.parametrize("call", sorted(SYNC_CALLS))
def test_a_key_redis_cannot_take_is_refused_before_anything_is_sent(
    redis_server: RedisServer, namespace: str, refusal: Refusal, call: str
) -> None:
    key, error, check = refusal
    built = TieredCache.from_config(**settings(redis_server.url, namespace))
    source = DictSource(SOURCE)
    cache = TieredCache(list(built.tiers), source, namespace=namespace, ttl=600)
    cache.set("other", "in redis")
    before = redis_counts(cache.stats())
    with pytest.raises(error) as raised:
        SYNC_CALLS[call](cache, key)
    check(raised, key)
    # Nothing was sent or loaded: no tier, no source, and the breaker counted nothing.
    assert redis_counts(cache.stats()) == before
    assert cache.stats()["deletes_owed"] == 0
    assert (source.loads, source.batches, source.items) == ([], [], SOURCE | {"other": "in redis"})
    assert cache.tiers[0].get(key) is not None and not cache.tiers[0].get(key)
    # Redis still serves the other keys.
    cache.tiers[0].clear()  # type: ignore[union-attr]
    assert cache.get("other") == "in redis"
    after = redis_counts(cache.stats())
    assert (after["hits"], after["errors"], after["skips"], after["breaker"]) == (
        before["hits"] + 1,
        0,
        0,
        "closed",
    )
    cache.close()


async def async_decorated(cache: AsyncTieredCache, key: str) -> object:
    @cache.cached(key="{name}")
    async def read(name: str) -> str:
        return "loaded"

    return await read(key)


async def async_loaded() -> str:
    return "loaded"


ASYNC_CALLS: dict[str, Callable[[AsyncTieredCache, str], Awaitable[object]]] = {
    "get": lambda cache, key: cache.get(key, async_loaded),
    "get_many": lambda cache, key: cache.get_many(["fine", key]),
    "lookup_many": lambda cache, key: cache.lookup_many(["fine", key]),
    "set": lambda cache, key: cache.set(key, "written"),
    "set_many": lambda cache, key: cache.set_many({"fine": 1, key: 2}),
    "invalidate": lambda cache, key: cache.invalidate(key),
    "invalidate_prefix": lambda cache, key: cache.invalidate_prefix(key),
    "decorated": async_decorated,
}


@pytest.mark.parametrize("refusal", REFUSED, ids=REFUSED_IDS)
def test_the_async_chain_refuses_it_on_every_call_and_only_it(
    redis_server: RedisServer, namespace: str, refusal: Refusal
) -> None:
    """The async tier sends the GETs of one loop tick as one MGET: a key that cannot be
    encoded must not fail the other callers' reads gathered with it."""
    key, error, check = refusal

    async def main() -> None:
        built = AsyncTieredCache.from_config(**settings(redis_server.url, namespace))
        source = DictSource(SOURCE)
        with pytest.warns(BlockingTierWarning):  # the dict source is read in threads
            cache = AsyncTieredCache(list(built.tiers), source, namespace=namespace, ttl=600)
        await cache.set("other", "in redis")
        before = redis_counts(cache.stats())
        for call in ASYNC_CALLS.values():
            with pytest.raises(error) as raised:
                await call(cache, key)
            check(raised, key)
        assert redis_counts(cache.stats()) == before
        assert cache.stats()["deletes_owed"] == 0
        assert (source.loads, source.batches) == ([], [])
        assert source.items == SOURCE | {"other": "in redis"}
        cache.tiers[0].clear()  # type: ignore[union-attr]
        together = await asyncio.gather(
            cache.get(key, async_loaded), cache.get("other"), return_exceptions=True
        )
        assert isinstance(together[0], error)
        assert together[1] == "in redis"
        after = redis_counts(cache.stats())
        assert (after["hits"], after["errors"], after["skips"], after["breaker"]) == (
            before["hits"] + 1,
            0,
            0,
            "closed",
        )
        await cache.aclose()

    asyncio.run(main())


def bare_calls(entry: Any) -> dict[str, Callable[[Any, str], object]]:
    """Every call of the Redis tier that takes a key, used without a chain."""
    return {
        "get": lambda tier, key: tier.get(key),
        "get_many": lambda tier, key: tier.get_many(["fine", key]),
        "set": lambda tier, key: tier.set(key, entry),
        "set_many": lambda tier, key: tier.set_many({"fine": entry, key: entry}),
        "delete": lambda tier, key: tier.delete(key),
        "delete_many": lambda tier, key: tier.delete_many(["fine", key]),
        "delete_prefix": lambda tier, key: tier.delete_prefix(key),
        "acquire_lease": lambda tier, key: tier.acquire_lease(key, 1.0),
        "acquire_leases": lambda tier, key: tier.acquire_leases(["fine", key], 1.0),
        "steal_lease": lambda tier, key: tier.steal_lease(key, 1.0),
        "steal_leases": lambda tier, key: tier.steal_leases(["fine", key], 1.0),
        "fill_with_lease": lambda tier, key: tier.fill_with_lease(key, entry, "t"),
        "fill_with_leases": lambda tier, key: tier.fill_with_leases({key: (entry, "t")}),
        "release_lease": lambda tier, key: tier.release_lease(key, "t"),
        "release_leases": lambda tier, key: tier.release_leases({"fine": "t", key: "t"}),
    }


@pytest.mark.parametrize("key", HOSTILE)
def test_the_redis_tier_alone_refuses_it_as_the_chain_does(
    redis_server: RedisServer, namespace: str, key: str
) -> None:
    """Without a chain in front, the tier raised UnicodeEncodeError (redis-py encoding the
    command) instead of the library's UnencodableKey."""
    import redis
    from tiered_cache_redis import RedisTier

    from tiered_cache.tier import Entry

    tier = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)
    entry = Entry(value=1, loaded_at=0.0, soft_expiry=4e9, hard_expiry=4e9)
    for name, call in bare_calls(entry).items():
        with pytest.raises(UnencodableKey) as raised:
            call(tier, key)
        assert_refused(raised, key), name
    tier.set("fine", entry)
    assert tier.get("fine")  # the tier goes on
    tier.close()


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("tiered_cache.namespace", {"namespace": "tweets\udcff"}),
        ("tiered_cache.tiers[1].namespace", {"tiers_namespace": "\udc80"}),
    ],
)
def test_a_namespace_utf8_cannot_encode_is_refused_naming_its_field(
    redis_server: RedisServer, field: str, overrides: dict[str, str]
) -> None:
    """Every key of such a namespace would fail in Redis (counted as Redis failing)."""
    from tiered_cache import ConfigError

    given = settings(redis_server.url, "fine")
    if "namespace" in overrides:
        given["namespace"] = overrides["namespace"]
    else:
        given["tiers"][1]["namespace"] = overrides["tiers_namespace"]
    with pytest.raises(ConfigError) as raised:
        TieredCache.from_config(**given)
    message = str(raised.value)
    assert message.startswith(f"{field}: "), message
    assert "lone surrogate" in message and "\udcff" not in message and "\udc80" not in message


@pytest.mark.parametrize("key", HOSTILE)
def test_the_async_redis_tier_alone_refuses_it_and_only_it(
    redis_server: RedisServer, namespace: str, key: str
) -> None:
    """The async tier alone, likewise; and its GETs of one loop tick leave as one MGET, so a
    key that cannot be encoded must not fail the other reads gathered with it."""
    import redis.asyncio as aioredis
    from tiered_cache_redis import AsyncRedisTier

    from tiered_cache.tier import Entry

    async def main() -> None:
        tier: Any = AsyncRedisTier(aioredis.Redis.from_url(redis_server.url), namespace=namespace)
        entry = Entry(value=1, loaded_at=0.0, soft_expiry=4e9, hard_expiry=4e9)
        await tier.set("fine", entry)
        calls = bare_calls(entry)
        del calls["delete"]  # the async tier deletes through delete_many
        for name, call in calls.items():
            with pytest.raises(UnencodableKey) as raised:
                result = call(tier, key)
                await result  # type: ignore[misc]
            assert_refused(raised, key), name
        together = await asyncio.gather(tier.get(key), tier.get("fine"), return_exceptions=True)
        assert isinstance(together[0], UnencodableKey)
        assert together[1]
        await tier.aclose()

    asyncio.run(main())


def test_a_redis_tier_made_in_code_refuses_such_a_namespace() -> None:
    from tiered_cache_redis import AsyncRedisTier, RedisTier

    for tier in (RedisTier, AsyncRedisTier):
        with pytest.raises(ValueError, match="namespace holds a lone surrogate") as raised:
            tier(connect=lambda: None, namespace="app\udcff")  # type: ignore[arg-type]
        assert "\udcff" not in str(raised.value)


@pytest.mark.parametrize("key", HOSTILE)
@pytest.mark.parametrize("chain", ["write around", "no lease"])
def test_a_set_refuses_it_before_anything_is_sent_on_every_write_path(
    redis_server: RedisServer, namespace: str, key: str, chain: str
) -> None:
    """The test above writes through under the key's lease; a write around the tiers (the
    source first, then every tier dropped) and a write-through without leases take other
    paths, each with its own check."""
    built = TieredCache.from_config(**settings(redis_server.url, namespace))
    source = DictSource(SOURCE)
    if chain == "write around":
        cache = TieredCache(
            list(built.tiers), source, namespace=namespace, ttl=600, write_policy="around"
        )
    else:
        cache = TieredCache(
            list(built.tiers),
            source,
            namespace=namespace,
            ttl=600,
            protection=Protection(lease="off"),
        )
    before = redis_counts(cache.stats())
    with pytest.raises(UnencodableKey) as raised:
        cache.set(key, "written")
    assert_refused(raised, key)
    assert redis_counts(cache.stats()) == before
    assert (source.loads, source.batches, source.items) == ([], [], SOURCE)
    cache.close()


def test_a_key_of_the_longest_length_goes_through() -> None:
    """The bound refuses past it, not at it; a chain of memory alone takes any length."""
    check_keys(["k" * MAX_KEY_LENGTH], "'redis'")
    check_keys(["k" * 10 for _ in range(MAX_KEY_LENGTH)], "'redis'")  # long together: fine
    check_keys(["k" * (MAX_KEY_LENGTH + 1)])
    with pytest.raises(KeyTooLong):
        check_keys(["k"] * 3 + ["k" * (MAX_KEY_LENGTH + 1)], "'redis'")
