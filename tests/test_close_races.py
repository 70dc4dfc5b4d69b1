"""A close racing what was begun before it: the bus telling "reconnected", and fills in flight.

A closed chain stays closed: its L1 lookup off (nothing reads its memory tier any more) and
that tier empty. Two things begun before the close could undo it after the close was done:

- the bus's listener telling the chain it is subscribed again: it decided on the open chain
  that the L1 lookup may read memory, and turned it on after the close had turned it off;
- a call in flight (a caller's load, a batch, a write's source call: not waited for, a hung
  source would hang the shutdown) whose fill reached memory after the close had emptied it.

Each is held at the instant that loses the race (a trace function on the listener's thread,
a loader or a source held on a gate), then let go once the close has returned.
"""

from __future__ import annotations

import asyncio
import dis
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import CodeType, FrameType
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, ChainClosedError, MemoryTier, TieredCache
from tiered_cache.memory import LruPolicy
from tiered_cache.paths import ChainPaths
from tiered_cache.testing.buses import CuttableBus
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.gates import Held
from tiered_cache.testing.sources import AsyncDictSource, DictSource

#: Joins of the tests' own threads: a guard against a hang, never a measure.
GUARD = 30.0

DECIDE = ChainPaths.set_bus_connected.__code__


def held_as_decided(decided: threading.Event, go: threading.Event) -> Callable[..., Any]:
    """A trace function holding the thread that sets it as ``ChainPaths.set_bus_connected``
    returns (the chain's paths have said whether the L1 lookup may read memory, and the chain
    has not switched it yet) until ``go``."""

    def returning(frame: FrameType, event: str, arg: object) -> Any:
        if event == "return":
            decided.set()
            assert go.wait(GUARD), "never let go"
        return returning

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return returning if event == "call" and frame.f_code is DECIDE else None

    return calls


def restore_held(
    bus: CuttableBus, decided: threading.Event, go: threading.Event
) -> threading.Thread:
    """The bus's listener, on a thread of its own, telling the chain it is subscribed again,
    held once the chain's paths have decided."""

    def restore() -> None:
        sys.settrace(held_as_decided(decided, go))
        try:
            bus.restore()
        finally:
            sys.settrace(None)

    listener = threading.Thread(target=restore, name="test-bus-listener", daemon=True)
    listener.start()
    assert decided.wait(GUARD), "the reconnection never reached the chain's paths"
    return listener


def close_then_let_go(cache: TieredCache, go: threading.Event, held: threading.Thread) -> None:
    """Close ``cache`` while ``held`` waits for ``go``, then let it go; it must end."""
    try:
        cache.close()
    finally:
        go.set()
        held.join(GUARD)
    assert not held.is_alive()


def memory_reads(cache: TieredCache | AsyncTieredCache) -> int:
    tier = cache.stats()["tiers"][0]
    return int(tier["hits"]) + int(tier["misses"])


def a_chain_with_its_bus_down() -> tuple[FakeClock, MemoryTier, CuttableBus, TieredCache]:
    """A memory-only chain on a fake clock that has read ``a`` (``'old'``), then lost its bus
    (the L1 lookup off): where the reconnection-against-close tests begin."""
    clock = FakeClock(1000.0)
    memory = MemoryTier(policy=LruPolicy(100), clock=clock)
    bus = CuttableBus()
    cache = TieredCache([memory], DictSource({"a": "old"}), ttl=10.0, clock=clock, bus=bus)
    assert cache.get("a") == "old"
    bus.cut()
    return clock, memory, bus, cache


def test_a_reconnection_told_as_the_chain_closes_leaves_its_l1_lookup_off() -> None:
    """The bus is down (the L1 lookup off); its listener tells the chain it is back and is
    held there, the paths having said memory may be read; the chain closes; let go, the
    listener switched the L1 lookup on again on the closed chain, whose reads then read its
    memory tier before they were refused. Seen failing: ``assert 2 == 1`` (reads of the
    closed chain's memory tier)."""
    _, memory, bus, cache = a_chain_with_its_bus_down()
    decided, go = threading.Event(), threading.Event()
    listener = restore_held(bus, decided, go)
    close_then_let_go(cache, go, listener)
    read = memory_reads(cache)
    with pytest.raises(ChainClosedError):
        cache.get("a")
    assert memory_reads(cache) == read
    assert (cache.closed, cache.stats()["bus"], len(memory)) == (True, "closed", 0)


def test_a_reconnection_told_as_an_async_chain_closes_leaves_its_l1_lookup_off() -> None:
    """The same on the asyncio chain (its bus's listener is a thread too). Seen failing:
    ``assert 2 == 1``."""
    clock = FakeClock(1000.0)
    memory = MemoryTier(policy=LruPolicy(100), clock=clock)
    bus = CuttableBus()
    source = AsyncDictSource({"a": "old"})
    cache = AsyncTieredCache([memory], source, ttl=10.0, clock=clock, bus=bus)

    async def main() -> None:
        assert await cache.get("a") == "old"
        bus.cut()
        decided, go = threading.Event(), threading.Event()
        listener = await asyncio.to_thread(restore_held, bus, decided, go)
        try:
            await cache.aclose()
        finally:
            go.set()
            await asyncio.to_thread(listener.join, GUARD)
        assert not listener.is_alive()
        read = memory_reads(cache)
        with pytest.raises(ChainClosedError):
            await cache.get("a")
        assert memory_reads(cache) == read

    asyncio.run(main())
    assert (cache.closed, len(memory)) == (True, 0)


class HeldSource(DictSource):
    """A source whose loads, batch loads and stores wait at ``held`` (one of them: the gate
    is one-shot)."""

    def __init__(self, held: Held) -> None:
        super().__init__({"a": "old", "b": "old"})
        self.held = held

    def load(self, key: str) -> Any:
        self.held.hold()
        return super().load(key)

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        self.held.hold()
        return super().load_many(keys)

    def store(self, key: str, value: Any) -> None:
        self.held.hold()
        super().store(key, value)


CALLS: Mapping[str, Callable[[TieredCache], object]] = {
    "get": lambda cache: cache.get("a"),
    "get_many": lambda cache: cache.get_many(["a", "b"]),
    "set": lambda cache: cache.set("a", "new"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("bus", [False, True], ids=["alone", "with-a-bus"])
def test_a_fill_in_flight_as_the_chain_closes_leaves_its_memory_empty(call: str, bus: bool) -> None:
    """A call is in its source (a load, a batch, a write's store) as the chain closes, which
    does not wait for it; once let go, its fill found the closed chain's memory tier emptied
    and filled it: the closed chain held the entries for good (tools/signal_close.py --how
    twice: 1 round of 20 left memory holding entries). Seen failing: ``assert 1 == 0``
    (``len(memory)``; 2 for ``get_many``)."""
    clock = FakeClock(1000.0)
    memory = MemoryTier(policy=LruPolicy(100), clock=clock)
    held = Held(timeout=GUARD)
    source = HeldSource(held)
    cache = TieredCache([memory], source, ttl=10.0, clock=clock, bus=CuttableBus() if bus else None)
    held.armed = True
    outcome: list[object] = []

    def in_flight() -> None:
        try:
            outcome.append(CALLS[call](cache))
        except Exception as exc:  # what it raised is the outcome
            outcome.append(exc)

    caller = threading.Thread(target=in_flight, name="test-caller", daemon=True)
    caller.start()
    assert held.inside.wait(GUARD), "the call never reached its source"
    close_then_let_go(cache, held.go, caller)
    assert len(outcome) == 1 and not isinstance(outcome[0], ChainClosedError), outcome
    assert len(memory) == 0
    assert cache.closed


class HeldAsyncSource(AsyncDictSource):
    """An asyncio source whose load sets :attr:`inside` as it waits at its gate."""

    inside: asyncio.Event | None = None

    async def load(self, key: str) -> Any:
        if self.inside is not None:
            self.inside.set()
        return await super().load(key)


def test_a_load_in_flight_as_an_async_chain_closes_leaves_its_memory_empty() -> None:
    """The same on the asyncio chain: a miss's load in flight (``aclose`` waits for writes in
    flight, not for loads) fills memory after the close emptied it. Seen failing:
    ``assert (True, 1) == (True, 0)``."""
    clock = FakeClock(1000.0)
    memory = MemoryTier(policy=LruPolicy(100), clock=clock)
    source = HeldAsyncSource({"a": "old"})
    cache = AsyncTieredCache([memory], source, ttl=10.0, clock=clock)

    async def main() -> None:
        source.gate, source.inside = asyncio.Event(), asyncio.Event()
        reading = asyncio.ensure_future(cache.get("a"))
        await asyncio.wait_for(source.inside.wait(), GUARD)
        await cache.aclose()
        source.gate.set()
        assert await reading == "old"

    asyncio.run(main())
    assert (cache.closed, len(memory)) == (True, 0)


def held_at_a_reader_store_outside_the_lock(
    lock: Any, stopped: threading.Event, go: threading.Event
) -> Callable[..., Any]:
    """A trace function holding the thread that sets it (until ``go``) at any store of a
    ``reader`` attribute (``cache.get``'s, a decorated function's) made while ``lock`` (the
    lock of the chain's L1 switch, which the close's switch takes) is free: the instant a
    close could switch the L1 lookup off in between the decision and the store."""
    stores: dict[CodeType, frozenset[int]] = {}

    def store_offsets(code: CodeType) -> frozenset[int]:
        if code not in stores:
            stores[code] = frozenset(
                i.offset
                for i in dis.get_instructions(code)
                if i.opname == "STORE_ATTR" and i.argval == "reader"
            )
        return stores[code]

    def opcodes(frame: FrameType, event: str, arg: object) -> Any:
        at_a_store = event == "opcode" and frame.f_lasti in store_offsets(frame.f_code)
        if at_a_store and not lock.locked() and not stopped.is_set():
            stopped.set()
            assert go.wait(GUARD), "never let go"
        return opcodes

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        if event != "call" or not store_offsets(frame.f_code):
            return None
        frame.f_trace_opcodes = True
        return opcodes

    return calls


def test_a_reconnection_told_as_the_chain_closes_leaves_cache_get_off_its_memory() -> None:
    """The bus's listener switches the L1 lookup on again (the bus is back) and hands
    ``cache.get`` its reader; the chain closes in between. The switch is decided under the
    close's lock, but ``cache.get``'s reader was stored after that lock was let go: the closed
    chain's ``get`` kept reading its memory tier, and served what a new chain built on that
    tier put there, where a closed chain raises ``ChainClosedError`` without touching a tier
    (docs/quickstart.md). Seen failing: ``Failed: DID NOT RAISE`` (it answered ``'new'``)."""
    clock, memory, bus, cache = a_chain_with_its_bus_down()
    stopped, go = threading.Event(), threading.Event()
    trace = held_at_a_reader_store_outside_the_lock(cache._hit_followers.lock, stopped, go)

    def restore() -> None:
        sys.settrace(trace)
        try:
            bus.restore()
        finally:
            sys.settrace(None)
            stopped.set()  # no store outside the lock: nothing to hold

    listener = threading.Thread(target=restore, name="test-bus-listener", daemon=True)
    listener.start()
    assert stopped.wait(GUARD), "the reconnection never reached the chain"
    close_then_let_go(cache, go, listener)
    after = TieredCache([memory], DictSource({"a": "new"}), ttl=10.0, clock=clock)
    assert after.get("a") == "new"
    with pytest.raises(ChainClosedError):
        cache.get("a")
    after.close()
