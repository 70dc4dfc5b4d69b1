"""An in-process tier whose delete raises serves no copy the delete was for.

The memory tier never fails a delete, but a ``local`` tier of a third party may (a tier
over a shared-memory segment, a mapped file). Until 2026-12-07 such a failure was counted and
logged, and that was all: neither retried nor owed, the invalidated copy stayed in the tier
and the next reads were served it (the L1 lookup reads an in-process tier 0 directly, in one
call), silently. And since in-process deletes are made past an open breaker
(tests/test_breaker_drops.py), they did not count toward opening the tier's breaker either:
however many failed, its circuit stayed closed.

Now the delete that failed is owed (:mod:`tiered_cache.owed`), as a shared tier's is: the
tier's next call (the L1 lookup's too) makes it first, and is refused while it cannot (a
miss: the read goes on to the next tier or the source); and it counts toward the breaker.

Seen failing first (on main, 00141af)::

    assert f(f.cache, "get", "k") == "new"
    AssertionError: assert 'old' == 'new'

    assert f.guarded.breaker.state == "open"
    AssertionError: assert 'closed' == 'open'

Both faces; a tier of the user's own (``TierBase``: read through ``get_at``) and a subclass of
the memory tier (its one-call hit reader).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.breaker import CircuitBreakerTier
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import AsyncDictSource
from tiered_cache.tier import MISSING, Entry, MissingType, TierBase

from .test_breaker_drops import Face as TwoChains

FACES = ["threaded", "asyncio"]
KINDS = ["own", "memory subclass"]


class Breakable:
    """A tier's delete failure, switched on and off by the test (the fault injector)."""

    broken = False

    def check(self) -> None:
        if self.broken:
            raise OSError("the segment is read-only")


class OwnLocal(TierBase, Breakable):
    """A third party's in-process tier: a dict, its deletes breakable."""

    local = True

    def __init__(self, clock: FakeClock) -> None:
        self.name = "own"
        self.items: dict[str, Entry] = {}
        self._clock = clock

    def get(self, key: str) -> Entry | MissingType:
        entry = self.items.get(key)
        if entry is None or self._clock() >= entry.hard_expiry:
            return MISSING
        return entry

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found = {key: self.get(key) for key in keys}
        return {key: entry for key, entry in found.items() if isinstance(entry, Entry)}

    def set(self, key: str, entry: Entry) -> None:
        self.items[key] = entry

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self.items.update(entries)

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> None:
        self.check()
        for key in keys:
            self.items.pop(key, None)

    def clear(self) -> None:
        self.check()
        self.items.clear()

    def close(self) -> None:
        pass


class BreakableMemory(MemoryTier, Breakable):
    """The memory tier, subclassed by a user whose deletes may fail."""

    def delete_many(self, keys: Sequence[str]) -> None:
        self.check()
        super().delete_many(keys)

    def clear(self) -> None:
        self.check()
        super().clear()


class Face(TwoChains):
    """One chain of one breakable in-process tier (behind a breaker) over a source, driven by
    plain calls (``f(f.cache, method, ...)``, as test_breaker_drops' two chains)."""

    def __init__(self, clock: FakeClock, face: str, kind: str, threshold: int = 100) -> None:
        asource = AsyncDictSource({"k": "old", "j": "old"})
        self.items = asource.inner.items
        self.tier: Breakable = (
            OwnLocal(clock) if kind == "own" else BreakableMemory(name="own", clock=clock)
        )
        self.guarded = CircuitBreakerTier(
            self.tier,  # type: ignore[arg-type]
            failure_threshold=threshold,
            cool_down=60.0,
            clock=clock,
        )
        self._loop = asyncio.new_event_loop() if face == "asyncio" else None
        if self._loop is None:
            self.cache: Any = TieredCache([self.guarded], asource.inner, clock=clock)
        else:
            self.cache = AsyncTieredCache([self.guarded], asource, clock=clock)

    def close(self) -> None:
        self.tier.broken = False
        self(self.cache, "close" if self._loop is None else "aclose")
        if self._loop is not None:
            self._loop.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("face", FACES)
def test_a_failed_in_process_delete_leaves_no_old_copy_served(
    clock: FakeClock, face: str, kind: str
) -> None:
    f = Face(clock, face, kind)
    try:
        assert f(f.cache, "get", "k") == "old"
        assert f(f.cache, "get", "k") == "old"  # a hit of the tier
        f.items["k"] = "new"
        f.tier.broken = True
        f(f.cache, "invalidate", "k")  # its delete fails: counted, logged, owed
        assert f(f.cache, "get", "k") == "new"  # not the old copy: the tier refused
        assert f.cache.stats()["deletes_owed"] == 1
        assert f(f.cache, "get_many", ["k"]) == {"k": "new"}
        f.tier.broken = False
        assert f(f.cache, "get", "k") == "new"  # the delete made first, then read
        assert f.cache.stats()["deletes_owed_payments"] == 1
        assert f(f.cache, "get", "k") == "new"
        assert f(f.cache, "lookup_many", ["k"])["k"].value == "new"  # filled again
    finally:
        f.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("face", FACES)
def test_failed_in_process_deletes_open_the_tiers_breaker(
    clock: FakeClock, face: str, kind: str
) -> None:
    f = Face(clock, face, kind, threshold=2)
    try:
        assert f(f.cache, "get_many", ["k", "j"]) == {"k": "old", "j": "old"}
        f.tier.broken = True
        f(f.cache, "invalidate", "k")
        f(f.cache, "invalidate", "j")
        assert f.guarded.breaker.state == "open"
        f.items.update(k="new", j="new")
        assert f(f.cache, "get_many", ["k", "j"]) == {"k": "new", "j": "new"}
    finally:
        f.close()
