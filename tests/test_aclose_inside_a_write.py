"""The asyncio chain's ``aclose()`` awaited from inside one of its own writes: a source's
``store`` (write-through) or a tier's write that decides the service must stop (a fatal error
of its database, a hook that shuts down), awaiting the chain's close there.

The close waits for the writes in flight (:class:`~tiered_cache.write_tasks.WriteTasks`), the
one awaiting it among them: it waited for itself, and both hung for good. A close awaited in
a write does not wait for that write: it marks the chain closed (new calls refused) and
returns; the close goes on once the write has ended, which it then waits for as for any
other, and every part is closed. Run in a forked child: a hang is a report missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import pytest

from tiered_cache import AsyncTierBase, AsyncTieredCache, ChainClosedError, MemoryTier
from tiered_cache.testing.forked import in_a_child
from tiered_cache.testing.sources import AsyncDictSource
from tiered_cache.tier import MISSING, Entry, MissingType

#: Generous: a child that has not reported by then is stuck, not slow.
STUCK = 20.0


class ClosingSource(AsyncDictSource):
    """A source whose ``store`` of ``fatal`` awaits the chain's close (once given it)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: AsyncTieredCache | None = None
        self.closes = 0

    async def store(self, key: str, value: Any) -> None:
        await super().store(key, value)
        if key == "fatal" and self.cache is not None:
            await self.cache.aclose()

    async def aclose(self) -> None:
        self.closes += 1


class ClosingTier(AsyncTierBase):
    """An async shared tier whose write of ``fatal`` awaits the chain's close (once given it)."""

    name = "closing"

    def __init__(self) -> None:
        self.items: dict[str, Entry] = {}
        self.cache: AsyncTieredCache | None = None
        self.closes = 0
        self.waited: list[bool] = []

    async def get(self, key: str) -> Entry | MissingType:
        return self.items.get(key, MISSING)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return {key: self.items[key] for key in keys if key in self.items}

    async def set(self, key: str, entry: Entry) -> None:
        self.items[key] = entry
        if key == "fatal" and self.cache is not None:
            await self.cache.aclose()
        if key == "settle" and self.cache is not None:
            self.waited.append(await self.cache.wait_background())

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        for key, entry in entries.items():
            await self.set(key, entry)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.items.pop(key, None)

    async def delete(self, key: str) -> None:
        self.items.pop(key, None)

    async def clear(self) -> None:
        self.items.clear()

    async def aclose(self) -> None:
        self.closes += 1


async def ended(close: Awaitable[None]) -> bool:
    """Whether ``close`` ended within a quarter of :data:`STUCK` (else it is left: stuck)."""
    task = asyncio.ensure_future(close)
    done, _ = await asyncio.wait({task}, timeout=STUCK / 4)
    return task in done


async def closed_from_inside(where: str) -> list[Any]:
    source = ClosingSource()
    tier = ClosingTier()
    cache = AsyncTieredCache(
        [MemoryTier(max_entries=10), tier],
        source=source,
        namespace="inside",
        write_policy="around" if where == "source" else "through",
    )
    if where == "source":
        source.cache = cache
    else:
        tier.cache = cache
    await cache.set("before", 1)
    writer = asyncio.create_task(cache.set("fatal", 2))
    done, _ = await asyncio.wait({writer}, timeout=STUCK / 4)
    seen: list[Any] = [writer in done and repr(writer.exception() or "returned")]
    try:
        await cache.get("after")
    except ChainClosedError:
        seen.append("refused")
    # The close went on once the write ended: every part closed, a later aclose() returns.
    seen += [await ended(cache.aclose()), tier.closes, source.closes]
    return seen


@pytest.mark.parametrize("where", ["source", "tier"])
def test_an_aclose_awaited_inside_a_write_of_the_chain_returns_and_closes_it(where: str) -> None:
    """Seen failing: ``[False, 'refused', False, 0, 0]`` (the write and every close stuck)."""
    seen = in_a_child(lambda: asyncio.run(closed_from_inside(where)), timeout=STUCK)
    assert seen == ["'returned'", "refused", True, 1, 1]


async def settled_from_inside() -> list[Any]:
    tier = ClosingTier()
    cache = AsyncTieredCache([MemoryTier(max_entries=10), tier], namespace="inside")
    tier.cache = cache
    writer = asyncio.create_task(cache.set("settle", 1))
    done, _ = await asyncio.wait({writer}, timeout=STUCK / 4)
    seen: list[Any] = [writer in done, tier.waited]
    tier.cache = None
    return [*seen, await ended(cache.aclose())]


def test_wait_background_awaited_inside_a_write_does_not_wait_for_that_write() -> None:
    """Seen failing: ``[False, [], False]`` (it waited for its own write; the close for it)."""
    seen = in_a_child(lambda: asyncio.run(settled_from_inside()), timeout=STUCK)
    assert seen == [True, [True], True]
