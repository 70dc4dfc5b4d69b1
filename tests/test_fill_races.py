"""Fills that race a write, through the threaded chain's one-key fill (Fence.fill_one): a
copy-up from the second tier into the first, and a batch load, each overtaken by a write
between its read and its fill. No copy read before the write may stay in memory."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from tiered_cache import MISSING, MemoryTier, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import DictSource

STRICT = Protection.never_stale()


class HeldRead(MemoryTier):
    """A memory tier whose reads, while ``hold`` is set, stop after reading until ``go``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def _held(self) -> None:
        if self.hold:
            self.entered.set()
            assert self.go.wait(10)

    def get(self, key: str) -> Any:
        entry = super().get(key)
        self._held()
        return entry

    def get_many(self, keys: Sequence[str]) -> Any:
        found = super().get_many(keys)
        self._held()
        return found


@pytest.mark.parametrize("bus", [False, True])
@pytest.mark.parametrize("write", ["invalidate", "set", "clear"])
@pytest.mark.parametrize("many", [False, True])
def test_a_copy_up_overtaken_by_a_write_is_not_kept(
    bus: bool, write: str, many: bool, clock: FakeClock
) -> None:
    l1 = MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock)
    l2 = HeldRead(name="l2", max_entries=100, ttl=600, clock=clock)
    source = DictSource({"k": "old"})
    cache = TieredCache(
        [l1, l2], source, clock=clock, protection=STRICT, bus=LocalBus() if bus else None
    )
    assert cache.get("k") == "old"
    l1.clear()  # "old" is in l2 only: the next read copies it up
    l2.hold = True
    reader = threading.Thread(target=lambda: cache.get_many(["k"]) if many else cache.get("k"))
    reader.start()
    assert l2.entered.wait(10)
    l2.hold = False
    source.items["k"] = "new"
    if write == "invalidate":
        cache.invalidate("k")
    elif write == "set":
        cache.set("k", "new")
    else:
        cache.clear()
    l2.go.set()
    reader.join(10)
    kept = l1.get("k")
    assert kept is MISSING or kept.value == "new"
    assert cache.get("k") == "new"
    assert cache.stats()["fills_refused"] >= 1


@pytest.mark.parametrize("bus", [False, True])
def test_a_batch_load_overtaken_for_one_key_keeps_the_others(bus: bool, clock: FakeClock) -> None:
    l1 = MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock)
    cache = TieredCache([l1], clock=clock, protection=STRICT, bus=LocalBus() if bus else None)
    started, go = threading.Event(), threading.Event()

    def loader(keys: Sequence[str]) -> dict[str, Any]:
        started.set()
        assert go.wait(10)
        return dict.fromkeys(keys, "old")

    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(cache.get_many(["a", "b"], loader)))
    thread.start()
    assert started.wait(10)
    cache.invalidate("a")
    go.set()
    thread.join(10)
    assert got == [{"a": "old", "b": "old"}]
    assert cache.get("a", lambda: "fresh") == "fresh"
    assert cache.get("b", lambda: "fresh") == "old"
    assert cache.stats()["fills_refused"] == 1
