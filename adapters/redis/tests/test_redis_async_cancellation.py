"""A caller of the asyncio chain cancelled at each await of its call, in turn (a client that
went away, an ``asyncio.timeout``), over a real redis-server: what it leaves must not hurt the
next call.

Each walk cancels one kind of call at its 1st, 2nd, ... await (``cancelled_at``) until the
call ends before the cancellation, and after each step checks that nothing was left: no lease
in Redis, no flight that a second caller would join for ever, no copy in memory or in Redis
older than the source, no connection of the pool held by nobody, no Redis call failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis
from tiered_cache_redis import AsyncRedisTier, make_async_client

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.cancels import cancelled_at
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import AsyncDictSource
from tiered_cache.tier import MISSING


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


#: The calls walked, each on keys of its own step (``a`` and ``c`` in no tier, ``b`` in both).
CALLS: dict[str, Callable[[AsyncTieredCache, Any, str], Coroutine[Any, Any, Any]]] = {
    "get": lambda cache, f, n: cache.get(f"a{n}"),
    "get_many": lambda cache, f, n: cache.get_many([f"a{n}", f"b{n}", f"c{n}"]),
    "set": lambda cache, f, n: cache.set(f"b{n}", "new"),
    "set_many": lambda cache, f, n: cache.set_many({f"a{n}": "new", f"b{n}": "new"}),
    "invalidate": lambda cache, f, n: cache.invalidate(f"b{n}"),
    "decorated": lambda cache, f, n: f(f"a{n}"),
}

#: More steps than any call has: a walk that never ends is a failure, not a hang.
MOST_STEPS = 100


async def ended_as(call: Coroutine[Any, Any, Any], outcome: list[str]) -> None:
    """Await ``call``; ``outcome`` says whether it was cancelled, or ended otherwise."""
    try:
        await call
    except asyncio.CancelledError:
        outcome.append("cancelled")
        raise
    except BaseException:
        outcome.append("raised")
        raise
    outcome.append("returned")


@pytest.mark.anyio
@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_call_cancelled_at_any_await_leaves_nothing_behind(
    redis_server: RedisServer, namespace: str, call: str
) -> None:
    """A pool of one connection: a connection a cancelled call kept from the pool fails every
    Redis call after it ("No connection available"), counted as the tier's errors. Seen
    failing for ``get_many``: cancelled while its lease batch's pipeline checked that its
    Lua script was loaded (``SCRIPT EXISTS``, before the pipeline's own clean-up), the
    pipeline kept the pool's connection, and every later call failed.

    And the cancelled call raises ``CancelledError``. Seen failing for ``get``,
    ``get_many`` and the decorated function: ``['returned'] == ['cancelled']`` at their
    2nd, 1st and 2nd await, the call ending with its value."""
    source = AsyncDictSource()
    tier = AsyncRedisTier(
        make_async_client(redis_server.url, timeout=2.0, pool_size=1), namespace=namespace
    )
    cache = AsyncTieredCache(
        [MemoryTier(), tier],
        source,
        namespace=namespace,
        protection=Protection.never_stale(lease_ttl=30.0, lease_wait=30.0, lease_poll=0.01),
    )

    @cache.cached("f:{x}")
    async def f(x: str) -> Any:
        return await source.load(x)

    watch = redis.Redis.from_url(redis_server.url)
    tasks_before = asyncio.all_tasks()
    steps = 0
    for n in range(1, MOST_STEPS):
        keys = [f"a{n}", f"b{n}", f"c{n}"]
        for key in keys:
            source.inner.write(key, f"{key} old")
        assert await cache.get(f"b{n}") == f"b{n} old"  # in memory and in Redis
        outcome: list[str] = []
        if not await cancelled_at(ended_as(CALLS[call](cache, f, n), outcome), n):
            break
        steps += 1
        where = f"{call} cancelled at its await {n}"
        # Else the caller went on as though not cancelled: Python 3.11's asyncio.wait_for,
        # around redis-py's send, dropped the cancellation of a send that ended in its tick.
        assert outcome == ["cancelled"], where
        assert await cache.wait_background(10.0), where
        assert [name for name in watch.keys(f"*{namespace}*") if name.endswith(b":lease")] == []
        for key in keys:
            want = source.inner.load(key)
            # A flight left open would have this get join it for ever (the guard is 10 s).
            assert await asyncio.wait_for(cache.get(key), 10.0) == want, where
            entry = await tier.get(key)
            assert entry is MISSING or entry.value == want, where
        assert await asyncio.wait_for(f(f"a{n}"), 10.0) == source.inner.load(f"a{n}"), where
        assert cache.stats()["tiers"][1]["errors"] == 0, where
    else:
        pytest.fail(f"{call} still not done after {MOST_STEPS} awaits")
    assert steps >= 1  # the call was cancelled at least once (the writes: while shielded)
    await cache.aclose()
    watch.close()
    assert asyncio.all_tasks() - tasks_before == set()


@pytest.mark.anyio
async def test_a_batch_loader_raising_generator_exit_gives_its_leases_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """A loader that raises ``GeneratorExit`` itself (its task still runs it) is a failed
    load: the steps' clean-up runs, its leases go back. (Taken for a coroutine being closed,
    as a first version of the steps' driver did, its two leases stayed until ``lease_ttl``
    and the next ``get_many`` of its keys waited for them.)"""
    cache = AsyncTieredCache(
        [
            MemoryTier(),
            AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace),
        ],
        namespace=namespace,
        protection=Protection.never_stale(lease_ttl=30.0, lease_wait=30.0, lease_poll=0.01),
    )

    async def hostile(keys: list[str]) -> dict[str, str]:
        raise GeneratorExit

    with pytest.raises(GeneratorExit):
        await cache.get_many(["j", "k"], hostile)
    watch = redis.Redis.from_url(redis_server.url)
    try:
        assert [name for name in watch.keys(f"*{namespace}*") if name.endswith(b":lease")] == []
    finally:
        watch.close()
    await cache.aclose()
