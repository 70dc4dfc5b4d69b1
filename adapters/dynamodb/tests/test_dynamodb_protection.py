"""Source protection end to end: a chain built from settings (memory + Redis + DynamoDB) in front
of a real moto server whose requests botocore throttles through ``ThrottleInjector``.

Every server is private: moto on a free loopback port (the session fixture of conftest.py) and a
``redis-server`` of this module's own. Time is a ``FakeClock`` shared by the chain, its tiers
and the throttle's token buckets, so each test decides exactly when entries go stale; botocore's
retry backoff is made instant. Assertions are on values, errors and request counts only.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis
from tiered_cache_dynamodb import BatchThrottledError, DynamoDBSource
from tiered_cache_dynamodb.testing import MotoDynamoDB, ThrottleInjector

from tiered_cache import (
    MemoryTier,
    PartialBatchError,
    SourceResting,
    SourceThrottled,
    TieredCache,
)
from tiered_cache.protection import Protection
from tiered_cache.settings import CacheSettings
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.servers import RedisServer

MAX_ATTEMPTS = 3
TTL = 60.0
MAX_STALE = 300.0
FAIL_SAFE_THROTTLE = 5.0
#: How long a key the table throttled rests (the default).
BACKOFF = Protection().throttle_backoff


@pytest.fixture(scope="session")
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of these tests on a free loopback port (never the machine's 6379)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    # Near the real time: Redis computes its PX expiries from the chain's clock.
    return FakeClock(time.time())


@pytest.fixture
def table(make_table: Callable[..., str]) -> str:
    return make_table(key="tweet_id")


def tweet(tweet_id: int) -> dict[str, Any]:
    return {"tweet_id": str(tweet_id), "text": f"tweet number {tweet_id}"}


def put_tweets(admin_client: Any, table: str, ids: Sequence[int]) -> None:
    for tweet_id in ids:
        admin_client.put_item(
            TableName=table,
            Item={"tweet_id": {"S": str(tweet_id)}, "text": {"S": f"tweet number {tweet_id}"}},
        )


MakeCache = Callable[..., TieredCache]
StaleCache = Callable[..., TieredCache]

#: One process, so no invalidation bus (when the settings know about one): nothing to keep
#: coherent, and its start-up would only add Redis traffic to the counts.
BUS_OFF: dict[str, Any] = {"bus": {"kind": "off"}} if "bus" in CacheSettings.model_fields else {}


@pytest.fixture
def make_cache(
    moto_server: MotoDynamoDB, private_redis: RedisServer, table: str, clock: FakeClock
) -> Iterator[MakeCache]:
    """``make_cache(**protection)``: memory + redis + dynamodb, built with ``from_config``."""
    made: list[TieredCache] = []

    def make(**protection: Any) -> TieredCache:
        cache = TieredCache.from_config(
            clock=clock,
            **BUS_OFF,
            namespace=f"t-{uuid.uuid4().hex[:12]}",
            ttl=TTL,
            protection={"max_stale": MAX_STALE, "fail_safe_throttle": FAIL_SAFE_THROTTLE}
            | protection,
            tiers=[
                {"kind": "memory", "max_entries": 1000},
                # A generous timeout: a loaded CI box must not trip the breaker in these tests.
                {"kind": "redis", "url": private_redis.url, "timeout": "2s"},
            ],
            source={
                "kind": "dynamodb",
                "table": table,
                "key": "tweet_id",
                "key_template": "tweet:{tweet_id}",
                "max_attempts": MAX_ATTEMPTS,
                **moto_server.settings_kwargs(),
            },
        )
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.wait_background(10)
        cache.close()


def client_of(cache: TieredCache) -> Any:
    """The boto3 client of the chain's DynamoDB source (where requests are counted)."""
    source = cache.source
    assert isinstance(source, DynamoDBSource)
    return source.client


class Calls:
    """API calls per operation on a client (``before-call``: botocore's retries are one call)."""

    def __init__(self, client: Any) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-call.dynamodb", self._on_call)

    def _on_call(self, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append(str(kwargs["event_name"]).rpartition(".")[2])

    def count(self, operation: str) -> int:
        return self.calls.count(operation)


def run_threads(n_threads: int, work: Callable[[int], object]) -> list[BaseException]:
    """Run ``work(i)`` on ``n_threads`` threads started together; the exceptions they raised."""
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def body(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def warm(cache: TieredCache, keys: Sequence[str]) -> None:
    for key in keys:
        assert cache.get(key) is not None


@pytest.fixture
def stale_cache(
    make_cache: MakeCache, admin_client: Any, table: str, clock: FakeClock
) -> StaleCache:
    """``stale_cache(ids, **protection)``: a cache that read tweets ``ids`` from the table,
    which have since gone stale (past their TTL, well within ``max_stale``)."""

    def make(ids: Sequence[int], **protection: Any) -> TieredCache:
        put_tweets(admin_client, table, ids)
        cache = make_cache(**protection)
        warm(cache, [f"tweet:{i}" for i in ids])
        clock.advance(TTL + 60)
        return cache

    return make


# -- the source throttled at 100% for keys that were cached -------------------------------------


def test_throttled_source_serves_stale_values_and_each_refresh_spends_its_retry_budget(
    stale_cache: StaleCache, botocore_delays: list[float]
) -> None:
    """Defaults (stale-while-revalidate): a stale read answers at once with the stale value
    and starts one background refresh; a refresh that the throttle defeats costs exactly
    ``max_attempts`` HTTP attempts (botocore's own retries), and no caller sees it. After the
    failure the source is rested for ``fail_safe_throttle``: the second round of reads is
    served from memory without asking the table again."""
    keys = [f"tweet:{i}" for i in range(5)]
    cache = stale_cache(range(5))
    injector = ThrottleInjector().register(client_of(cache))

    for _ in range(2):
        for key in keys:
            assert cache.get(key) == tweet(int(key.partition(":")[2]))
            assert cache.wait_background(10)

    stats = cache.stats()
    assert stats["stale_served"] == len(keys)  # the first round; the second is rested
    assert stats["stale_served_on_error"] == 0
    assert stats["refresh_failures"] == stats["refreshes"] == len(keys)
    assert stats["load_failures"] == stats["refresh_failures"]
    # The retry budget bounds what each refresh costs the throttled table.
    assert injector.attempts == injector.throttled
    assert injector.attempts == stats["refresh_failures"] * MAX_ATTEMPTS
    assert len(botocore_delays) == stats["refresh_failures"] * (MAX_ATTEMPTS - 1)


@pytest.mark.usefixtures("botocore_delays")
def test_throttled_source_fail_safe_asks_once_per_key_per_fail_safe_throttle(
    stale_cache: StaleCache, clock: FakeClock
) -> None:
    """Without stale-while-revalidate, 8 threads read 5 stale keys: each key's load fails once
    (single-flight shares it), fail-safe serves the stale value to everyone, and for
    ``fail_safe_throttle`` seconds no read asks the source again."""
    keys = [f"tweet:{i}" for i in range(5)]
    # No soft timeout (real seconds): on a loaded machine a throttled load past it served the
    # stale value as slow (not failed), went on in the background, and its key loaded again.
    cache = stale_cache(range(5), stale_while_revalidate=False, soft_timeout=None)
    injector = ThrottleInjector().register(client_of(cache))
    seen: list[tuple[str, Any]] = []

    def read(index: int) -> None:
        for n in range(25):
            key = keys[(index + n) % len(keys)]
            seen.append((key, cache.get(key)))

    errors = run_threads(8, read)

    assert errors == []
    assert len(seen) == 200
    assert all(value == tweet(int(key.partition(":")[2])) for key, value in seen)
    stats = cache.stats()
    assert stats["stale_served_on_error"] == len(keys)
    assert stats["load_failures"] == len(keys)
    assert stats["refresh_failures"] == 0
    assert injector.attempts == injector.throttled == len(keys) * MAX_ATTEMPTS

    # Past the fail-safe throttle (still within max_stale): one more try per key.
    clock.advance(FAIL_SAFE_THROTTLE + 1)
    for _ in range(3):
        for key in keys:
            assert cache.get(key) == tweet(int(key.partition(":")[2]))
    assert cache.stats()["stale_served_on_error"] == 2 * len(keys)
    assert injector.attempts == 2 * len(keys) * MAX_ATTEMPTS


class Gate:
    """A ``before-send`` hook, first in line, that holds the first request until released."""

    def __init__(self, client: Any) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._first = True
        client.meta.events.register_first("before-send.dynamodb", self._hold)

    def _hold(self, **kwargs: Any) -> None:
        if self._first:
            self._first = False
            self.entered.set()
            self.release.wait(10)


def wait_for_waiter(cache: TieredCache, key: str, alive: Callable[[], bool]) -> None:
    """Until a thread waits on ``key``'s flight (or ``alive()`` turns false; 5 s at most).

    Reads the chain's private single-flight table: nothing public shows a waiting reader.
    """
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive():
        flight = cache._loader.flights.in_flight(key)
        if flight is not None and flight.waiters > 0:
            return
        time.sleep(0.001)


@pytest.mark.usefixtures("botocore_delays")
def test_a_reader_joining_a_failing_refresh_gets_the_stale_value(stale_cache: StaleCache) -> None:
    cache = stale_cache([1])
    client = client_of(cache)
    gate = Gate(client)
    ThrottleInjector().register(client)

    # A stale read starts a refresh; hold its GetItem at the gate. (A refresh can be lost, see
    # the next test: read again until one reaches the source.)
    for _ in range(20):
        assert cache.get("tweet:1") == tweet(1)
        if gate.entered.wait(1.0):
            break
        assert cache.wait_background(10)
    assert gate.entered.is_set()

    outcome: list[Any] = []

    def reader() -> None:
        try:
            outcome.append(cache.get("tweet:1"))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    wait_for_waiter(cache, "tweet:1", thread.is_alive)
    gate.release.set()  # the refresh now fails: throttled, max_attempts times
    thread.join(10)
    assert cache.wait_background(10)

    # "Only a key that was never cached surfaces the source's error."
    assert outcome == [tweet(1)]


def test_a_refresh_started_during_the_readers_flight_still_loads(
    moto_server: MotoDynamoDB, admin_client: Any, table: str, clock: FakeClock
) -> None:
    put_tweets(admin_client, table, [1])
    source = DynamoDBSource.from_settings(
        moto_server.settings(table=table, key="tweet_id", key_template="tweet:{tweet_id}")
    )
    calls = Calls(source.client)
    workers: list[threading.Thread] = []
    cache: TieredCache | None = None

    def background(task: Callable[[], None]) -> None:
        # What the refresh pool does when a worker is free: start the task at once. Return
        # once it runs into the reader's flight (or has finished).
        worker = threading.Thread(target=task)
        workers.append(worker)
        worker.start()
        assert cache is not None
        wait_for_waiter(cache, "tweet:1", worker.is_alive)

    cache = TieredCache(
        [MemoryTier(max_entries=100, ttl=1000, clock=clock)],
        source,
        ttl=TTL,
        clock=clock,
        protection=Protection(max_stale=MAX_STALE, early_refresh_beta=0.0),
        background=background,
    )
    with cache:
        assert cache.get("tweet:1") == tweet(1)
        clock.advance(TTL + 1)
        assert cache.get("tweet:1") == tweet(1)  # stale, and one refresh started
        for worker in workers:
            worker.join(10)
        assert cache.stats()["refreshes"] == 1
        assert calls.count("GetItem") == 2  # the refresh read the table


@pytest.mark.usefixtures("botocore_delays")
def test_a_failed_background_refresh_rests_the_source_for_fail_safe_throttle(
    stale_cache: StaleCache,
) -> None:
    cache = stale_cache([1])
    injector = ThrottleInjector().register(client_of(cache))

    # Reads within one fail_safe_throttle window (the clock stands still), each after the last
    # refresh finished. (Some refreshes may be lost, see above: read until two have failed.)
    for _ in range(50):
        assert cache.get("tweet:1") == tweet(1)
        assert cache.wait_background(10)
        if cache.stats()["refresh_failures"] > 1:
            break

    # ProtectionSettings.fail_safe_throttle: "After a failed load, serve the stale value as
    # fresh for this long so the failing source is not asked on every read."
    assert cache.stats()["refresh_failures"] <= 1
    assert injector.attempts <= MAX_ATTEMPTS


@pytest.mark.usefixtures("botocore_delays")
def test_a_key_never_cached_surfaces_source_throttled(
    make_cache: MakeCache,
    admin_client: Any,
    table: str,
    clock: FakeClock,
    private_redis: RedisServer,
) -> None:
    put_tweets(admin_client, table, [1, 2])
    cache = make_cache()
    warm(cache, ["tweet:1"])
    injector = ThrottleInjector().register(client_of(cache))

    with pytest.raises(SourceThrottled, match="ProvisionedThroughputExceededException"):
        cache.get("tweet:2")
    assert injector.attempts == MAX_ATTEMPTS
    assert cache.get("tweet:1") == tweet(1)  # a cached key is still served
    assert injector.attempts == MAX_ATTEMPTS
    stats = cache.stats()
    assert stats["load_failures"] == 1
    assert stats["stale_served_on_error"] == 0

    # The failed load gave its lease back and cached nothing: once the throttle lifts, the
    # next read past the key's rest (throttle_backoff) loads at once.
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.keys(f"*{cache.namespace}:tweet:2*") == []
    injector.unregister()
    clock.advance(BACKOFF)
    assert cache.get("tweet:2") == tweet(2)


# -- a key never cached while the table throttles: the key rests (throttle_backoff) ----------


def throttled_reads(cache: TieredCache, key: str, n_threads: int, reads: int) -> list[Any]:
    """What ``n_threads`` threads got from ``reads`` reads of ``key`` each: a value or the
    type of the error it raised."""
    seen: list[Any] = []

    def read(index: int) -> None:
        for _ in range(reads):
            try:
                seen.append(cache.get(key))
            except SourceThrottled:  # a rest's SourceResting too
                seen.append(SourceThrottled)

    assert run_threads(n_threads, read) == []
    return seen


def a_throttled_table(
    make_cache: MakeCache, admin_client: Any, table: str, tweet_id: int, **protection: Any
) -> tuple[TieredCache, ThrottleInjector, Calls]:
    """Tweet ``tweet_id`` in the table, never cached by a new chain (``protection``), and
    every read of the table throttled: the chain, the throttle and the calls counted."""
    put_tweets(admin_client, table, [tweet_id])
    cache = make_cache(**protection)
    client = client_of(cache)
    injector = ThrottleInjector(operations={"GetItem", "BatchGetItem"}).register(client)
    return cache, injector, Calls(client)


@pytest.mark.usefixtures("botocore_delays")
def test_readers_of_a_never_cached_key_the_table_throttles_make_one_get_item_per_backoff(
    make_cache: MakeCache, admin_client: Any, table: str, clock: FakeClock
) -> None:
    """20 threads read a key that was never cached while the table throttles every read, the
    clock standing still: one GetItem (its 3 attempts) and every caller a SourceThrottled. On
    4bde99e each caller after a failed flight started the next one (many GetItems)."""
    cache, injector, calls = a_throttled_table(make_cache, admin_client, table, 7)
    n_threads, reads = 20, 25

    seen = throttled_reads(cache, "tweet:7", n_threads, reads)

    assert seen == [SourceThrottled] * (n_threads * reads)
    assert calls.count("GetItem") == 1
    assert injector.attempts == MAX_ATTEMPTS
    stats = cache.stats()
    assert stats["load_failures"] == 1
    # Every other read was answered by the failed flight or by the rest, with no request.
    assert stats["loads_rested"] + stats["singleflight_waits"] == n_threads * reads - 1
    assert stats["loads_rested"] > 0

    # Past the back-off, one more GetItem for the same crowd; then the throttle lifts.
    clock.advance(BACKOFF)
    assert throttled_reads(cache, "tweet:7", n_threads, 5) == [SourceThrottled] * n_threads * 5
    assert calls.count("GetItem") == 2
    injector.unregister()
    assert throttled_reads(cache, "tweet:7", 1, 1) == [SourceThrottled]  # still resting
    clock.advance(BACKOFF)
    assert throttled_reads(cache, "tweet:7", n_threads, 5) == [tweet(7)] * n_threads * 5
    assert calls.count("GetItem") == 3


@pytest.mark.usefixtures("botocore_delays")
def test_a_resting_key_written_is_served_and_invalidated_loads_again(
    make_cache: MakeCache, admin_client: Any, table: str
) -> None:
    """The rest is the key's until an invalidation: a write's value is served, and after an
    invalidation the next read asks the table again (the clock standing still); get_many
    is answered by the rest too."""
    cache, injector, calls = a_throttled_table(make_cache, admin_client, table, 8)
    with pytest.raises(SourceThrottled):
        cache.get("tweet:8")
    with pytest.raises(SourceResting):
        cache.get("tweet:8")
    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["tweet:8"])
    assert isinstance(caught.value.errors["tweet:8"], SourceResting)
    assert calls.count("GetItem") + calls.count("BatchGetItem") == 1

    cache.set("tweet:8", {"tweet_id": "8", "text": "edited"})  # PutItem is not throttled
    assert cache.get("tweet:8") == {"tweet_id": "8", "text": "edited"}
    cache.invalidate("tweet:8")
    injector.unregister()
    assert cache.get("tweet:8") == {"tweet_id": "8", "text": "edited"}
    assert calls.count("GetItem") == 2
    assert cache.stats()["loads_rested"] == 2


@pytest.mark.usefixtures("botocore_delays")
def test_a_zero_throttle_backoff_asks_the_table_on_every_miss(
    make_cache: MakeCache, admin_client: Any, table: str
) -> None:
    cache, _, calls = a_throttled_table(make_cache, admin_client, table, 9, throttle_backoff=0)
    assert throttled_reads(cache, "tweet:9", 1, 4) == [SourceThrottled] * 4
    assert calls.count("GetItem") == 4
    assert cache.stats()["loads_rested"] == 0


# -- a hot key under a per-key token bucket ------------------------------------------------


def test_hot_key_under_a_partition_token_bucket_costs_a_handful_of_get_items(
    make_cache: MakeCache,
    admin_client: Any,
    table: str,
    clock: FakeClock,
    botocore_delays: list[float],
) -> None:
    """32 threads hammer one tweet while the table allows 5 reads/s on its partition: cold,
    stale and expired, each phase costs at most one GetItem, and no caller sees an error."""
    put_tweets(admin_client, table, [42])
    cache = make_cache()
    client = client_of(cache)
    injector = ThrottleInjector(per_key_rate=5.0, clock=clock).register(client)
    calls = Calls(client)
    n_threads, reads = 32, 50
    seen: list[Any] = []

    def hammer(index: int) -> None:
        for _ in range(reads):
            seen.append(cache.get("tweet:42"))

    phases = [
        ("cold", 0.0),
        ("stale", TTL + 1),  # within max_stale: served stale while one refresh runs
        ("expired", TTL + MAX_STALE + 1),  # past the hard expiry: a read-through again
    ]
    for phase, advance in phases:
        before = calls.count("GetItem")
        clock.advance(advance)
        errors = run_threads(n_threads, hammer)
        assert cache.wait_background(10)
        assert errors == [], phase
        # Cold and expired: exactly one read-through (single-flight and the Redis lease).
        # Stale: exactly the one background refresh.
        assert calls.count("GetItem") - before == 1, phase

    assert len(seen) == len(phases) * n_threads * reads
    assert all(value == tweet(42) for value in seen)
    assert injector.throttled == 0
    assert 2 <= calls.count("GetItem") <= len(phases)
    assert calls.count("BatchGetItem") == 0

    # The bucket is real: the same threads reading the table directly, once each, at the same
    # instant, are throttled (5 tokens for 32 readers, botocore's retries included).
    direct = DynamoDBSource(client, table, "tweet_id", key_template="tweet:{tweet_id}")
    failures = run_threads(n_threads, lambda index: direct.load("tweet:42"))
    assert len(failures) >= n_threads - 5
    assert all(isinstance(exc, SourceThrottled) for exc in failures)


# -- get_many --------------------------------------------------------------------------------


def test_get_many_of_250_missing_keys_makes_3_batch_get_items(
    make_cache: MakeCache, admin_client: Any, table: str
) -> None:
    put_tweets(admin_client, table, range(0, 250, 5))  # 50 of the 250 exist
    cache = make_cache()
    calls = Calls(client_of(cache))
    keys = [f"tweet:{i}" for i in range(250)]

    values = cache.get_many(keys)

    assert calls.count("BatchGetItem") == 3
    assert calls.count("GetItem") == 0
    assert list(values) == keys
    assert {key: value for key, value in values.items() if value is not None} == {
        f"tweet:{i}": tweet(i) for i in range(0, 250, 5)
    }
    # Everything, "not found" included, is cached now: no further request.
    assert cache.get_many(keys) == values
    assert calls.count("BatchGetItem") + calls.count("GetItem") == 3


def test_a_throttled_get_many_serves_the_stale_keys_and_reports_the_others(
    make_cache: MakeCache, admin_client: Any, table: str, clock: FakeClock
) -> None:
    """Issue 16, defect 4: with the table throttled, a batch mixing keys that have a stale copy
    and keys that have none returns the stale ones and reports only the others."""
    put_tweets(admin_client, table, [1, 2, 3])
    cache = make_cache(stale_while_revalidate=False)
    assert cache.get_many(["tweet:1", "tweet:2"]) == {"tweet:1": tweet(1), "tweet:2": tweet(2)}
    clock.advance(TTL + 1)  # stale, within max_stale
    ThrottleInjector().register(client_of(cache))

    with pytest.raises(PartialBatchError) as caught:
        cache.get_many(["tweet:1", "tweet:3", "tweet:2"])

    assert caught.value.values == {"tweet:1": tweet(1), "tweet:2": tweet(2)}
    assert list(caught.value.errors) == ["tweet:3"]
    assert isinstance(caught.value.errors["tweet:3"], BatchThrottledError)
