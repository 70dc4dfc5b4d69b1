"""The Redis tier against real servers: storage format, expiry, codecs, batching, namespaces."""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.connection import Connection
from tiered_cache_redis import AsyncRedisTier, RedisTier, make_async_client, make_client

from tiered_cache import TieredCache
from tiered_cache.errors import CodecError, ConfigError
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.logged import ours
from tiered_cache.testing.servers import RedisCluster, RedisServer
from tiered_cache.testing.values import assert_same_value as assert_same
from tiered_cache.tier import MISSING, Entry


def entry(clock: FakeClock, value: Any, lifetime: float = 600.0, version: int = 0) -> Entry:
    now = clock()
    return Entry(value, now, now + lifetime / 2, now + lifetime, 0.125, version)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def tier(redis_server: RedisServer, namespace: str, clock: FakeClock) -> Iterator[RedisTier]:
    tier = RedisTier(make_client(redis_server.url, timeout=2.0), namespace=namespace, clock=clock)
    yield tier
    tier.clear()
    tier.close()


def memory_and_redis(url: str, namespace: str, **options: Any) -> TieredCache:
    """A chain of memory (every key admitted) over the Redis at ``url``, without a bus."""
    return TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s"},
        ],
        bus={"kind": "off"},
        **options,
    )


def command_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# --- storage format and expiry


def expiry_set_by(raw: redis.Redis, write: Callable[[], object], key: str) -> range:
    """The expiries, in ms from the write, that ``write`` may have given ``key``: read off
    Redis's own clock (TIME before and after the write, then PEXPIRETIME) rather than as a
    PTTL counting down, which a loaded machine shortens by however long the test took to
    ask (a bound on it is a bound on time). The range is as wide as the write took."""

    def now_ms() -> int:
        seconds, micros = raw.time()
        return int(seconds) * 1000 + int(micros) // 1000

    before = now_ms()
    write()
    after = now_ms()
    at = int(raw.execute_command("PEXPIRETIME", key))
    assert at > 0, f"{key} has no expiry ({at})"
    return range(at - after - 1, at - before + 2)  # Redis rounds its clock to the ms


def test_key_is_namespaced_and_value_has_header_then_payload(
    tier: RedisTier, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    tier.set("tweet:1", entry(clock, {"text": "hi"}))
    data = raw.get(f"{namespace}:tweet:1")
    assert data is not None
    assert data.startswith(b"tc\x01")
    assert data.endswith(b'{"text":"hi"}')
    assert raw.exists("tweet:1") == 0


def test_redis_expiry_is_the_entry_hard_expiry_when_shorter_than_ttl(
    tier: RedisTier, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    written = expiry_set_by(
        raw, lambda: tier.set("k", entry(clock, "v", lifetime=10.0)), f"{namespace}:k"
    )
    assert 10_000 in written


def test_redis_expiry_is_capped_by_the_tier_ttl(
    redis_server: RedisServer, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    tier = RedisTier(make_client(redis_server.url), namespace=namespace, ttl=60.0, clock=clock)
    # the entry itself never expires
    written = expiry_set_by(raw, lambda: tier.set("k", Entry("v", clock())), f"{namespace}:k")
    assert 60_000 in written
    clock.advance(60.0)
    assert tier.get("k") is MISSING  # the tier's own expiry, judged by the injected clock
    tier.clear()
    tier.close()


def test_no_ttl_and_no_hard_expiry_means_no_redis_expiry(
    redis_server: RedisServer, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    tier = RedisTier(make_client(redis_server.url), namespace=namespace, ttl=None, clock=clock)
    tier.set("k", Entry("v", clock()))
    assert raw.pttl(f"{namespace}:k") == -1
    tier.clear()
    tier.close()


def test_jitter_shortens_the_ttl(
    redis_server: RedisServer, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    tier = RedisTier(
        make_client(redis_server.url), namespace=namespace, ttl=100.0, ttl_jitter=0.5, clock=clock
    )
    started = time.monotonic()
    tier.set_many({f"k{i}": Entry(i, clock()) for i in range(20)})
    ttls = {raw.pttl(f"{namespace}:k{i}") for i in range(20)}
    # Redis counts real time down while we read: a TTL drawn at the 50 s floor reads lower by
    # the milliseconds since the write (on a loaded machine, enough to fail a fixed floor).
    since = math.ceil((time.monotonic() - started) * 1000)
    assert all(50_000 - since <= ttl <= 100_000 for ttl in ttls)
    assert len(ttls) > 1
    tier.clear()
    tier.close()


def test_setting_an_expired_entry_removes_the_key(
    tier: RedisTier, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    tier.set("k", entry(clock, "v"))
    now = clock()
    tier.set("k", Entry("v2", now - 5, now - 2, now - 1))
    assert raw.exists(f"{namespace}:k") == 0


# --- codecs through real Redis

DYNAMO_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.text()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.floats(allow_nan=False)
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.sampled_from(["$d", "$o", "$s"]), children)
        | st.sets(st.text(), max_size=4)
        | st.frozensets(st.binary(), max_size=3)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def codec_tiers(redis_server: RedisServer) -> Iterator[dict[str, RedisTier]]:
    tiers = {
        name: RedisTier(
            make_client(redis_server.url, timeout=2.0), namespace=f"codec-{name}", codec=name
        )
        for name in ("json", "msgpack", "pickle")
    }
    yield tiers
    for tier in tiers.values():
        tier.clear()
        tier.close()


@pytest.mark.parametrize("codec", ["json", "msgpack", "pickle"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=DYNAMO_VALUES)
def test_values_round_trip_through_redis(
    codec_tiers: dict[str, RedisTier], codec: str, value: Any
) -> None:
    tier = codec_tiers[codec]
    stored = Entry(value, 1.0, version=7)
    tier.set("v", stored)
    got = tier.get("v")
    assert got == stored
    assert_same(got.value, value)


def test_a_value_that_cannot_be_encoded_writes_nothing(
    tier: RedisTier, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    with pytest.raises(CodecError, match=r"value\['author'\]: object of type datetime"):
        tier.set("new", entry(clock, {"author": datetime.datetime(2024, 1, 1)}))
    assert raw.exists(f"{namespace}:new") == 0

    tier.set("old", entry(clock, "kept"))
    with pytest.raises(CodecError):
        tier.set("old", entry(clock, object()))
    got = tier.get("old")
    assert got is not MISSING
    assert got.value == "kept"


def test_set_many_with_one_bad_value_writes_none_of_them(
    tier: RedisTier, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    entries = {f"k{i}": entry(clock, i) for i in range(10)}
    entries["k5"] = entry(clock, {1, 2, object()})
    with pytest.raises(CodecError):
        tier.set_many(entries)
    assert raw.exists(*[f"{namespace}:k{i}" for i in range(10)]) == 0


def test_version_out_of_header_range_is_a_codec_error(
    tier: RedisTier, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    with pytest.raises(CodecError, match="version"):
        tier.set("k", entry(clock, "v", version=2**64))
    assert raw.exists(f"{namespace}:k") == 0


def test_data_of_another_codec_or_format_is_a_logged_miss(
    redis_server: RedisServer,
    raw: redis.Redis,
    clock: FakeClock,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = RedisTier(make_client(redis_server.url), namespace=namespace, codec="msgpack")
    reader = RedisTier(make_client(redis_server.url), namespace=namespace, codec="json")
    writer.set("k", Entry("v", clock()))
    raw.set(f"{namespace}:garbage", b"not a tiered-cache entry")
    with caplog.at_level(logging.WARNING, logger="tiered_cache_redis.tier"):
        assert reader.get("k") is MISSING
        assert reader.get_many(["k", "garbage"]) == {}
    logged = ours(caplog.records)
    assert len(logged) == 3
    # Keys are named by their hash in log records, never as they are.
    assert all("garbage" not in record.getMessage() for record in logged)
    assert {record.__dict__["event"] for record in logged} == {"undecodable"}
    assert writer.get("k") is not MISSING
    writer.clear()
    writer.close()
    reader.close()


def test_entries_the_tier_cannot_read_are_counted_in_the_chains_stats_and_metrics(
    redis_server: RedisServer, raw: redis.Redis, clock: FakeClock, namespace: str
) -> None:
    """Values another program (or another codec) wrote were logged misses only: stats() and
    the exporters showed them as plain misses, so a Redis shared with a writer of another
    format looked like a cold cache."""
    from tiered_cache.contrib.series import series

    # Leases off: each key is read once from Redis (a lease re-reads it).
    cache = memory_and_redis(redis_server.url, namespace, protection={"lease": "off"}, clock=clock)
    with cache:
        for key in ("g1", "g2", "g3"):
            raw.set(f"{namespace}:{key}", b"not a tiered-cache entry")
        assert cache.get_many(["g1", "g2"], lambda keys: dict.fromkeys(keys, "v")) == {
            "g1": "v",
            "g2": "v",
        }
        assert cache.get("g3", lambda: "v") == "v"
        cache.tiers[0].clear()
        assert cache.get("g1") == "v"  # overwritten by the fill: read as it is
        stats = cache.stats()
        assert stats["tiers"][1]["undecodable"] == 3
        assert "undecodable" not in stats["tiers"][0]
        published = {item.spec.name: item.samples for item in series(stats)}
        assert published["tier_undecodable"] == [({"namespace": namespace, "tier": "redis"}, 3.0)]


def test_get_many_decodes_each_value_as_get_does_a_bad_one_failing_alone(
    tier: RedisTier,
    raw: redis.Redis,
    clock: FakeClock,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One MGET, the payloads decoded as a batch: a tagged value, a long int, a value whose
    # payload is corrupt (its header intact), one of an unknown format and one expired by the
    # chain's clock sit among plain ones; each reads as its own get does.
    values: dict[str, Any] = {f"plain{i}": {"id": str(i), "n": i} for i in range(5)}
    values |= {"decimal": {"likes": Decimal("7.50")}, "long": 2**70, "bytes": b"\x00"}
    tier.set_many({key: entry(clock, value) for key, value in values.items()})
    tier.set("short", entry(clock, "soon gone", lifetime=10))
    good = raw.get(f"{namespace}:plain0")
    assert good is not None
    raw.set(f"{namespace}:corrupt", good[:-3])
    raw.set(f"{namespace}:garbage", b"not a tiered-cache entry")
    clock.advance(20)
    keys = [*values, "corrupt", "garbage", "short", "absent"]
    with caplog.at_level(logging.WARNING, logger="tiered_cache_redis.tier"):
        found = tier.get_many(keys)
        one_by_one = {key: tier.get(key) for key in keys}
    assert sorted(found) == sorted(values)
    for key, value in values.items():
        assert_same(found[key].value, value)
        assert found[key] == one_by_one[key]
    assert one_by_one["corrupt"] is MISSING and one_by_one["short"] is MISSING
    # corrupt and garbage: logged once by the batch, once by their own get
    assert len(ours(caplog.records)) == 4


# --- round trips: one command per batch


def test_batches_are_one_command_each(tier: RedisTier, raw: redis.Redis, clock: FakeClock) -> None:
    keys = [f"k{i}" for i in range(100)]
    raw.config_resetstat()
    tier.set_many({key: entry(clock, key) for key in keys})
    found = tier.get_many([*keys, "absent"])
    tier.delete_many(keys)
    assert len(found) == 100
    assert command_calls(raw, "set") == 100  # pipelined: one round trip
    assert command_calls(raw, "mget") == 1
    assert command_calls(raw, "get") == 0
    # one UNLINK of the leases the set_many superseded, one for delete_many (keys + leases)
    assert command_calls(raw, "unlink") == 2
    assert tier.get_many(keys) == {}


# --- namespaces and clear()


def test_clear_removes_only_this_namespace(
    redis_server: RedisServer, raw: redis.Redis, clock: FakeClock
) -> None:
    # "a*b" must not match "aXb": the namespace is escaped in the SCAN pattern.
    mine = RedisTier(make_client(redis_server.url), namespace="a*b", clock=clock)
    other = RedisTier(make_client(redis_server.url), namespace="aXb", clock=clock)
    mine.set_many({f"k{i}": entry(clock, i) for i in range(1200)})  # more than one SCAN batch
    other.set("k0", entry(clock, "other"))
    raw.set("unrelated", b"1")
    raw.config_resetstat()
    mine.clear()
    assert mine.get_many([f"k{i}" for i in range(1200)]) == {}
    assert other.get("k0") is not MISSING
    assert raw.get("unrelated") == b"1"
    assert command_calls(raw, "flushdb") == 0
    assert command_calls(raw, "flushall") == 0
    other.clear()
    raw.delete("unrelated")
    mine.close()
    other.close()


def test_close_is_idempotent_and_final(redis_server: RedisServer, namespace: str) -> None:
    tier = RedisTier(make_client(redis_server.url), namespace=namespace)
    tier.close()
    tier.close()
    with pytest.raises(RuntimeError, match="closed"):
        tier.get("k")


# --- cluster


@pytest.fixture
def cluster_tier(
    redis_cluster: RedisCluster, namespace: str, clock: FakeClock
) -> Iterator[RedisTier]:
    tier = RedisTier(make_client(redis_cluster.url, timeout=2.0), namespace=namespace, clock=clock)
    yield tier
    tier.clear()
    tier.close()


def node_keys(cluster: RedisCluster, pattern: str) -> list[int]:
    counts = []
    for host, port in cluster.startup_nodes:
        with redis.Redis(host=host, port=port) as node:
            counts.append(sum(1 for _ in node.scan_iter(match=pattern)))
    return counts


def test_cluster_batches_span_slots_and_nodes(
    cluster_tier: RedisTier, redis_cluster: RedisCluster, clock: FakeClock, namespace: str
) -> None:
    keys = [f"tweet:{i}" for i in range(300)]
    cluster_tier.set_many({key: entry(clock, Decimal(i)) for i, key in enumerate(keys)})
    per_node = node_keys(redis_cluster, f"{namespace}:*")
    assert sum(per_node) == 300
    assert all(count > 0 for count in per_node)  # the keys really are spread over the masters

    found = cluster_tier.get_many([*keys, "tweet:absent"])
    assert {key: e.value for key, e in found.items()} == {
        key: Decimal(i) for i, key in enumerate(keys)
    }
    cluster_tier.delete_many(keys[:150])
    assert sorted(cluster_tier.get_many(keys)) == sorted(keys[150:])
    cluster_tier.clear()
    assert node_keys(redis_cluster, f"{namespace}:*") == [0, 0, 0]


def test_cluster_get_many_is_one_round_trip_per_node(
    cluster_tier: RedisTier,
    redis_cluster: RedisCluster,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100 keys over ~100 hash slots on 3 masters: one MGET per slot, sent as one batch per
    node (a send of a batch, then its replies, is one round trip)."""
    keys = [f"tweet:{i}" for i in range(100)]
    cluster_tier.set_many({key: entry(clock, i) for i, key in enumerate(keys)})
    sends: Counter[tuple[str, int]] = Counter()
    send = Connection.send_packed_command

    def counted(conn: Connection, command: Any, check_health: bool = True) -> None:
        sends[(conn.host, conn.port)] += 1
        send(conn, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    found = cluster_tier.get_many(keys)
    monkeypatch.undo()
    assert {key: e.value for key, e in found.items()} == {key: i for i, key in enumerate(keys)}
    assert sorted(sends) == sorted(redis_cluster.startup_nodes)
    assert sorted(sends.values()) == [1, 1, 1]


def test_cluster_leases_of_a_batch_over_every_node(
    cluster_tier: RedisTier, redis_cluster: RedisCluster, clock: FakeClock, namespace: str
) -> None:
    keys = [f"tweet:{i}" for i in range(60)]
    looks = cluster_tier.acquire_leases(keys, ttl=5)
    assert all(token is not None and current is MISSING for token, current in looks.values())
    assert all(token is None for token, _ in cluster_tier.acquire_leases(keys, ttl=5).values())
    kept = cluster_tier.fill_with_leases(
        {key: (entry(clock, i), looks[key][0]) for i, key in enumerate(keys)}  # type: ignore[misc]
    )
    assert kept == set(keys)
    assert all(count > 0 for count in node_keys(redis_cluster, f"{namespace}:*"))
    assert {key: e.value for key, e in cluster_tier.get_many(keys).items()} == {
        key: i for i, key in enumerate(keys)
    }


def test_cluster_keys_that_cannot_be_leased_load_without_a_lease_and_without_an_error(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    cache = memory_and_redis(redis_cluster.url, namespace)
    loads: list[list[str]] = []

    def source(keys: Sequence[str]) -> dict[str, str]:
        loads.append(sorted(keys))
        return {key: f"v:{key}" for key in keys}

    keys = ["plain:1", "{tagged}:2", "plain:3"]
    assert cache.get_many(keys, source) == {key: f"v:{key}" for key in keys}
    # One batch: the braced key is loaded without a lease, beside the others; that is not a
    # failure of the tier (no error, no skip, no breaker trip).
    assert loads == [sorted(keys)]
    assert cache.get("{tagged}:9", lambda: "single") == "single"  # get() alike
    assert cache.stats()["tiers"][1]["errors"] == cache.stats()["tiers"][1]["skips"] == 0
    assert cache.tiers[1].get("{tagged}:2").value == "v:{tagged}:2"  # type: ignore[union-attr]
    cache.close()


@pytest.mark.parametrize("kind", [RedisTier, AsyncRedisTier])
def test_both_tiers_take_the_stored_formats_options_and_refuse_no_key_per_call(
    redis_server: RedisServer, kind: type[RedisTier] | type[AsyncRedisTier]
) -> None:
    """The sync and asyncio tiers hand their stored format's options on as they are (one
    declaration of them: ``StoredOptions``), and refuse fewer than one key per call (one
    check: ``TierCommands``'s); neither connects here."""
    connect: Any = make_client if kind is RedisTier else make_async_client
    with pytest.raises(ConfigError, match=r"^keys_per_call: .* greater than or equal to 1"):
        kind(connect=lambda: connect(redis_server.url), keys_per_call=0)
    with pytest.raises(ConfigError, match=r"^max_value_size: .* greater than or equal to 1"):
        kind(connect=lambda: connect(redis_server.url), max_value_size=0)
    tier = kind(
        connect=lambda: connect(redis_server.url),
        name="l2",
        namespace="app:v2",
        ttl=5.0,
        keys_per_call=3,
    )
    assert (tier.name, tier.namespace, tier.redis_key("k")) == ("l2", "app:v2", "app\\:v2:k")
    default = kind(connect=lambda: connect(redis_server.url))
    assert (default.name, default.namespace) == ("redis", "default")
