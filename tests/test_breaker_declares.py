"""The sync circuit-breaker wrapper, used on its own, offers what the wrapped tier declares.

``CircuitBreakerTier`` was not a ``TierBase``: a chain takes it apart (the tier, and the
breaker its accessor consults), but code holding the wrapper itself -- ``guard(tier)``, a
tier of ``cache.tiers``, anything that resolves capabilities with
``declared_capabilities`` -- got the defaults instead of the tier's own: an in-process tier
looked shared (``local`` False), a Redis tier kept no ``utf8_keys``, and ``check_value`` /
``prepare_value`` were missing (AttributeError), so a write through the wrapper was never
checked. Capabilities are declared once and a wrapper must not hide one; the async wrapper
(``AsyncCircuitBreakerTier``) already composed this way, and the sync one now does the same.

Seen failing first (on main, 00141af)::

    assert declared.local is True
    AssertionError: assert False is True
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import pytest

from tiered_cache import MemoryTier
from tiered_cache.breaker import guard
from tiered_cache.errors import CodecError, TierUnavailable
from tiered_cache.hit import HitCount
from tiered_cache.testing import FakeClock
from tiered_cache.tier import MISSING, Entry, MissingType, TierBase, declared_capabilities


def test_a_guarded_memory_tier_declares_what_memory_declares(clock: FakeClock) -> None:
    memory = MemoryTier(name="l1", clock=clock, copy_on_read=True)
    guarded = guard(memory, clock=clock)
    declared = declared_capabilities(guarded)
    assert declared.local is True
    assert declared.leases is False
    assert declared.utf8_keys is False
    value = {"a": [1]}
    prepared = declared.prepare_value(value)
    assert type(prepared) is type(memory.prepare_value(value))  # memory's own form
    assert prepared.value == value and prepared.value is not value  # its deep copy
    with pytest.raises(CodecError):
        declared.check_value(threading.Lock())  # memory cannot copy it
    entry = Entry("v", clock(), clock() + 60, clock() + 60)
    declared.replace("k", entry)
    assert declared.peek("k") == entry
    assert declared.get_at("k", clock()) == entry
    declared.delete_prefix("k")
    assert memory.get("k") is MISSING
    # Every read goes through the breaker: no one-call reader that would pass it.
    assert declared.hit_reader(clock, 1.0, HitCount()) is None


class Failing(TierBase):
    """A tier whose every call fails (to open the breaker)."""

    local = True
    utf8_keys = True

    def __init__(self) -> None:
        self.name = "failing"

    def get(self, key: str) -> Entry | MissingType:
        raise OSError("down")

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        raise OSError("down")

    def set(self, key: str, entry: Entry) -> None:
        raise OSError("down")

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        raise OSError("down")

    def delete(self, key: str) -> None:
        raise OSError("down")

    def delete_many(self, keys: Sequence[str]) -> None:
        raise OSError("down")

    def clear(self) -> None:
        raise OSError("down")

    def close(self) -> None:
        pass


def test_the_declared_verbs_of_a_guarded_tier_go_through_its_breaker(clock: FakeClock) -> None:
    guarded = guard(Failing(), clock=clock)
    assert guarded.local is True and guarded.utf8_keys is True
    for _ in range(guarded.failure_threshold):
        with pytest.raises(TierUnavailable):
            guarded.peek("k")
    assert guarded.state == "open"
    with pytest.raises(TierUnavailable):
        guarded.get_at("k", clock())
