"""A Hypothesis state machine drives a two-tier chain against a plain dict model.

Rules: get, get_many, set (write-through), invalidate, a write to the source that bypasses the
cache, clock advances, background refreshes running, and the second tier going down and
coming back. Invariants checked on
every read:

- bounded staleness: the value returned is one the source held at some moment within the
  last ``TTL + MAX_STALE`` seconds (fresh for TTL, then served stale while a refresh waits);
- exactness: after ``set`` or ``invalidate`` with every tier up, and with no bypassing write
  or outage since, a read returns exactly the source's current value;
- the source is read at most once per read of a key that missed every tier.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.chain_model import SourceModel
from tiered_cache.testing.recording import RecordingTier

TTL = 50.0
NEGATIVE_TTL = 5.0
MAX_STALE = 20.0
#: The oldest a served value may be: fresh for TTL, then served stale for up to MAX_STALE.
BOUND = TTL + MAX_STALE
KEYS = st.sampled_from([f"k{i}" for i in range(6)])
VALUES = st.integers(min_value=0, max_value=1000)


class ChainMachine(SourceModel):
    def __init__(self) -> None:
        super().__init__(FakeClock(start=1000.0), BOUND)
        self.l1 = RecordingTier(MemoryTier(name="l1", max_entries=3, ttl=10, clock=self.clock))
        self.l2 = RecordingTier(MemoryTier(name="l2", max_entries=100, ttl=100, clock=self.clock))
        self.cache = TieredCache(
            [self.l1, self.l2],
            self.source,
            ttl=TTL,
            negative_ttl=NEGATIVE_TTL,
            clock=self.clock,
            # Stale serving is on; background refreshes wait in a list until a rule runs them.
            protection=Protection(max_stale=MAX_STALE, early_refresh_beta=0, soft_timeout=None),
            background=self.pending.append,
        )

    @property
    def l2_down(self) -> bool:
        return self.l2.failure is not None

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        reads = self.source.reads
        self.check(key, self.cache.get(key))
        assert self.source.reads - reads <= 1

    @rule(keys=st.lists(KEYS, max_size=5))
    def get_many(self, keys: list[str]) -> None:
        reads = self.source.reads
        result = self.cache.get_many(keys)
        assert set(result) == set(keys)
        for key, value in result.items():
            self.check(key, value)
        assert self.source.reads - reads <= 1

    @rule(key=KEYS, value=VALUES)
    def set(self, key: str, value: int) -> None:
        self.cache.set(key, value)
        if not self.l2_down:
            self.exact.add(key)

    @rule(key=KEYS)
    def invalidate(self, key: str) -> None:
        self.cache.invalidate(key)
        if not self.l2_down:
            self.exact.add(key)

    @rule(key=KEYS, value=VALUES)
    def write_bypassing_the_cache(self, key: str, value: int) -> None:
        self.source.write(key, value)
        self.exact.discard(key)

    @rule(seconds=st.floats(min_value=0.0, max_value=60.0))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: not self.l2_down)
    @rule()
    def l2_goes_down(self) -> None:
        self.l2.failure = ConnectionError("l2 unreachable")
        # Invalidations and writes cannot reach l2 now: its copies may outlive them.
        self.exact.clear()

    @precondition(lambda self: self.l2_down)
    @rule()
    def l2_comes_back(self) -> None:
        self.l2.failure = None

    @invariant()
    def stats_add_up(self) -> None:
        stats = self.cache.stats()
        assert stats["loads"] == self.source.reads


TestChainModel = ChainMachine.TestCase
TestChainModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
