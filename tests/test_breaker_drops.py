"""An in-process tier behind an open circuit breaker still drops what an invalidation drops.

Memory's breaker is off by default (``breaker.enabled``), but a user may turn it on. Until
2026-12-07 the breaker refused the in-process drops as it refuses a call to a failing Redis:
an invalidation's drop (a local ``invalidate*``/``clear``, a write heard on the bus, the
process's own write) and the owed deletes routed through the walk of a delete were counted
and logged, but neither made nor owed. While the circuit stayed open memory was skipped (its
reads refused), and once it closed the copy the invalidation was for was served again.
An in-process drop does no I/O: the breaker has nothing to protect a caller from there.

Two chains of one memory tier each (``a`` and ``b``, two processes), one source, one bus;
``b``'s memory is behind a breaker forced open. Both faces.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import MISSING, AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.breaker import CircuitBreaker, CircuitBreakerTier
from tiered_cache.bus import LocalBus
from tiered_cache.errors import TierUnavailable
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import AsyncDictSource

COOL_DOWN = 60.0
STRICT = Protection.never_stale(lease="off")


def force_open(breaker: CircuitBreaker) -> None:
    """Open ``breaker`` by failures of its own (memory itself stays well)."""

    def fail() -> None:
        raise RuntimeError("the tier failed")

    for _ in range(breaker.failure_threshold):
        with contextlib.suppress(TierUnavailable):
            breaker.call(fail)
    assert breaker.state == "open"


class Face:
    """Two chains of one face over one source and one bus, driven by plain calls."""

    def __init__(self, clock: FakeClock, face: str, bus: bool = True) -> None:
        self.clock = clock
        asource = AsyncDictSource({"k": "old", "p:k": "old"})
        source = asource.inner  # the threaded chains'
        #: The source's own items: a test's change of them is a write that bypassed the cache.
        self.items = source.items
        self.memory = MemoryTier(name="l1", clock=clock)
        self.l1 = CircuitBreakerTier(
            self.memory, failure_threshold=1, cool_down=COOL_DOWN, clock=clock
        )
        self._loop = asyncio.new_event_loop() if face == "asyncio" else None
        shared = LocalBus() if bus else None
        if self._loop is None:
            self.a: Any = TieredCache(
                [MemoryTier(name="l1", clock=clock)], source, clock=clock, bus=shared
            )
            self.b: Any = TieredCache([self.l1], source, clock=clock, protection=STRICT, bus=shared)
        else:
            self.a = AsyncTieredCache(
                [MemoryTier(name="l1", clock=clock)], asource, clock=clock, bus=shared
            )
            self.b = AsyncTieredCache(
                [self.l1], asource, clock=clock, protection=STRICT, bus=shared
            )

    def __call__(self, chain: Any, method: str, *arguments: Any) -> Any:
        result = getattr(chain, method)(*arguments)
        if self._loop is None:
            return result
        return self._loop.run_until_complete(result)

    def close(self) -> None:
        if self._loop is None:
            self.a.close()
            self.b.close()
            return
        self._loop.run_until_complete(self.a.aclose())
        self._loop.run_until_complete(self.b.aclose())
        self._loop.close()


FACES = ["threaded", "asyncio"]

#: Each makes ``k`` (or ``p:k``) "new" in the source and invalidates it in ``b``'s memory.
INVALIDATIONS: dict[str, Callable[[Face], object]] = {
    "a write heard on the bus": lambda f: f(f.a, "set", "k", "new"),
    "an invalidation heard on the bus": lambda f: (
        f.items.update(k="new"),
        f(f.a, "invalidate", "k"),
    ),
    "the process's own write": lambda f: f(f.b, "set", "k", "new"),
    "a local invalidate": lambda f: (f.items.update(k="new"), f(f.b, "invalidate", "k")),
    "a local invalidate_prefix": lambda f: (
        f.items.update({"p:k": "new"}),
        f(f.b, "invalidate_prefix", "p:"),
    ),
    "a local clear": lambda f: (f.items.update(k="new"), f(f.b, "clear")),
}


def key_of(how: str) -> str:
    return "p:k" if "prefix" in how else "k"


@pytest.mark.parametrize("how", list(INVALIDATIONS))
@pytest.mark.parametrize("face", FACES)
def test_an_invalidation_while_memorys_breaker_is_open_leaves_no_old_copy(
    clock: FakeClock, face: str, how: str
) -> None:
    """The old value is never read: not while the circuit is open (memory is skipped), and
    not once it closed (the drop was made, not refused)."""
    f = Face(clock, face)
    key = key_of(how)
    try:
        assert f(f.b, "get", key) == "old"  # in b's memory
        force_open(f.l1.breaker)
        INVALIDATIONS[how](f)
        assert f(f.b, "get", key) == "new"  # open: memory skipped
        clock.advance(COOL_DOWN + 1)
        assert f(f.b, "get", key) == "new"  # the probe reads memory: no old copy there
        assert f.l1.breaker.state == "closed"
        assert f(f.b, "get", key) == "new"
    finally:
        f.close()


@pytest.mark.parametrize("face", FACES)
def test_a_write_of_a_lone_memory_tier_whose_breaker_is_open_leaves_no_old_copy(
    clock: FakeClock, face: str
) -> None:
    """A chain of one memory tier and no bus (the threaded chain's ``set`` is then its
    plain-call form, the drop and the fill one call, ``TierBase.replace``): the write's
    drop of the old copy is made even though its fill is refused."""
    f = Face(clock, face, bus=False)
    try:
        assert f(f.b, "get", "k") == "old"
        force_open(f.l1.breaker)
        f(f.b, "set", "k", "new")
        assert f(f.b, "get", "k") == "new"  # open: memory skipped
        clock.advance(COOL_DOWN + 1)
        assert f(f.b, "get", "k") == "new"  # the probe reads memory: no old copy there
        assert f.memory.peek("k") is not MISSING  # the probe closed the circuit: filled
    finally:
        f.close()


@pytest.mark.parametrize("face", FACES)
def test_an_in_process_tiers_owed_delete_is_made_while_its_breaker_is_open(
    clock: FakeClock, face: str
) -> None:
    """What a stopped walk of deletes leaves an in-process tier owing
    (:func:`tiered_cache.deletes.deleting`) is made at once: not refused by its breaker."""
    f = Face(clock, face)
    try:
        assert f(f.b, "get", "k") == "old"
        force_open(f.l1.breaker)
        f.items["k"] = "new"  # a write that bypassed the cache
        (accessor,) = f.b._tiers
        accessor.owe(["k"])
        assert f.b.stats()["tiers"][0]["errors"] == 0
        clock.advance(COOL_DOWN + 1)
        assert f(f.b, "get", "k") == "new"
    finally:
        f.close()
