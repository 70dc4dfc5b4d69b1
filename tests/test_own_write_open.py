"""A write-through ``set``'s invalidation stays open until its fill is done (marks taken
meanwhile are dated before it: docs/consistency.md, "A stale read of a process's own write").
What this file asks: that it is closed however the write ends -- interrupted at any line of
the threaded write, its fill raising a BaseException, its asyncio task cancelled while the
fill awaits a stalled tier -- and that the asyncio face, too, keeps a read of the process's
own write from copying the old value up after it.

Left open, the invalidation dates every later mark before it: the fill of every key
invalidated since is refused (that key is never cached again), and once the log has wrapped,
every fill is. So each test invalidates another key after the write and asks whether its
fill lands.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from types import CodeType, FrameType

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.async_tier import AsyncTierBase
from tiered_cache.paths import ChainPaths
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.interrupts import Interrupted, interrupt_once, interrupting
from tiered_cache.testing.sources import AsyncDictSource, DictSource
from tiered_cache.tier import MISSING, Entry, MissingType

STRICT = Protection.never_stale(lease="off")


class SharedTier(MemoryTier):
    """A memory tier standing for Redis (not in-process)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(name="shared", max_entries=1000, clock=clock)
        self.local = False


def a_later_fill_lands(cache: TieredCache, memory: MemoryTier) -> bool:
    """Whether the fill of a key invalidated after the write lands in memory: it does not
    while the write's invalidation is left open (its mark is dated before it)."""
    cache.invalidate("j")
    assert cache.get("j") == "J"
    return memory.get("j") is not MISSING


def lines_of(code: CodeType) -> list[int]:
    return sorted({line for _, _, line in code.co_lines() if line is not None})


def at_line(line: int) -> Callable[[FrameType], bool]:
    return lambda frame: frame.f_lineno == line


WRITES = {"set": ChainPaths.write_one.__code__, "set_many": ChainPaths.write_many.__code__}


@pytest.mark.parametrize("write", ["set", "set_many"])
def test_a_write_interrupted_at_any_line_leaves_no_invalidation_open(
    clock: FakeClock, write: str
) -> None:
    """Ctrl-C (a signal-raised BaseException) at each line of the threaded write in turn:
    raised between the write's invalidation and the ``try`` that closes it, the invalidation
    stayed open and every later fill of a key invalidated since was refused."""
    code = WRITES[write]
    interrupted = 0
    with interrupting() as interrupt:
        for line in lines_of(code):
            memory = MemoryTier(name="l1", clock=clock)
            cache = TieredCache(
                [memory, SharedTier(clock)], DictSource({"j": "J"}), clock=clock, ttl=60
            )
            tracer = interrupt_once(code, at_line(line), interrupt)
            sys.settrace(tracer)
            try:
                if write == "set":
                    cache.set("k", "new")
                else:
                    cache.set_many({"k": "new"})
            except Interrupted:
                interrupted += 1
            finally:
                sys.settrace(None)
            assert a_later_fill_lands(cache, memory), f"interrupted at line {line}"
            assert cache.stats()["fills_refused"] == 0, f"interrupted at line {line}"
            kept = memory.get("k")
            assert kept is MISSING or kept.value == "new"
    assert interrupted >= 5  # the walk reached the write's lines, not only its signature


class RaisingFill(SharedTier):
    """A shared tier whose writes raise :class:`Interrupted` (a BaseException) once armed."""

    armed = False

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        if self.armed:
            self.armed = False
            raise Interrupted
        super().set_many(entries)

    def set(self, key: str, entry: Entry) -> None:
        self.set_many({key: entry})


@pytest.mark.parametrize("write", ["set", "set_many"])
def test_a_fill_raising_a_base_exception_leaves_no_invalidation_open(
    clock: FakeClock, write: str
) -> None:
    memory = MemoryTier(name="l1", clock=clock)
    shared = RaisingFill(clock)
    cache = TieredCache([memory, shared], DictSource({"j": "J"}), clock=clock, ttl=60)
    shared.armed = True
    with pytest.raises(Interrupted):
        if write == "set":
            cache.set("k", "new")
        else:
            cache.set_many({"k": "new"})
    assert a_later_fill_lands(cache, memory)
    assert cache.stats()["fills_refused"] == 0
    assert memory.get("k") is MISSING and shared.get("k") is MISSING  # the write undone


class HeldAsyncShared(AsyncTierBase):
    """An async shared tier (standing for the asyncio Redis tier) whose next write, once
    ``armed``, signals ``at_fill`` and waits for ``fill_goes``; with ``hold_read``, a read
    that comes while that write waits, once answered here, signals ``read_answered`` and
    waits for ``read_goes`` before the chain gets its answer."""

    name = "shared"

    def __init__(self, clock: FakeClock) -> None:
        self.inner = SharedTier(clock)
        self.armed = False
        self.hold_read = False
        self.at_fill = asyncio.Event()
        self.fill_goes = asyncio.Event()
        self.read_answered = asyncio.Event()
        self.read_goes = asyncio.Event()

    async def _fill(self) -> None:
        if self.armed:
            self.armed = False
            self.at_fill.set()
            await self.fill_goes.wait()

    async def _read(self) -> None:
        if self.hold_read and self.at_fill.is_set():
            self.hold_read = False
            self.read_answered.set()
            await self.read_goes.wait()

    async def get(self, key: str) -> Entry | MissingType:
        entry = self.inner.get(key)
        await self._read()
        return entry

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found = self.inner.get_many(keys)
        await self._read()
        return found

    async def set(self, key: str, entry: Entry) -> None:
        await self._fill()
        self.inner.set(key, entry)

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        await self._fill()
        self.inner.set_many(entries)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self.inner.delete_many(keys)

    async def clear(self) -> None:
        self.inner.clear()

    async def aclose(self) -> None:
        pass


def async_chain(clock: FakeClock) -> tuple[AsyncTieredCache, MemoryTier, HeldAsyncShared]:
    memory = MemoryTier(name="l1", clock=clock)
    shared = HeldAsyncShared(clock)
    source = AsyncDictSource({"j": "J"})
    return (
        AsyncTieredCache([memory, shared], source, clock=clock, protection=STRICT),
        memory,
        shared,
    )


async def a_later_async_fill_lands(cache: AsyncTieredCache, memory: MemoryTier) -> bool:
    """:func:`a_later_fill_lands` on the asyncio chain."""
    await cache.invalidate("j")
    assert await cache.get("j") == "J"
    return memory.get("j") is not MISSING


def write(cache: AsyncTieredCache, how: str, value: str) -> asyncio.Task[None]:
    return asyncio.create_task(
        cache.set("k", value) if how == "set" else cache.set_many({"k": value})
    )


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["set", "set_many"])
@pytest.mark.parametrize("read", ["get", "get_many"])
async def test_an_async_read_during_the_processs_own_set_does_not_copy_the_old_value_up_after_it(
    clock: FakeClock, how: str, read: str
) -> None:
    """The asyncio face of the stale own write (seed 2033): a read that missed memory after
    the set dropped it, found the old value in the shared tier before the set's fill reached
    it, and copies it up after the set's own memory fill, is refused."""
    cache, memory, shared = async_chain(clock)
    await cache.set("k", "old")
    shared.armed = shared.hold_read = True
    writing = write(cache, how, "new")
    await shared.at_fill.wait()  # the set dropped memory; its fill waits at the shared tier
    reading = asyncio.create_task(cache.get("k") if read == "get" else cache.get_many(["k"]))
    await shared.read_answered.wait()  # the read found the old value there
    shared.fill_goes.set()
    await writing  # the set filled both tiers and returned
    shared.read_goes.set()
    got = await reading
    assert got in ("old", {"k": "old"})  # it overlapped the set: either value may be served
    kept = memory.get("k")
    assert kept is MISSING or kept.value == "new"
    assert await cache.get("k") == "new"
    assert cache.stats()["fills_refused"] == 1  # the read's copy
    assert await a_later_async_fill_lands(cache, memory)
    await cache.aclose()


@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_write_cancelled_while_its_fill_awaits_a_stalled_tier_closes_its_invalidation(
    clock: FakeClock, how: str
) -> None:
    """A write whose fill awaits a stalled shared tier when its loop ends (``asyncio.run``
    cancels the tasks left: the write's own, which its caller's cancellation does not reach):
    its invalidation is closed as the cancellation goes through the steps, not when the
    steps are collected; the chain, kept for the next loop, caches keys invalidated since."""
    cache, memory, shared = async_chain(clock)
    shared.armed = True

    async def stalled_write() -> None:
        request = write(cache, how, "new")
        await shared.at_fill.wait()  # never let go: the tier stalled
        request.cancel()  # the client went away: the write goes on (shielded)
        with pytest.raises(asyncio.CancelledError):
            await request
        assert len(cache._writes) == 1  # still at its fill, open meanwhile

    asyncio.run(stalled_write())  # ends the loop: its last tasks are cancelled

    async def after() -> None:
        assert not cache._writes
        assert await a_later_async_fill_lands(cache, memory)
        assert cache.stats()["fills_refused"] == 0
        kept = memory.get("k")
        assert kept is MISSING or kept.value == "new"
        await cache.aclose()

    asyncio.run(after())
