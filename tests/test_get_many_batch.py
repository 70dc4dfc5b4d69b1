"""``get_many``'s batch-wide shortcuts keep the per-key rules: a batch's keys are checked all at
once (``tiered_cache.keys.check_keys``), yet a key that is not a ``str`` is refused wherever it
sits; a batch every key of which was found is answered in one pass, yet a tier that answers a
key not asked for (and so seems to have found them all) leaves no asked key unserved."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.testing import FakeClock
from tiered_cache.tier import Entry


def memory_chain(clock: FakeClock) -> TieredCache:
    return TieredCache([MemoryTier(name="l1", max_entries=100, ttl=60, clock=clock)], clock=clock)


@pytest.mark.parametrize("key", [1, b"c", None, ("c",)])
@pytest.mark.parametrize("read", ["get_many", "lookup_many"])
def test_a_key_that_is_not_a_str_anywhere_in_a_batch_is_refused(
    key: Any, read: str, clock: FakeClock
) -> None:
    cache = memory_chain(clock)
    cache.set("a", 1)
    loaded: list[list[str]] = []

    def loader(keys: list[str]) -> dict[str, object]:
        loaded.append(keys)
        return dict.fromkeys(keys, "x")

    with pytest.raises(TypeError, match="cache keys are str"):
        if read == "get_many":
            cache.get_many(["a", "b", key], loader)
        else:
            cache.lookup_many(["a", "b", key])
    assert loaded == []
    assert cache.stats()["loads"] == 0


def test_a_batch_of_keys_beyond_ascii_is_served(clock: FakeClock) -> None:
    cache = memory_chain(clock)
    cache.set("café", 1)
    assert cache.get_many(["café", "naïve"], lambda keys: dict.fromkeys(keys, 2)) == {
        "café": 1,
        "naïve": 2,
    }


class Stray(MemoryTier):
    """A memory tier whose ``get_many`` answers, besides the keys it holds, one key it was not
    asked for: as many entries as keys asked, yet not all of them."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found = super().get_many(keys)
        found["never-asked"] = Entry("stray", 0.0)
        return found


def test_a_tier_answering_a_key_not_asked_for_leaves_no_asked_key_unserved(
    clock: FakeClock,
) -> None:
    cache = TieredCache([Stray(name="l1", max_entries=100, ttl=60, clock=clock)], clock=clock)
    cache.set("a", "held")
    loaded: list[list[str]] = []

    def loader(keys: list[str]) -> dict[str, object]:
        loaded.append(keys)
        return dict.fromkeys(keys, "loaded")

    assert cache.get_many(["a", "b"], loader) == {"a": "held", "b": "loaded"}
    assert loaded == [["b"]]


class WrittenMeanwhile(MemoryTier):
    """A memory tier into which a write of the first key asked lands between the batch's mark
    and its read (another thread's ``set``, made here at the read)."""

    cache: TieredCache

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        self.cache.set(keys[0], "new")
        return super().get_many(keys)


def test_a_batch_served_by_the_first_tier_fills_nothing_and_refuses_nothing(
    clock: FakeClock,
) -> None:
    """As a ``get`` served by the first tier: nothing to copy, so no fill to refuse, even when
    a write of the key came since the batch's mark."""
    tier = WrittenMeanwhile(name="l1", max_entries=100, ttl=60, clock=clock)
    cache = TieredCache([tier], clock=clock)
    tier.cache = cache
    cache.set("b", "old")
    assert cache.get_many(["a", "b"], lambda keys: dict.fromkeys(keys, "loaded")) == {
        "a": "new",
        "b": "old",
    }
    assert cache.stats()["fills_refused"] == 0
    assert cache.get("a") == "new"
