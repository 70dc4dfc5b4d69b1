"""The asyncio DynamoDB source in a forked child (multiprocessing's fork start from a service
that used it on a loop, a prefork server whose parent warmed it up).

An aiobotocore client belongs to the loop it was made on, and its connection pool holds the
parent's sockets: in the child, on a loop of its own, every request failed ("a Future
attached to a different loop"), so the child could load nothing, for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tiered_cache_dynamodb import AsyncDynamoDBSource
from tiered_cache_dynamodb.testing import MotoDynamoDB, seed_items

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.testing.async_conformance import LoopThread
from tiered_cache.testing.forked import in_a_child

#: Generous: a child that has not reported by then is hung, not slow.
HUNG = 30.0


def test_a_forked_child_loads_on_a_client_of_its_own(
    moto_server: MotoDynamoDB, admin_client: Any, make_table: Callable[..., str]
) -> None:
    table = make_table()
    keys = [f"k{i}" for i in range(10)]
    seed_items(admin_client, table, keys)
    source = AsyncDynamoDBSource.from_settings(moto_server.settings(table=table, key="id"))
    cache = AsyncTieredCache([MemoryTier(max_entries=100)], source, ttl=60)
    loop = LoopThread()
    assert loop.run(cache.get("k0"))["n"] == 0  # the parent's client, on the parent's loop

    async def main() -> list[Any]:
        seen: list[Any] = []
        for key in keys[1:4]:
            try:
                seen.append(int((await cache.get(key))["n"]))
            except Exception as exc:
                seen.append(type(exc).__name__)
        try:
            many = await cache.get_many(keys[4:7])
            seen.append(sorted(int(item["n"]) for item in many.values()))
        except Exception as exc:
            seen.append(type(exc).__name__)
        await cache.aclose()
        return seen

    seen = in_a_child(lambda: asyncio.run(main()), HUNG)
    assert [loop.run(cache.get(key))["n"] for key in keys[7:]] == [7, 8, 9]  # the parent's
    assert seen == [1, 2, 3, [4, 5, 6]]
    loop.run(cache.aclose())
    loop.close()
