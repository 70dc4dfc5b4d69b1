"""The Redis tier under faults (slow, cut, reset, restarted server) and its configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.connection import SSLConnection
from redis.exceptions import RedisClusterException
from redis.utils import HIREDIS_AVAILABLE
from tiered_cache_redis import (
    PLUGIN,
    SHARED_TIER_KEY,
    RedisTier,
    RedisTierSettings,
    build_redis_tier,
    make_client,
    parse_url,
)

from tiered_cache.breaker import CircuitBreakerTier, LeasingCircuitBreakerTier, guard
from tiered_cache.errors import ConfigError, TierUnavailable
from tiered_cache.leases import LeasingTier
from tiered_cache.registry import BuildContext, find_plugin
from tiered_cache.settings import BreakerSettings, CacheSettings, load_settings
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.servers import FaultProxy, RedisServer, refused_port
from tiered_cache.tier import MISSING, Entry


@pytest.fixture
def proxied_tier(proxy: FaultProxy, namespace: str) -> Iterator[RedisTier]:
    tier = RedisTier(make_client(proxy.url(), timeout=0.1), namespace=namespace)
    yield tier
    tier.close()


# --- faults


def test_a_slow_server_makes_get_raise_a_timeout(
    proxied_tier: RedisTier, proxy: FaultProxy
) -> None:
    proxied_tier.set("k", Entry("v", 0.0))
    proxy.delay(1.0)
    with pytest.raises(redis.TimeoutError):
        proxied_tier.get("k")
    with pytest.raises(redis.TimeoutError):
        proxied_tier.get_many(["k", "j"])
    proxy.restore()
    got = proxied_tier.get("k")
    assert got is not MISSING
    assert got.value == "v"


@pytest.mark.skipif(HIREDIS_AVAILABLE, reason="with hiredis, redis-py's parser reads the reply")
def test_a_reply_that_trickles_in_is_bounded_by_the_timeout(
    proxied_tier: RedisTier, proxy: FaultProxy
) -> None:
    """A link that delivers a byte every 10 ms never keeps one receive waiting for the
    timeout (0.1 s), but takes seconds over a reply of a few kilobytes: the timeout bounds
    the reply, not each receive (as redis.asyncio bounds it for the asyncio tier), so the
    chain skips Redis as it would a silent one, rather than wait."""
    proxied_tier.set_many({"k": Entry("v" * 2000, 0.0), "j": Entry("w" * 2000, 0.0)})
    assert proxied_tier.get("k") is not MISSING  # a connection parked, the trickle on it
    proxy.trickle(1, 0.01)
    with pytest.raises(redis.TimeoutError):
        proxied_tier.get("k")  # 2,000 bytes: 20 s
    with pytest.raises(redis.TimeoutError):
        proxied_tier.get_many(["k", "j"])
    proxy.restore()
    got = proxied_tier.get_many(["k", "j"])
    assert {key: entry.value for key, entry in got.items()} == {"k": "v" * 2000, "j": "w" * 2000}


def test_a_cut_connection_raises_and_heals_after_restore(
    proxied_tier: RedisTier, proxy: FaultProxy
) -> None:
    proxied_tier.set("k", Entry("v", 0.0))
    proxy.cut()
    with pytest.raises(redis.ConnectionError):
        proxied_tier.get("k")
    with pytest.raises(redis.ConnectionError):
        proxied_tier.set("k", Entry("w", 0.0))
    proxy.restore()
    assert proxied_tier.get("k") is not MISSING


def test_a_reset_pooled_connection_is_retried_once_on_a_new_one(
    proxied_tier: RedisTier, proxy: FaultProxy
) -> None:
    proxied_tier.set("k", Entry("v", 0.0))
    proxy.reset()
    got = proxied_tier.get("k")  # the pooled socket is dead; one immediate reconnect serves it
    assert got is not MISSING
    assert got.value == "v"


def test_a_stopped_server_makes_the_tier_raise_until_it_is_back(namespace: str) -> None:
    with RedisServer() as server:
        tier = RedisTier(make_client(server.url, timeout=0.5), namespace=namespace)
        outcomes: list[str] = []
        for i in range(10):
            if i == 4:
                server.stop()
            if i == 7:
                server.start()  # same port, empty (no persistence)
            try:
                tier.set(f"k{i}", Entry(i, 0.0))
                got = tier.get(f"k{i}")
                outcomes.append("ok" if got is not MISSING and got.value == i else "wrong")
            except redis.ConnectionError:
                outcomes.append("error")
        tier.close()
    assert outcomes == ["ok"] * 4 + ["error"] * 3 + ["ok"] * 3


def test_breaker_around_a_dead_redis_stops_touching_it(
    redis_server: RedisServer, proxy: FaultProxy, namespace: str
) -> None:
    clock = FakeClock()
    inner = RedisTier(make_client(proxy.url(), timeout=0.1), namespace=namespace, clock=clock)
    tier = CircuitBreakerTier(inner, failure_threshold=3, cool_down=5.0, clock=clock)
    tier.set("k", Entry("v", clock()))
    proxy.cut()
    for _ in range(3):
        with pytest.raises(TierUnavailable) as info:
            tier.get("k")
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert tier.state == "open"
    proxy.restore()
    with redis.Redis.from_url(redis_server.url) as raw:
        raw.config_resetstat()
        for _ in range(20):
            with pytest.raises(TierUnavailable):
                tier.get("k")
        assert int(raw.info("commandstats").get("cmdstat_get", {}).get("calls", 0)) == 0
    clock.advance(5.0)
    assert tier.get("k") is not MISSING  # the probe succeeds
    assert tier.state == "closed"
    tier.close()


def test_a_guarded_redis_tier_keeps_its_leases_the_settings_and_the_clock(
    redis_server: RedisServer, namespace: str
) -> None:
    clock = FakeClock()
    settings = BreakerSettings(failure_threshold=2, cool_down=30.0)
    tier = guard(RedisTier(make_client(redis_server.url), namespace=namespace), settings)
    assert (tier.failure_threshold, tier.cool_down) == (2, 30.0)
    assert isinstance(tier, LeasingTier)
    explicit = LeasingCircuitBreakerTier(tier.tier, settings, failure_threshold=4, cool_down=9.0)
    assert (explicit.failure_threshold, explicit.cool_down) == (4, 9.0)  # arguments win
    token, entry = tier.acquire_lease("k", 5.0)
    assert token is not None and entry is MISSING
    tier.release_lease("k", token)  # given back: the next caller gets it at once
    again, _ = tier.acquire_lease("k", 5.0)
    assert again is not None
    tier.close()
    dead = RedisTier(
        make_client(f"redis://127.0.0.1:{refused_port()}", timeout=0.1), namespace=namespace
    )
    guarded = guard(dead, settings, clock=clock)
    for _ in range(2):
        with pytest.raises(TierUnavailable):
            guarded.get("k")
    assert guarded.state == "open"
    clock.advance(30.0)  # the chain's clock ends the cool-down, not the wall clock
    assert guarded.state == "half-open"
    guarded.close()


# --- URLs and client options


def test_plain_url_gives_a_lazy_client_with_short_timeouts_and_one_retry() -> None:
    client = make_client("redis://cache.internal:6380/2", timeout=0.05, pool_size=7)
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6380, 2)
    assert kwargs["socket_timeout"] == 0.05
    assert kwargs["socket_connect_timeout"] == 0.05
    assert kwargs["retry"].get_retries() == 1
    assert pool.max_connections == 7
    assert isinstance(pool, redis.BlockingConnectionPool)
    client.close()


def test_tls_and_credentials_come_from_the_url() -> None:
    client = make_client(
        "rediss://alice:s%40cret@cache.internal:6390/0", timeout=0.05, connect_timeout=1.0
    )
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("alice", "s@cret")
    assert kwargs["socket_connect_timeout"] == 1.0
    client.close()


@pytest.mark.parametrize(
    ("url", "flag", "redis_py_url", "cluster", "tls"),
    [
        ("redis://h:1/0", False, "redis://h:1/0", False, False),
        ("redis://h:1", True, "redis://h:1", True, False),
        ("rediss://h:1/0", False, "rediss://h:1/0", False, True),
        ("redis+cluster://h:1", False, "redis://h:1", True, False),
        ("rediss+cluster://u:p@h:1", False, "rediss://u:p@h:1", True, True),
        ("unix:///tmp/redis.sock", False, "unix:///tmp/redis.sock", False, False),
    ],
)
def test_parse_url(url: str, flag: bool, redis_py_url: str, cluster: bool, tls: bool) -> None:
    target = parse_url(url, cluster=flag)
    assert (target.url, target.cluster, target.tls) == (redis_py_url, cluster, tls)


@pytest.mark.parametrize("url", ["http://h:1", "localhost:6379", "unix+cluster:///x"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_url(url)


def test_auth_for_real(namespace: str) -> None:
    with RedisServer(password="s3cret") as server:
        good = RedisTier(make_client(server.url, timeout=1.0), namespace=namespace)
        good.set("k", Entry("v", 0.0))
        assert good.get("k") is not MISSING
        good.close()
        as_user = f"redis://default:s3cret@127.0.0.1:{server.port}/0"
        user_tier = RedisTier(make_client(as_user, timeout=1.0), namespace=namespace)
        assert user_tier.get("k") is not MISSING
        user_tier.close()
        for url in (
            f"redis://127.0.0.1:{server.port}/0",
            f"redis://:wrong@127.0.0.1:{server.port}",
        ):
            bad = RedisTier(make_client(url, timeout=1.0), namespace=namespace)
            with pytest.raises(redis.AuthenticationError):
                bad.get("k")
            bad.close()


# --- settings and the plugin


def test_settings_defaults_and_parsing() -> None:
    settings = RedisTierSettings(url="redis://h:1/0", timeout="20ms", ttl="5m", codec="msgpack")
    assert settings.kind == "redis"
    assert settings.timeout == pytest.approx(0.02)
    assert settings.ttl == 300.0
    assert RedisTierSettings().ttl == 3600.0
    assert RedisTierSettings().timeout == pytest.approx(0.05)
    assert RedisTierSettings().codec == "json"
    for name, field in RedisTierSettings.model_fields.items():
        assert field.description, f"field {name} has no description"


def test_settings_errors_name_the_field_path() -> None:
    with pytest.raises(ConfigError, match=r"tiered_cache\.tiers\[0\]\.timout"):
        load_settings(tiers=[{"kind": "redis", "timout": "1s"}])
    with pytest.raises(ConfigError, match=r"tiered_cache\.tiers\[0\]\.codec: unknown codec \("):
        load_settings(tiers=[{"kind": "redis", "codec": "yaml"}])
    with pytest.raises(ConfigError, match=r"tiered_cache\.tiers\[1\]\.url: unsupported URL"):
        load_settings(tiers=[{"kind": "memory"}, {"kind": "redis", "url": "http://h"}])


def test_the_kind_is_found_by_entry_point() -> None:
    assert find_plugin("redis") is PLUGIN
    settings = CacheSettings(tiers=[{"kind": "redis", "url": "redis://h:1/0"}])
    assert isinstance(settings.tiers[0], RedisTierSettings)


def test_build_uses_the_chain_namespace_and_shares_the_tier(redis_server: RedisServer) -> None:
    shared: dict[str, object] = {}
    context = BuildContext("tweets", FakeClock(), 1, shared)
    tier = build_redis_tier(RedisTierSettings(url=redis_server.url), context)
    assert isinstance(tier, RedisTier)
    assert tier.namespace == "tweets"
    assert shared[SHARED_TIER_KEY] is tier
    named = build_redis_tier(RedisTierSettings(url=redis_server.url, namespace="own"), context)
    assert isinstance(named, RedisTier)
    assert named.namespace == "own"
    assert shared[SHARED_TIER_KEY] is tier  # the first Redis tier of the chain is the shared one
    tier.close()
    named.close()


def test_a_cluster_that_is_down_at_build_fails_calls_not_the_build() -> None:
    dead = f"redis+cluster://127.0.0.1:{refused_port()}"
    tier = build_redis_tier(
        RedisTierSettings(url=dead, timeout="50ms"), BuildContext("ns", FakeClock(), 1)
    )
    assert isinstance(tier, RedisTier)
    with pytest.raises(RedisClusterException, match="cannot be connected"):
        tier.get("k")
    tier.close()
