"""The asyncio Redis tier's lease calls of one loop tick, gathered into batches
(tiered_cache_redis.async_leases): one connection for a burst, and each caller's own lease
semantics -- its own token, one lease per key, fills judged on their own token, a batch's
error for each caller, a value the codec cannot hold failing alone, a cancelled first
caller that does not cancel the others."""

from __future__ import annotations

import asyncio

import pytest
import redis
from tiered_cache_redis import AsyncRedisTier, make_async_client

from tiered_cache.errors import CodecError, TierUnavailable
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import FaultProxy, RedisServer
from tiered_cache.tier import MISSING, Entry

#: What a caller sees of a Redis that is gone (the chain counts either as the tier failing).
_REDIS_FAILING = (redis.RedisError, TierUnavailable)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _connections(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


@pytest.mark.anyio
async def test_a_burst_of_lease_calls_uses_one_connection(
    redis_server: RedisServer, namespace: str
) -> None:
    """200 acquisitions (then 200 fills) in one tick leave as one batch: one connection,
    not one per call queued for the pool while the loop is busy."""
    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    stats = redis.Redis.from_url(redis_server.url)
    before = _connections(stats)
    looks = await asyncio.gather(*(tier.acquire_lease(f"k{i}", 5.0) for i in range(200)))
    filled = await asyncio.gather(
        *(
            tier.fill_with_lease(f"k{i}", Entry(i, 0.0), token or "")
            for i, (token, _) in enumerate(looks)
        )
    )
    assert _connections(stats) - before == 1
    stats.close()
    assert all(token is not None for token, _ in looks)
    assert len({token for token, _ in looks}) == 200  # each caller its own token
    assert all(entry is MISSING for _, entry in looks)
    assert filled == [True] * 200
    got = await tier.get_many([f"k{i}" for i in range(200)])
    assert {key: entry.value for key, entry in got.items()} == {f"k{i}": i for i in range(200)}
    await tier.clear()
    await tier.aclose()


@pytest.mark.anyio
async def test_two_callers_of_a_key_in_one_tick_never_both_get_its_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    await tier.set("held", Entry("old", 0.0))
    looks = await asyncio.gather(
        tier.acquire_lease("a", 5.0),
        tier.acquire_lease("a", 5.0),
        tier.acquire_lease("held", 5.0),
        tier.acquire_lease("b", 1.0),  # another TTL: its own batch
        tier.acquire_lease("held", 5.0),
        tier.acquire_lease("a", 5.0),
    )
    tokens = [token for token, _ in looks]
    assert [token is not None for token in tokens] == [True, False, True, True, False, False]
    entries = [entry if entry is MISSING else entry.value for _, entry in looks]
    assert entries == [MISSING, MISSING, "old", MISSING, "old", MISSING]
    await tier.clear()
    await tier.aclose()


@pytest.mark.anyio
async def test_fills_of_one_tick_land_only_under_their_own_token(
    redis_server: RedisServer, namespace: str
) -> None:
    """Fills gathered in one batch, two of them for the same key: each is judged on its own
    token, as it would be alone."""
    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    (a, _), (b, _) = await asyncio.gather(
        tier.acquire_lease("a", 5.0), tier.acquire_lease("b", 5.0)
    )
    stolen = await tier.steal_lease("b", 5.0)  # b's first lease no longer holds
    assert a is not None and b is not None
    filled = await asyncio.gather(
        tier.fill_with_lease("a", Entry("a by its holder", 0.0), a),
        tier.fill_with_lease("b", Entry("b by a lost lease", 0.0), b),
        tier.fill_with_lease("b", Entry("b by its holder", 0.0), stolen),
        tier.fill_with_lease("a", Entry("a again, lease gone", 0.0), a),
    )
    assert filled == [True, False, True, False]
    got = await tier.get_many(["a", "b"])
    assert {key: entry.value for key, entry in got.items()} == {
        "a": "a by its holder",
        "b": "b by its holder",
    }
    await tier.clear()
    await tier.aclose()


@pytest.mark.anyio
async def test_a_value_the_codec_cannot_hold_fails_its_own_fill_only(
    redis_server: RedisServer, namespace: str
) -> None:
    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    (a, _), (b, _) = await asyncio.gather(
        tier.acquire_lease("a", 5.0), tier.acquire_lease("b", 5.0)
    )
    assert a is not None and b is not None
    filled = await asyncio.gather(
        tier.fill_with_lease("a", Entry(object(), 0.0), a),
        tier.fill_with_lease("b", Entry("B", 0.0), b),
        return_exceptions=True,
    )
    assert isinstance(filled[0], CodecError)
    assert filled[1] is True
    await tier.clear()
    await tier.aclose()


@pytest.mark.anyio
async def test_a_failed_lease_batch_is_a_failure_for_each_of_its_callers(
    redis_server: RedisServer, namespace: str
) -> None:
    """Against a Redis that is gone every gathered caller fails, so the breaker opens as soon
    as it did with one call each."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        tier = AsyncRedisTier(
            make_async_client(proxy.url("redis"), timeout=0.2), namespace=namespace
        )
        proxy.cut()
        looks = await asyncio.gather(
            *(tier.acquire_lease(f"k{i}", 5.0) for i in range(5)), return_exceptions=True
        )
        assert [isinstance(look, _REDIS_FAILING) for look in looks] == [True] * 5
        filled = await asyncio.gather(
            *(tier.fill_with_lease(f"k{i}", Entry(i, 0.0), "t") for i in range(5)),
            return_exceptions=True,
        )
        assert [isinstance(fill, _REDIS_FAILING) for fill in filled] == [True] * 5
        await tier.aclose()


@pytest.mark.anyio
async def test_the_lease_calls_gathered_by_a_cancelled_caller_are_still_answered(
    redis_server: RedisServer, namespace: str
) -> None:
    tier = AsyncRedisTier(make_async_client(redis_server.url, timeout=2.0), namespace=namespace)
    first = asyncio.create_task(tier.acquire_lease("a", 5.0))
    others = [asyncio.create_task(tier.acquire_lease(key, 5.0)) for key in ("b", "c")]
    await asyncio.sleep(0)  # the three have started: the first leads, the others wait on it
    first.cancel()
    async with asyncio.timeout(10):  # a guard against hanging, not a measure
        looks = await asyncio.gather(*others)
    assert [token is not None for token, _ in looks] == [True, True]
    assert first.cancelled()
    assert (await tier.acquire_lease("a", 5.0))[0] is not None  # the cancelled one took none
    await tier.clear()
    await tier.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("cancelled", ["a", "b"], ids=["the tick's first caller", "a gathered one"])
async def test_a_caller_cancelled_while_its_lease_is_taken_leaves_no_lease(
    redis_server: RedisServer, namespace: str, cancelled: str
) -> None:
    """Two callers of one tick take leases in one batch (``a`` sends it, ``b``'s call is
    gathered into it); one is cancelled (its client went away) once Redis took both leases,
    before the reply came. A gathered caller's token came back after it stopped waiting and
    was dropped: its lease held until ``lease_ttl``, every process reading ``b`` waited
    ``lease_wait`` for nobody (seen failing: ``[b'{...:b}:lease']`` left). The replies are
    held back by the fault proxy until the cancellation landed."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        tier = AsyncRedisTier(make_async_client(proxy.url(), timeout=30.0), namespace=namespace)
        assert (await tier.acquire_lease("warm", 5.0))[0] is not None  # connected, scripts loaded
        watch = redis.Redis.from_url(redis_server.url)
        proxy.trickle(1, 0.2)  # the batch's reply comes a byte at a time: in seconds
        calls = {key: asyncio.ensure_future(tier.acquire_lease(key, 30.0)) for key in "ab"}
        await async_until(
            lambda: len(watch.keys(f"*{namespace}:[ab]}}:lease")) == 2, "both leases taken"
        )
        calls[cancelled].cancel()
        proxy.restore()
        kept = "b" if cancelled == "a" else "a"
        token, _ = await calls[kept]
        with pytest.raises(asyncio.CancelledError):
            await calls[cancelled]
        await async_until(  # its give-back: a task
            lambda: not watch.keys(f"*{namespace}:{cancelled}}}:lease"),
            "the cancelled call's lease given back",
        )
        assert watch.get(f"{{{namespace}:{kept}}}:lease") == (token or "").encode()
        # Closing, the tier gives back what its callers still hold: they can fill no more.
        await tier.aclose()
        assert watch.keys(f"*{namespace}:[ab]}}:lease") == []
        watch.close()
