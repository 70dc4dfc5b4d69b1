"""A value the codec cannot encode is the caller's CodecError, raised before anything is sent:
never a Redis failure, so it can neither open the breaker nor let set() pass silently."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache import CodecError, MemoryTier, TieredCache, load_settings
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource


def _lone_surrogate() -> Any:
    return json.loads('{"t": "\\ud83d"}')


def _deep(depth: int = 100_000) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


class RaisesMidway:
    """A value whose pickling fails in its own code (a ``__reduce__`` that raises), after
    pickle has written part of the value around it."""

    def __reduce__(self) -> Any:
        raise RuntimeError("cannot be reduced")


def _raises_midway() -> Any:
    return {"a": [1, "two", RaisesMidway()]}


BAD_VALUES = {
    "lone-surrogate": _lone_surrogate,
    "100k-deep": _deep,
    "raises-midway": _raises_midway,
}
#: Each codec with the values it refuses (pickle holds a lone surrogate).
REFUSED = [(codec, bad) for codec in ("json", "msgpack") for bad in sorted(BAD_VALUES)] + [
    ("pickle", "100k-deep"),
    ("pickle", "raises-midway"),
]


@pytest.mark.parametrize(("codec", "bad"), REFUSED)
def test_unencodable_values_raise_codec_error_and_never_open_the_breaker(
    redis_server: RedisServer, namespace: str, codec: str, bad: str
) -> None:
    if codec == "msgpack":
        pytest.importorskip("msgpack")
    # A generous timeout: the subject is the codec, not a slow Redis. With the default 50 ms
    # a loaded machine timed out the lease's read, and a load that cannot reach Redis fills
    # memory only (degrading, as it should), so no CodecError was raised.
    tier = {"kind": "redis", "url": redis_server.url, "codec": codec, "timeout": "5s"}
    settings = load_settings(namespace=namespace, tiers=[{"kind": "memory"}, tier])
    raw = redis.Redis.from_url(redis_server.url)
    value = BAD_VALUES[bad]()
    with TieredCache.from_settings(settings) as cache:
        threshold = 5  # the breaker's default failure_threshold
        for attempt in range(2 * threshold):
            with pytest.raises(CodecError):
                cache.set(f"bad:{attempt}", value)
            with pytest.raises(CodecError):
                cache.get(f"loaded:{attempt}", loader=lambda: value)
        # Nothing of the bad values reached Redis, and no faster tier holds a copy.
        assert raw.keys(f"*{namespace}*bad*") == []
        assert cache.get("bad:0", loader=lambda: "fresh") == "fresh"
        redis_stats = cache.stats()["tiers"][1]
        assert (redis_stats["errors"], redis_stats["skips"]) == (0, 0)
        # The breaker is closed: a good value still goes to Redis.
        cache.set("good", {"t": "fine"})
        assert raw.exists(f"{namespace}:good") == 1
    raw.close()


def test_the_error_names_where_the_lone_surrogate_sits(
    redis_server: RedisServer, namespace: str
) -> None:
    settings = load_settings(
        namespace=namespace, tiers=[{"kind": "redis", "url": redis_server.url}]
    )
    with (
        TieredCache.from_settings(settings) as cache,
        pytest.raises(CodecError, match=r"^value\['t'\]: .*lone surrogate"),
    ):
        cache.set("k", _lone_surrogate())


BAD_AFTER_THE_SOURCE = {**BAD_VALUES, "int-past-4300-digits": lambda: {"n": 10**5000}}


@pytest.mark.parametrize("bad", sorted(BAD_AFTER_THE_SOURCE))
def test_a_value_redis_cannot_hold_is_refused_before_the_source_takes_it(
    redis_server: RedisServer, namespace: str, bad: str
) -> None:
    # The source was written before the tiers encoded: a source that takes any value (a
    # decorated function's, a custom one) then held what no read could cache. Before that
    # was refused up front, the write dropped the key everywhere after the source took it;
    # earlier still, Redis kept the old copy for its ttl and the lease was left behind (an
    # int past 4,300 digits even passed as "stored"). Now nothing changes anywhere.
    source = DictSource({"k": "old"})
    settings = load_settings(
        namespace=namespace, tiers=[{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}]
    )
    raw = redis.Redis.from_url(redis_server.url)
    tiers = [MemoryTier(), RedisTier(redis.Redis.from_url(redis_server.url), namespace=namespace)]
    with TieredCache(tiers, source) as writer, TieredCache.from_settings(settings) as other:
        assert writer.get("k") == "old" and other.get("k", loader=lambda: "?") == "old"
        value = BAD_AFTER_THE_SOURCE[bad]()
        with pytest.raises(CodecError):
            writer.set("k", value)
        assert source.items["k"] == "old"
        assert raw.keys(f"*{namespace}*") == [f"{namespace}:k".encode()]  # the old, no lease
        assert writer.get("k") == other.get("k", loader=lambda: "?") == "old"
        stats = writer.stats()["tiers"][1]
        assert (stats["errors"], stats["skips"]) == (0, 0)
    raw.close()
