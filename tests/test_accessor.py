"""How the chain holds a tier (tiered_cache/accessor.py), as a caller of the chain sees it."""

from __future__ import annotations

import logging

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.recording import RecordingTier
from tiered_cache.testing.sources import DictSource


def test_a_failing_tier_is_logged_at_most_once_per_ten_seconds_of_the_chains_clock(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    l2 = RecordingTier(MemoryTier(name="l2", clock=clock))
    cache = TieredCache(
        [l2], DictSource({"k": "v"}), clock=clock, protection=Protection.never_stale()
    )
    l2.failure = ConnectionError("redis went away")
    logged: list[int] = []
    with caplog.at_level(logging.WARNING, logger="tiered_cache.tier.l2"):
        for step in (0.0, 5.0, 5.0, 9.5, 0.5, 9.9):  # reads at 0, 5, 10, 19.5, 20, 29.9 s
            clock.advance(step)
            before = len(caplog.records)
            assert cache.get("k") == "v"  # three failures: the L1 look, the second look, the fill
            logged.append(len(caplog.records) - before)
    assert logged == [1, 0, 1, 0, 1, 0]
    assert "tier 'l2' failed (ConnectionError: redis went away)" in caplog.records[0].getMessage()
    assert cache.stats()["tiers"][0]["errors"] == 18
