"""The Redis lease of an asyncio load left running (an untimed load begun again for a cancelled
caller, a timed load its caller stopped waiting for) goes back in every outcome, and
``aclose()`` waits for such loads ``protection.close_wait`` at most.

- A load whose source never answers and ignores its cancellation held ``aclose()`` for
  good: the service's shutdown hung.
- A load whose fill was stopped after the source answered (the end of ``asyncio.run``
  cancelling it on the wire to Redis) let go of its lease without giving it back: it held
  until ``lease_ttl``, and every reader of the key waited ``lease_wait`` for it.
- A caller cancelled by hand in the loop turn the service returned in had its load begun
  again in a task that the end of ``asyncio.run`` cancelled before its first step: it never
  ran, and the lease it took over stayed until ``lease_ttl``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
from tiered_cache_redis import AsyncRedisTier

from tiered_cache import AsyncTieredCache, MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing.logged import ours
from tiered_cache.testing.polling import async_until
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import Entry

from .leases_held import leases_in
from .test_redis_async import PATIENT, chain

#: A bound on waits that must end, so that a regression fails instead of hanging.
GUARD = 20.0


class Hangs:
    """A loader that never answers; counts its calls. ``stubborn`` (set by the test): it
    ignores its cancellation too (a source client that swallows it, or whose cleanup on
    cancellation waits on the dead server), until ``freed`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.stubborn = False
        self.freed = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        while True:
            try:
                await self.freed.wait()
                return "late"
            except asyncio.CancelledError:
                if not self.stubborn:
                    raise


class Answers:
    """A loader that answers at once; counts its calls. ``first_hangs``: but its first
    call, which never answers (until cancelled)."""

    def __init__(self, *, first_hangs: bool = False) -> None:
        self.calls = 0
        self.first_hangs = first_hangs

    async def __call__(self) -> str:
        self.calls += 1
        if self.first_hangs and self.calls == 1:
            await asyncio.Event().wait()
        return f"v{self.calls}"


class FillHeld(AsyncRedisTier):
    """An async Redis tier whose fills under a lease wait until ``let_fill`` is set (never,
    unless a test sets it): a fill stopped after the source answered."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(aioredis.Redis.from_url(url), namespace=namespace)
        self.filling = 0
        self.let_fill = asyncio.Event()

    async def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        self.filling += 1
        await self.let_fill.wait()
        return await super().fill_with_lease(key, entry, token)


async def cancelled_while_loading(cache: AsyncTieredCache, key: str, load: Any) -> None:
    """A caller misses ``key`` and is cancelled by hand while its own load runs: the load is
    begun again, left running."""
    request = asyncio.create_task(cache.get(key, load))
    await async_until(lambda: load.calls == 1, "the caller loads")
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await async_until(lambda: load.calls == 2, "its load begun again")


@pytest.mark.anyio
async def test_aclose_stops_waiting_for_a_left_load_that_ignores_its_cancellation(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    load = Hangs()
    cache = chain(redis_server.url, namespace, protection=PATIENT)
    await cancelled_while_loading(cache, "k", load)
    load.stubborn = True  # the load begun again, not the caller's own (cancelled with it)
    assert len(leases_in(redis_server, namespace)) == 1  # the left load's
    left = cache._loader._abandoned["k"][0]
    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        closing = asyncio.create_task(cache.aclose())
        await asyncio.wait({closing}, timeout=GUARD)
        done = closing.done()
    load.freed.set()  # the load ends now: nothing left running after the test
    await asyncio.wait({closing, left}, timeout=GUARD)
    assert done  # aclose returned while the load still ran
    assert leases_in(redis_server, namespace) == []
    assert cache.stats()["close_loads_left_running"] == 1
    warned = [r for r in ours(caplog.records) if r.levelno == logging.WARNING]
    assert [getattr(r, "event", None) for r in warned] == ["close_loads_left_running"]


@pytest.mark.parametrize("timed", [False, True], ids=["begun-again", "timed"])
def test_a_left_load_whose_fill_is_stopped_gives_its_lease_back(
    redis_server: RedisServer, namespace: str, timed: bool
) -> None:
    """The source answered; the end of ``asyncio.run`` cancels the load left running while
    its fill waits on Redis. Untimed (the caller's own load, cancelled with it before the
    source answered, begun again) or timed (``hard_timeout``: the load's own task, its
    caller cancelled while it fills)."""
    load = Answers(first_hangs=not timed)
    protection = (
        PATIENT
        if not timed
        else Protection.never_stale(
            lease="auto", lease_ttl=30.0, lease_wait=0.2, lease_poll=0.01, hard_timeout=60.0
        )
    )

    async def service() -> tuple[AsyncTieredCache, FillHeld]:
        redis_tier = FillHeld(redis_server.url, namespace)
        cache = AsyncTieredCache(
            [MemoryTier(max_entries=100, ttl=60), redis_tier],
            namespace=namespace,
            protection=protection,
        )
        request = asyncio.create_task(cache.get("k", load))
        await async_until(lambda: load.calls == 1, "the caller's load runs")
        if timed:
            await async_until(lambda: redis_tier.filling == 1, "its fill waits on Redis")
        request.cancel()  # the caller goes: its load (begun again, or its task) goes on
        await asyncio.gather(request, return_exceptions=True)
        await async_until(lambda: redis_tier.filling == 1, "the left load's fill waits")
        assert len(leases_in(redis_server, namespace)) == 1
        return cache, redis_tier  # the end of asyncio.run cancels the fill on its way

    cache, _ = asyncio.run(service())
    assert leases_in(redis_server, namespace) == []
    assert cache.stats()["abandoned_loads"] == 1


def test_a_caller_cancelled_by_hand_as_the_service_returns_holds_no_lease(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The request is cancelled in the service's last step: it meets its cancellation in
    the loop's next turn, as the loop stops, and its load is begun again in a task the end
    of ``asyncio.run`` cancels before its first step."""
    load = Hangs()
    kept: list[Any] = []

    async def service() -> AsyncTieredCache:
        cache = chain(redis_server.url, namespace, protection=PATIENT)
        request = asyncio.create_task(cache.get("k", load))
        kept.append(request)
        await async_until(lambda: load.calls == 1, "the request loads")
        assert len(leases_in(redis_server, namespace)) == 1
        request.cancel()  # by hand, and the service returns in the same turn
        return cache

    with caplog.at_level(logging.WARNING, logger="tiered_cache"):
        asyncio.run(service())
    assert kept[0].cancelled()
    assert leases_in(redis_server, namespace) == []
    assert not [r.getMessage() for r in caplog.records if "event loop was closed" in r.getMessage()]
