"""A value written through a Redis tier is encoded once: the check made before anything is sent
(a value the codec refuses changes nothing) encodes it, and the write's fill stores those bytes.

Before, the tier's ``check_value`` encoded the value and threw the bytes away, and the fill
encoded it again: twice the codec's work on every write, and the bytes sent were not the ones
checked (the counts are those of a spy around the real codec).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier, RedisTier

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.async_breaker import AsyncCircuitBreakerTier
from tiered_cache.codecs import CodecBase, get_codec
from tiered_cache.errors import CodecError
from tiered_cache.protection import Protection
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource, DictSource
from tiered_cache.tier import Entry

T = TypeVar("T")

LEASES = ["auto", "off"]
#: How the values are written, and whether the chain has a source.
CASES = [(how, sourced) for how in ("set", "set_many") for sourced in (True, False)]
VALUES = {"k": {"text": "one", "n": [1, 2.5, None]}, "j": {"text": "two", "n": [3]}}
#: max_value_size for the value over it, and that value.
LIMIT = 1000
LARGE = "L" * (2 * LIMIT)


class Counting(CodecBase):
    """A spy around a real codec: its encodes counted, the bytes its own."""

    def __init__(self, name: str) -> None:
        self.inner = get_codec(name)
        self.name = self.inner.name
        self.encodes = 0

    def encode(self, value: Any) -> bytes:
        self.encodes += 1
        return self.inner.encode(value)

    def decode(self, data: bytes) -> Any:
        return self.inner.decode(data)


#: The codec counted, and the chain's lease setting.
SETUPS = [(codec, lease) for codec in ("json", "pickle") for lease in LEASES]


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@dataclass
class Write:
    """One write of either face: its codec counted, the chain's lease setting, how the values
    are written (``set`` or ``set_many``) and whether the chain has a source."""

    counting: Counting
    lease: str
    how: str
    sourced: bool
    server: RedisServer
    namespace: str
    raw: redis.Redis
    reader: RedisTier

    @property
    def items(self) -> dict[str, Any]:
        """The values written."""
        return {"k": VALUES["k"]} if self.how == "set" else dict(VALUES)

    def send(self, set_one: Callable[[str, Any], T], set_many: Callable[[dict[str, Any]], T]) -> T:
        """The write, through a chain's ``set`` or ``set_many`` (either face's)."""
        return set_one("k", VALUES["k"]) if self.how == "set" else set_many(self.items)

    def check(self) -> None:
        """Each value encoded once, and the bytes stored the value's (another process's tier
        reads them back)."""
        items = self.items
        assert self.counting.encodes == len(items)
        assert {key: self.reader.get(key).value for key in items} == items  # type: ignore[union-attr]
        assert self.raw.exists(*(f"{self.namespace}:{key}" for key in items)) == len(items)


#: Every write: its setup and its case.
WRITES = [(*setup, *case) for setup in SETUPS for case in CASES]


@pytest.fixture(params=WRITES, ids=lambda write: "-".join(map(str, write)))
def write(
    request: pytest.FixtureRequest, redis_server: RedisServer, raw: redis.Redis, namespace: str
) -> Iterator[Write]:
    codec, lease, how, sourced = request.param
    reader = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace, codec=codec)
    yield Write(Counting(codec), lease, how, sourced, redis_server, namespace, raw, reader)
    reader.close()


def test_a_write_encodes_each_value_once(write: Write) -> None:
    tier = RedisTier(
        redis.Redis.from_url(write.server.url), namespace=write.namespace, codec=write.counting
    )
    source = DictSource({}) if write.sourced else None
    with TieredCache(
        [MemoryTier(), tier], source, protection=Protection(lease=write.lease)
    ) as cache:
        write.send(cache.set, cache.set_many)
        write.check()


def test_a_value_over_max_value_size_is_encoded_once_and_not_kept(
    redis_server: RedisServer,
    raw: redis.Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    counting = Counting("json")
    tier = RedisTier(
        redis.Redis.from_url(redis_server.url),
        namespace=namespace,
        codec=counting,
        max_value_size=LIMIT,
    )
    source = DictSource({})
    with TieredCache([MemoryTier(), tier], source) as cache:
        with caplog.at_level(logging.WARNING, logger="tiered_cache_redis.tier"):
            cache.set("k", LARGE)
        assert counting.encodes == 1
        assert source.items["k"] == LARGE  # the write stands
        assert raw.exists(f"{namespace}:k") == 0  # not kept
        assert cache.get("k") == LARGE  # memory keeps it
        assert cache.stats()["tiers"][1]["too_large"] == 1
    assert [r.__dict__.get("event") for r in caplog.records].count("too_large") == 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_an_async_write_encodes_each_value_once(write: Write) -> None:
    tier = AsyncRedisTier(
        aioredis.Redis.from_url(write.server.url), namespace=write.namespace, codec=write.counting
    )
    source = AsyncDictSource({}) if write.sourced else None
    cache = AsyncTieredCache([MemoryTier(), tier], source, protection=Protection(lease=write.lease))
    try:
        await write.send(cache.set, cache.set_many)
        write.check()
    finally:
        await cache.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("codec", ["json", "pickle"])
async def test_the_async_breaker_hands_on_the_wrapped_tiers_form(
    redis_server: RedisServer, namespace: str, codec: str
) -> None:
    """:class:`AsyncCircuitBreakerTier` used on its own (a user's write through
    ``cache.tiers``) declares the wrapped tier's capabilities: its ``prepare_value`` is the
    Redis tier's payload, which its ``set`` stores unchanged, encoded once. A wrapper that
    hid the capability (the default form: the value itself) had ``set`` encode it again."""
    counting = Counting(codec)
    tier = AsyncRedisTier(
        aioredis.Redis.from_url(redis_server.url), namespace=namespace, codec=counting
    )
    breaker = AsyncCircuitBreakerTier(tier)
    reader = RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace, codec=codec)
    try:
        form = breaker.prepare_value(VALUES["k"])
        assert counting.encodes == 1  # the tier's check, which made the bytes ...
        await breaker.set("k", Entry(form, 0.0))
        assert counting.encodes == 1  # ... that set stored
        assert reader.get("k").value == VALUES["k"]  # type: ignore[union-attr]
        with pytest.raises(CodecError):  # the tier's check, not the default's (none)
            breaker.check_value(lambda: None)
    finally:
        await breaker.aclose()
        reader.close()
