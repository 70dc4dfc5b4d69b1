"""An invalidation made while another caller pays what a shared tier owes is refused (owed).

A payment of owed deletes hung on a stalled Redis (its timer's call waiting the tier's
``timeout``) refuses every other call of the chain to that tier meanwhile: each fails at
once, and an invalidation's delete is owed, paid with the rest. Made all the same instead
(an intermediate version did it for every delete, so that the writes an asyncio sweep
stopped together could finish), each invalidation went to the stalled tier and waited its
``timeout`` there. Seen failing on that version: ``assert shared.calls == 2`` with 3 (the
invalidation's delete sent to the tier held by the payment). Only a write finishing after a
sweep stopped it makes its delete so (tests/test_redis_async_loop_end_writes.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.async_tier import AsyncTierBase
from tiered_cache.testing import FakeClock
from tiered_cache.testing.polling import until
from tiered_cache.tier import Entry, MissingType


class HeldShared(MemoryTier):
    """A memory tier standing for Redis (not in-process): its first delete fails, its
    second (the payment of the first) waits for ``goes``, as on a stalled Redis."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(name="shared", max_entries=100, clock=clock)
        self.local = False
        self.calls = 0
        self.paying = threading.Event()
        self.goes = threading.Event()

    def delete_many(self, keys: Sequence[str]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("redis timed out")
        if self.calls == 2:
            self.paying.set()
            assert self.goes.wait(10)  # a guard, not a measure
        super().delete_many(keys)


def test_an_invalidation_during_a_hung_payment_is_refused_and_owed(clock: FakeClock) -> None:
    shared = HeldShared(clock)
    cache = TieredCache([MemoryTier(clock=clock), shared], clock=clock)
    cache.invalidate("a")  # failed: owed, and the timer pays it at once (no breaker)
    until(shared.paying.is_set, "the timer's payment in the tier")
    cache.invalidate("b")
    assert shared.calls == 2  # refused: not sent to the tier the payment holds
    assert cache.stats()["deletes_owed"] == 2
    shared.goes.set()
    until(lambda: cache.stats()["deletes_owed_payments"] == 2, "b paid after a")
    assert shared.calls == 3
    cache.close()


class AsyncHeldShared(AsyncTierBase):
    """:class:`HeldShared` for the asyncio chain."""

    name = "shared"

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryTier(name="shared", max_entries=100, clock=clock)
        self.calls = 0
        self.paying = asyncio.Event()
        self.goes = asyncio.Event()

    async def get(self, key: str) -> Entry | MissingType:
        return self.inner.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return self.inner.get_many(keys)

    async def set(self, key: str, entry: Entry) -> None:
        self.inner.set(key, entry)

    async def set_many(self, entries: dict[str, Entry]) -> None:  # type: ignore[override]
        self.inner.set_many(entries)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("redis timed out")
        if self.calls == 2:
            self.paying.set()
            await asyncio.wait_for(self.goes.wait(), 10)  # a guard, not a measure
        self.inner.delete_many(keys)

    async def clear(self) -> None:
        self.inner.clear()


@pytest.mark.anyio
async def test_an_async_invalidation_during_a_hung_payment_is_refused_and_owed(
    clock: FakeClock,
) -> None:
    shared = AsyncHeldShared(clock)
    cache = AsyncTieredCache([MemoryTier(clock=clock), shared], clock=clock)
    await cache.invalidate("a")  # failed: owed, and the timer's task pays it at once
    await asyncio.wait_for(shared.paying.wait(), 10)
    await cache.invalidate("b")
    assert shared.calls == 2
    assert cache.stats()["deletes_owed"] == 2
    shared.goes.set()
    for _ in range(1000):  # a guard, not a measure
        if cache.stats()["deletes_owed_payments"] == 2:
            break
        await asyncio.sleep(0.01)
    assert shared.calls == 3
    await cache.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
