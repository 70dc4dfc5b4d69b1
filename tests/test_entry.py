"""Entry: an immutable record compared by value, that pickles, copies and replaces."""

from __future__ import annotations

import copy
import pickle

import pytest

from tiered_cache.clocks import ManualClock
from tiered_cache.memory import MemoryTier
from tiered_cache.tier import ENTRY_FIELDS, NEVER, Entry


def test_fields_positional_and_by_name_with_defaults() -> None:
    entry = Entry({"a": 1}, 10.0)

    assert entry.value == {"a": 1}
    assert entry.loaded_at == 10.0
    assert (entry.soft_expiry, entry.hard_expiry) == (NEVER, NEVER)
    assert (entry.load_duration, entry.version) == (0.0, 0)
    assert Entry(value=1, loaded_at=2.0, soft_expiry=3.0, hard_expiry=4.0, version=7) == Entry(
        1, 2.0, 3.0, 4.0, 0.0, 7
    )


def test_an_entry_cannot_be_changed() -> None:
    entry = Entry(1, 2.0)

    # AttributeError: compiled, the fields have no setter; pure, FrozenInstanceError (one).
    with pytest.raises(AttributeError):
        entry.value = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del entry.soft_expiry  # type: ignore[misc]
    with pytest.raises(AttributeError):
        entry.other = 1
    assert entry.value == 1


def test_equal_by_value_and_hashable() -> None:
    one, same, other = Entry(1, 2.0, 3.0), Entry(1, 2.0, 3.0), Entry(1, 2.0, 4.0)

    assert one == same
    assert one != other
    assert one != (1, 2.0, 3.0, NEVER, 0.0, 0)
    assert len({one, same, other}) == 2
    assert repr(one) == (
        "Entry(value=1, loaded_at=2.0, soft_expiry=3.0, hard_expiry=inf, load_duration=0.0, "
        "version=0)"
    )


def test_pickle_and_copies_rebuild_the_same_entry() -> None:
    entry = Entry([1, 2], 2.0, 3.0, 4.0, 0.5, 9)

    for clone in (pickle.loads(pickle.dumps(entry)), copy.copy(entry), copy.deepcopy(entry)):
        assert clone == entry
        assert type(clone) is Entry
    assert copy.deepcopy(entry).value is not entry.value


def test_replace_and_with_value_copy_the_other_fields() -> None:
    entry = Entry("v", 2.0, 3.0, 4.0, 0.5, 9)

    assert entry.replace(soft_expiry=3.5) == Entry("v", 2.0, 3.5, 4.0, 0.5, 9)
    assert entry.replace(hard_expiry=5.0) == Entry("v", 2.0, 3.0, 5.0, 0.5, 9)
    assert entry.with_value(None) == Entry(None, 2.0, 3.0, 4.0, 0.5, 9)
    assert entry == Entry("v", 2.0, 3.0, 4.0, 0.5, 9)


def test_an_entry_read_from_the_memory_tier_is_immutable_and_copies_as_a_plain_entry() -> None:
    # The tier hands out the record it keeps (a Slot is an Entry): its entry fields refuse
    # assignment like any entry's, compiled or pure, while the tier's own bookkeeping moves.
    clock = ManualClock(0.0)
    tier = MemoryTier(clock=clock)
    stored = Entry([1, 2], 0.0, 50.0, 60.0, 0.25, 3)
    tier.set("k", stored)
    tier.set("other", Entry("x", 0.0, 50.0, 60.0))
    read = tier.get("k")
    assert isinstance(read, Entry)

    assert read == stored
    for name in ENTRY_FIELDS:
        with pytest.raises(AttributeError):
            setattr(read, name, 0.0)
        with pytest.raises(AttributeError):
            delattr(read, name)
    assert tier.get("k") == stored
    for clone in (pickle.loads(pickle.dumps(read)), copy.copy(read), copy.deepcopy(read)):
        assert type(clone) is Entry
        assert clone == stored
    assert repr(read) == repr(stored)
    tier.get("other")  # the kept records keep moving (recency) after all that
    assert tier.get("k") == stored
