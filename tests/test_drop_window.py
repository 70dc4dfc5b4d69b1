"""An invalidation logs first and drops the in-process copies second, fastest tier first. A
read whose fence mark was taken between the two could still find the old value in a slower
in-process tier and copy it up into the faster one the drop had passed: judged by a mark later
than the invalidation's log entry, that copy was kept, and served after the invalidation
returned. Marks taken while an invalidation drops are now from before it."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import DictSource


class HeldDrop(MemoryTier):
    """A memory tier whose ``delete_many`` waits, once armed, until ``go``."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.armed = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def delete_many(self, keys: Sequence[str]) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.go.wait(10)
        super().delete_many(keys)


def test_a_read_during_the_drop_does_not_copy_the_old_value_up_for_good(clock: FakeClock) -> None:
    l1 = MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock)
    l2 = HeldDrop(name="l2", max_entries=100, ttl=600, clock=clock)
    source = DictSource({"k": "old"})
    cache = TieredCache([l1, l2], source, clock=clock, protection=Protection.never_stale())
    assert cache.get("k") == "old"
    l1.clear()  # "old" in l2 only
    source.items["k"] = "new"  # the write the invalidation announces
    l2.armed = True
    invalidation = threading.Thread(target=lambda: cache.invalidate("k"))
    invalidation.start()
    assert l2.entered.wait(10)  # logged, l1 dropped, l2 not yet
    cache.get("k")  # concurrent with the invalidation: either value is fine
    l2.go.set()
    invalidation.join(10)
    assert cache.get("k") == "new"  # after it returned: never the old value
