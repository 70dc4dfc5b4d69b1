"""A Redis tier built in code meets the rules of a config file's Redis tier, from their one
home (``RedisTierSettings``' fields): ``StoredFormat`` copied the ``ttl``, ``ttl_jitter``
and ``max_value_size`` rules and took a NaN or infinite ``ttl`` (every write then failed:
Redis's expiry is a whole number of milliseconds); ``TierCommands`` copied
``keys_per_call``'s; ``make_client`` took a ``timeout`` of 0 (redis-py's sockets went
non-blocking) and a pool of 0 connections. Each error names the argument, never its value."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from tiered_cache_redis import AsyncRedisTier, RedisTier, make_async_client, make_client
from tiered_cache_redis.stored import StoredFormat

from tiered_cache import ConfigError, load_settings
from tiered_cache.testing.servers import RedisServer

#: A value the settings' Redis tier refuses, by argument (the field of the same name).
TIER_REFUSED: list[tuple[str, Any]] = [
    ("ttl", math.nan),
    ("ttl", math.inf),
    ("ttl", 0),
    ("ttl", -1.0),
    ("ttl", True),
    ("ttl_jitter", 1.0),
    ("ttl_jitter", -0.1),
    ("max_value_size", 0),
    ("keys_per_call", 0),
]


@pytest.mark.parametrize(("argument", "value"), TIER_REFUSED)
@pytest.mark.parametrize("kind", [RedisTier, AsyncRedisTier], ids=["sync", "async"])
def test_a_redis_tier_built_in_code_refuses_what_its_settings_refuse(
    redis_server: RedisServer, kind: Any, argument: str, value: Any
) -> None:
    connect: Any = make_client if kind is RedisTier else make_async_client
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        kind(connect=lambda: connect(redis_server.url), **{argument: value})
    with pytest.raises(ConfigError, match=rf"tiered_cache\.tiers\[0\]\.{argument}: "):
        load_settings(tiers=[{"kind": "redis", argument: value}])


@pytest.mark.parametrize(
    ("argument", "value"), [("ttl", math.nan), ("ttl", math.inf), ("max_value_size", -1)]
)
def test_the_stored_format_refuses_what_the_settings_refuse(argument: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        StoredFormat(**{argument: value})


@pytest.mark.parametrize(
    ("argument", "value"),
    [("timeout", 0), ("timeout", math.nan), ("connect_timeout", 0.0), ("pool_size", 0)],
)
@pytest.mark.parametrize("make", [make_client, make_async_client], ids=["sync", "async"])
def test_a_client_made_in_code_refuses_what_the_settings_refuse(
    redis_server: RedisServer, make: Any, argument: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        make(redis_server.url, **{argument: value})
    with pytest.raises(ConfigError, match=rf"tiered_cache\.tiers\[0\]\.{argument}: "):
        load_settings(tiers=[{"kind": "redis", argument: value}])


def test_a_redis_tier_built_in_code_reads_durations_and_sizes_as_the_settings_do(
    redis_server: RedisServer,
) -> None:
    tier = RedisTier(
        connect=lambda: make_client(redis_server.url, timeout="200ms"),
        ttl=timedelta(hours=1),
        max_value_size="1KiB",
    )
    assert (tier._stored._ttl, tier._stored._max_value_size) == (3600.0, 1024)
    assert StoredFormat(ttl="1h30m")._ttl == 5400.0
    client = make_client(redis_server.url, timeout="200ms", connect_timeout="1s")
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.2, 1.0)
    finally:
        client.close()
    tier.close()


def test_a_refused_argument_is_never_shown(redis_server: RedisServer) -> None:
    secret = "redis://:hunter2@cache:6379"
    for build in (
        lambda: RedisTier(connect=lambda: make_client(redis_server.url), ttl=secret),
        lambda: StoredFormat(max_value_size=secret),
        lambda: make_client(redis_server.url, timeout=secret),
    ):
        with pytest.raises(ConfigError) as refused:
            build()
        assert "hunter2" not in str(refused.value), refused.value
