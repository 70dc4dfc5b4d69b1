"""A load of a chain without a source (writes go to Redis, its only copy) that fills after a
write of its key: the write stays in Redis, whatever the load brought.

Two chains over one real redis-server stand for two processes, without a bus: only Redis
(its data and leases) orders the load's fill and the write. The write's plain ``SET`` voids
the key's lease (``Fence._write_sole``), so the fill under it fails. A load whose entry had
nothing to keep (its ``ttl`` 0, or a ``None`` with ``negative_ttl`` 0) dropped the key from
Redis without asking its lease: it deleted the write made meanwhile (seen failing:
``assert MISSING == 'new'``, threads and asyncio, ``get`` and ``get_many``). A call's ``ttl``
of 0 is refused since (as the settings refuse it): the ``None`` not cached is the load with
nothing to keep, and takes the same fill (``FILL_IF_HOLDING`` with an empty value).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from tiered_cache_redis import RedisTier

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import Entry, MissingType

#: ``(get's ttl, what the load brings)``: a value kept, a miss not cached (nothing to keep).
LOADS = [(None, "old"), (None, None)]


def config(url: str, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "bus": {"kind": "off"},  # only Redis orders the two chains
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "2s"},
        ],
        "negative_ttl": "0s",
        "protection": {
            "lease_poll": "10ms",
            "lease_ttl": "200ms",
            "lease_wait": "30s",
            "max_stale": "0s",
            "soft_timeout": None,
        },
    }


def in_redis(server: RedisServer, namespace: str, key: str) -> Any:
    tier = RedisTier(redis.Redis.from_url(server.url), namespace=namespace)
    found: Entry | MissingType = tier.get(key)
    tier.close()
    return found.value if found else found


@pytest.mark.parametrize("expired", [False, True], ids=["lease held", "lease expired"])
@pytest.mark.parametrize("read", ["get", "get_many"])
@pytest.mark.parametrize("load", LOADS, ids=["kept", "None not cached"])
def test_a_sourceless_load_that_fills_after_a_write_leaves_the_write(
    redis_server: RedisServer,
    namespace: str,
    read: str,
    load: tuple[float | None, str | None],
    expired: bool,
) -> None:
    ttl, brought = load
    reader = TieredCache.from_config(**config(redis_server.url, namespace))
    writer = TieredCache.from_config(**config(redis_server.url, namespace))
    loading = threading.Event()
    written = threading.Event()

    def loader() -> str | None:
        loading.set()
        assert written.wait(10), "the write never came"
        return brought

    if read == "get":
        thread = threading.Thread(target=lambda: reader.get("k", loader, ttl=ttl))
    else:
        thread = threading.Thread(
            target=lambda: reader.get_many(["k"], lambda keys: {"k": loader()}, ttl=ttl)
        )
    thread.start()
    assert loading.wait(10)
    if expired:
        time.sleep(0.4)  # past lease_ttl: Redis dropped the load's lease
    writer.set("k", "new")
    written.set()
    thread.join()
    assert in_redis(redis_server, namespace, "k") == "new"  # failed: MISSING (None)
    assert writer.get("k") == "new"
    assert reader.get("k") == "new"
    reader.close()
    writer.close()


@pytest.mark.anyio
@pytest.mark.parametrize("read", ["get", "get_many"])
@pytest.mark.parametrize("load", LOADS[1:], ids=["None not cached"])
async def test_an_async_sourceless_load_that_fills_after_a_write_leaves_the_write(
    redis_server: RedisServer, namespace: str, read: str, load: tuple[float | None, str | None]
) -> None:
    ttl, brought = load
    reader = AsyncTieredCache.from_config(**config(redis_server.url, namespace))
    writer = AsyncTieredCache.from_config(**config(redis_server.url, namespace))
    loading = asyncio.Event()
    written = asyncio.Event()

    async def loader() -> str | None:
        loading.set()
        await written.wait()
        return brought

    async def load_many(keys: list[str]) -> dict[str, str | None]:
        return {"k": await loader()}

    reading: Callable[[], Awaitable[Any]] = (
        (lambda: reader.get("k", loader, ttl=ttl))
        if read == "get"
        else (lambda: reader.get_many(["k"], load_many, ttl=ttl))
    )
    task = asyncio.ensure_future(reading())
    await loading.wait()
    await writer.set("k", "new")
    written.set()
    await task
    assert in_redis(redis_server, namespace, "k") == "new"  # failed: MISSING
    assert await writer.get("k") == "new"
    assert await reader.get("k") == "new"
    await reader.aclose()
    await writer.aclose()
