"""Coherence over a real Redis: the bus between chains and between processes, and a cut bus
connection (a TCP proxy in front of the server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tiered_cache import TieredCache
from tiered_cache.testing.servers import FaultProxy, RedisServer

#: Generous bound for "the bus has delivered": asserted here; measured by the benchmark.
BUS_DELAY_BOUND = 2.0


def chain(url: str, namespace: str, bus_url: str | None = None, **extra: Any) -> TieredCache:
    bus: dict[str, Any] = {"kind": "redis", "health_check_interval": "1s", "timeout": "1s"}
    if bus_url is not None:
        bus["url"] = bus_url
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "admission": "always", "ttl": "10m"},
            {"kind": "redis", "url": url, "timeout": "1s"},
        ],
        ttl="10m",
        bus=bus,
        **extra,
    )
    link = cache._bus_link
    assert link is not None
    assert link.bus.wait_subscribed(10)  # type: ignore[attr-defined]
    return cache


def eventually(check: Callable[[], bool], within: float = BUS_DELAY_BOUND) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_the_bus_is_on_by_default_with_memory_and_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    cache = TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "memory"}, {"kind": "redis", "url": redis_server.url}],
    )
    assert cache._bus_link is not None
    assert cache.stats()["bus"] == "connected"
    cache.close()
    alone = TieredCache.from_config(namespace=namespace, tiers=[{"kind": "memory"}])
    assert alone._bus_link is None
    alone.close()


def test_a_write_reaches_the_other_chains_memory(redis_server: RedisServer, namespace: str) -> None:
    a = chain(redis_server.url, namespace)
    b = chain(redis_server.url, namespace)
    source = {"k": "old"}
    assert b.get("k", lambda: source["k"]) == "old"
    assert b.get("k", lambda: "never") == "old"  # from b's memory
    source["k"] = "new"
    a.set("k", "new")
    assert eventually(lambda: b.get("k", lambda: "never") == "new")
    assert b.stats()["bus_received"] >= 1
    a.invalidate_prefix("k")
    assert eventually(lambda: b.get("k", lambda: "reloaded") == "reloaded")
    a.close()
    b.close()


def test_a_cut_bus_connection_bypasses_memory_until_it_is_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """The bus of b goes through a proxy that we cut. Writes made meanwhile by a are not heard
    by b; b must not serve its in-memory copy once it noticed the cut."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        a = chain(redis_server.url, namespace)
        b = chain(redis_server.url, namespace, bus_url=proxy.url("redis"))
        assert b.get("k", lambda: "v0") == "v0"
        proxy.cut()
        assert eventually(lambda: b.stats()["bus"] == "down", within=10)
        for version in range(1, 4):
            a.set("k", f"v{version}")  # b hears nothing of these
            assert b.get("k", lambda: "never") == f"v{version}"
        assert b.stats()["bus_disconnects"] == 1
        proxy.restore()
        assert eventually(lambda: b.stats()["bus"] == "connected", within=10)
        assert b.get("k", lambda: "never") == "v3"
        a.set("k", "v4")
        assert eventually(lambda: b.get("k", lambda: "never") == "v4")
        a.close()
        b.close()


def test_four_processes_see_a_write_within_the_bus_delay(
    redis_server: RedisServer, namespace: str
) -> None:
    """4 real processes read one key in a loop through their own chains; this test writes a
    new value through a chain of its own. Once the write returned and the bus delay bound
    passed, no process returns the old value."""
    table = redis.Redis.from_url(redis_server.url, decode_responses=True)
    table.hset(f"{namespace}:table", "tweet:1", "old")
    worker = Path(__file__).with_name("coherence_worker.py")
    processes = [
        subprocess.Popen(
            [sys.executable, str(worker), redis_server.url, namespace, "tweet:1", "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    assert eventually(lambda: int(table.get(f"{namespace}:ready") or 0) == 4, within=60)
    writer = chain(redis_server.url, namespace)
    time.sleep(0.5)  # every reader has the old value in memory by now
    table.hset(f"{namespace}:table", "tweet:1", "new")
    writer.set("tweet:1", "new")
    written_at = time.time()
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4
    for output in outputs:
        lines = [json.loads(line) for line in output.splitlines()]
        changes = [line for line in lines if line[0] != "stats"]
        assert changes[0][1] == "old"
        assert changes[-1][1] == "new"
        switched_at = next(at for at, value in changes if value == "new")
        assert switched_at - written_at < BUS_DELAY_BOUND
        # after the switch, never the old value again
        assert all(value == "new" for at, value in changes if at >= switched_at)
    writer.close()
    table.close()
