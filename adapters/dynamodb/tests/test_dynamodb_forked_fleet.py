"""A forked fleet (gunicorn ``--preload``, Celery prefork, multiprocessing's fork start): one
chain -- memory, Redis, the bus, a DynamoDB table -- built and used by the parent, then four
workers forked from it, each reading what the parent writes.

What each worker must see, by docs/consistency.md: the fork counted once in its
``bus_disconnects`` as ``fork()`` returns, its bus ``connected`` once its own subscription is
confirmed; a write the parent made
through the cache (``set``), or to the table directly followed by ``invalidate``, reaches
every worker's memory within the bus's delay (2 s, as the four-process test asserts); with
the bus cut, every worker says ``down`` within ``health_check_interval + timeout``, reads
the parent's writes from Redis meanwhile (memory copies kept at most
``max_stale_when_disconnected``), and says ``connected`` again once the bus is back.

Real parts: moto kept alive (as DynamoDB keeps connections: each worker's source makes its
own), a private redis-server, the bus through a :class:`FaultProxy` (the tier goes to Redis
directly). The parent tells the workers what phase it is in through a Redis key.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis
from tiered_cache_dynamodb.testing import MotoDynamoDB

from tiered_cache import TieredCache
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.polling import eventually, until
from tiered_cache.testing.servers import FaultProxy, RedisServer

WORKERS = 4
KEYS = [f"k{i}" for i in range(6)]
#: The bus's checks, short so that a cut is seen quickly (the defaults are 1 s each).
HEALTH_CHECK_INTERVAL = 0.3
BUS_TIMEOUT = 0.3
MAX_STALE_WHEN_DISCONNECTED = 0.2
#: How soon a write must be heard (the four-process test's bound).
BUS_DELAY = 2.0
#: A child that has not reported by then is hung, not slow.
HUNG = 30.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def item(key: str, version: int) -> dict[str, Any]:
    return {"id": key, "v": version}


def version_of(value: Any) -> Any:
    return None if value is None else int(value["v"])


class Phases:
    """The parent's phase, in a Redis key every worker reads (each worker its own client)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.key = f"{namespace}:phase"

    def enter(self, phase: str) -> None:
        with redis.Redis.from_url(self.url) as control:
            control.set(self.key, phase)

    def wait(self, phase: str) -> None:
        with redis.Redis.from_url(self.url) as control:
            until(lambda: control.get(self.key) == phase.encode(), f"the parent's {phase!r}", HUNG)


def worker(cache: TieredCache, phases: Phases, report: Callable[[Any], None]) -> None:
    """What each forked worker does; each ``report`` is one step's findings."""
    # The fork is counted before fork() returns (that the child is down from then is
    # test_redis_coherence's to show, with its listener held: here it may have subscribed).
    at_fork = cache.stats()["bus_disconnects"]
    connected = eventually(lambda: cache.stats()["bus"] == "connected", HUNG, every=0.005)
    report({"disconnects at fork": at_fork, "connected": connected, **counts(cache)})

    warm = [version_of(cache.get(key)) for key in KEYS]  # memory copies, the parent's v0
    report({"warm": warm})

    phases.wait("written")
    heard = eventually(lambda: versions(cache) == [1] * len(KEYS), BUS_DELAY, every=0.005)
    report({"heard": heard, "versions": versions(cache), **counts(cache)})

    phases.wait("cut")
    down = eventually(
        lambda: cache.stats()["bus"] == "down",
        HEALTH_CHECK_INTERVAL + BUS_TIMEOUT + 2.0,  # slack for a loaded machine
        every=0.005,
    )
    report({"down": down, **counts(cache)})

    phases.wait("written while cut")
    read = eventually(
        lambda: versions(cache) == [2] * len(KEYS),
        MAX_STALE_WHEN_DISCONNECTED + 2.0,
        every=0.005,
    )
    report({"read while cut": read, "versions": versions(cache)})

    phases.wait("restored")
    back = eventually(lambda: cache.stats()["bus"] == "connected", HUNG, every=0.005)
    report({"back": back, "versions": versions(cache), **counts(cache)})
    cache.close()


def versions(cache: TieredCache) -> list[Any]:
    return [version_of(cache.get(key)) for key in KEYS]


def counts(cache: TieredCache) -> dict[str, Any]:
    stats = cache.stats()
    return {"bus": stats["bus"], "bus_disconnects": stats["bus_disconnects"]}


class MultiprocessingChild:
    """:class:`ForkedChild`'s ``read``/``wait``/``kill`` for a ``multiprocessing`` process of
    the ``fork`` start method."""

    def __init__(self, body: Callable[[Callable[[Any], None]], None]) -> None:
        context = multiprocessing.get_context("fork")
        self._reports, sending = context.Pipe(duplex=False)
        self._process = context.Process(target=_run, args=(body, sending), daemon=True)
        self._process.start()
        sending.close()

    def read(self, timeout: float | None = None) -> Any:
        if not self._reports.poll(timeout):
            self.kill()
            raise TimeoutError(f"the worker reported nothing within {timeout} s")
        return self._reports.recv()

    def wait(self) -> int:
        self._process.join(HUNG)
        return self._process.exitcode if self._process.exitcode is not None else -1

    def kill(self) -> None:
        self._process.kill()
        self._process.join(HUNG)


def _run(body: Callable[[Callable[[Any], None]], None], sending: Connection) -> None:
    body(sending.send)


@pytest.mark.parametrize("start", ["os.fork", "multiprocessing"])
def test_a_forked_fleet_hears_the_parent_and_tells_its_bus_state(
    start: str,
    kept_alive: MotoDynamoDB,
    admin_client: Any,
    make_table: Callable[..., str],
    redis_server: RedisServer,
) -> None:
    table = make_table()
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    with FaultProxy(redis_server.host, redis_server.port) as bus_proxy:
        cache = TieredCache.from_config(
            namespace=namespace,
            ttl=60,
            tiers=[
                {"kind": "memory", "max_entries": 100, "admission": "always"},
                {"kind": "redis", "url": redis_server.url, "timeout": "2s"},
            ],
            bus={
                "kind": "redis",
                "url": bus_proxy.url(),
                "timeout": BUS_TIMEOUT,
                "health_check_interval": HEALTH_CHECK_INTERVAL,
                "max_stale_when_disconnected": MAX_STALE_WHEN_DISCONNECTED,
            },
            source={
                "kind": "dynamodb",
                "table": table,
                "key": "id",
                **kept_alive.settings_kwargs(),
            },
        )
        for key in KEYS:
            cache.set(key, item(key, 0))
        until(lambda: cache.stats()["bus"] == "connected", "the parent's bus subscribed")
        assert versions(cache) == [0] * len(KEYS)
        phases = Phases(redis_server.url, namespace)
        phases.enter("forked")

        launch = ForkedChild if start == "os.fork" else MultiprocessingChild
        workers = [launch(lambda report: worker(cache, phases, report)) for _ in range(WORKERS)]
        try:
            started = [child.read(HUNG) for child in workers]
            warm = [child.read(HUNG) for child in workers]

            half = len(KEYS) // 2
            for key in KEYS[:half]:  # through the cache
                cache.set(key, item(key, 1))
            for key in KEYS[half:]:  # to the table directly, then invalidated
                admin_client.put_item(TableName=table, Item={"id": {"S": key}, "v": {"N": "1"}})
                cache.invalidate(key)
            phases.enter("written")
            heard = [child.read(HUNG) for child in workers]

            bus_proxy.cut()
            phases.enter("cut")
            down = [child.read(HUNG) for child in workers]
            for key in KEYS:
                cache.set(key, item(key, 2))
            phases.enter("written while cut")
            read_while_cut = [child.read(HUNG) for child in workers]

            bus_proxy.restore()
            phases.enter("restored")
            back = [child.read(HUNG) for child in workers]
            codes = [child.wait() for child in workers]
        finally:
            for child in workers:
                child.kill()
        final = versions(cache)
        cache.close()

    for report in started:
        assert report["disconnects at fork"] == 1, report
        assert report["connected"] is True, report
        assert report["bus"] == "connected" and report["bus_disconnects"] == 1, report
    assert all(report["warm"] == [0] * len(KEYS) for report in warm), warm
    assert all(report["heard"] is True for report in heard), heard
    assert all(report["bus_disconnects"] == 1 for report in heard), heard
    assert all(report["down"] is True for report in down), down
    assert all(report["bus"] == "down" and report["bus_disconnects"] == 2 for report in down), down
    assert all(report["read while cut"] is True for report in read_while_cut), read_while_cut
    for report in back:
        assert report["back"] is True and report["versions"] == [2] * len(KEYS), report
        assert report["bus"] == "connected" and report["bus_disconnects"] == 2, report
    assert codes == [0] * WORKERS
    assert final == [2] * len(KEYS)
    table_items = {
        key: int(admin_client.get_item(TableName=table, Key={"id": {"S": key}})["Item"]["v"]["N"])
        for key in KEYS
    }
    assert table_items == dict.fromkeys(KEYS, 2)
