"""The memory tier passes the conformance suite every tier must pass."""

from __future__ import annotations

import pytest

from tiered_cache import MemoryTier, Tier
from tiered_cache.testing import FakeClock
from tiered_cache.testing.conformance import TierConformance


class TestMemoryTier(TierConformance):
    @pytest.fixture
    def tier(self, clock: FakeClock) -> Tier:
        return MemoryTier(max_entries=1000, ttl=3600, clock=clock)


class TestCopyingMemoryTier(TierConformance):
    """With ``copy_on_read`` the tier declares ``check_value`` (what it cannot deep-copy)."""

    @pytest.fixture
    def tier(self, clock: FakeClock) -> Tier:
        return MemoryTier(max_entries=1000, ttl=3600, clock=clock, copy_on_read=True)
