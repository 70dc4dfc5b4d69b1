"""A set on a chain of one in-process tier and no bus (``ChainPaths.set_alone``: plain calls,
the fence's ``write_alone``, the tier's drop and fill in one step) decides as the general set.

Two chains run the same reads, writes, invalidations and clock moves: one answers ``set``
through ``set_alone`` (what such a chain uses), the other through the steps
(``ChainPaths.set``, which a subclass defining its own ``set`` keeps). Their answers,
counters and the eviction policy's whole state must stay identical.
"""

from __future__ import annotations

import inspect
import pydoc
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache import MISSING, TieredCache
from tiered_cache.clocks import ManualClock
from tiered_cache.memory import MemoryTier
from tiered_cache.paths import ChainPaths
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.protection import Protection
from tiered_cache.testing.scripts import KEYS, chain_scripts
from tiered_cache.testing.sources import DictSource
from tiered_cache.tier import Entry
from tiered_cache.units import DurationLike

TTL = 30.0


class StepsSet(TieredCache):
    """A chain that defines its own ``set``: it keeps it, and writes through the steps."""

    def set(self, key: str, value: Any, *, ttl: DurationLike | None = None) -> None:
        super().set(key, value, ttl=ttl)


class Side:
    """One chain over a hot-key memory tier and a manual clock."""

    def __init__(self, chain_class: type[TieredCache], max_entries: int) -> None:
        self.clock = ManualClock(1_000_000.0)
        self.policy = TinyLfuPolicy(max_entries, clock=self.clock, top_k=5)
        self.tier = MemoryTier(policy=self.policy, clock=self.clock, ttl=100.0)
        self.versions: dict[str, int] = {}
        self.refreshes: list[Callable[[], None]] = []
        # No soft timeout, a seeded draw, refreshes queued: both sides run alike.
        self.cache = chain_class(
            [self.tier],
            clock=self.clock,
            ttl=TTL,
            rng=random.Random(7).random,
            background=self.refreshes.append,
            protection=Protection(soft_timeout=None),
        )

    def apply(self, step: tuple[str, Any]) -> Any:
        """Run one step; its answer (a read's value, a refresh's count of jobs)."""
        name, key = step
        return getattr(self, f"do_{name}")(key)

    def do_get(self, key: str) -> Any:
        return self.cache.get(key, lambda: f"{key}@{self.versions.get(key)}")

    def do_set(self, key: str) -> None:
        version = self.versions[key] = self.versions.get(key, 0) + 1
        self.cache.set(key, f"{key}@{version}")

    def do_set_short(self, key: str) -> None:
        self.cache.set(key, "short", ttl=1.0)

    def do_invalidate(self, key: str) -> None:
        self.cache.invalidate(key)

    def do_refresh(self, _: None) -> int:
        jobs = list(self.refreshes)
        self.refreshes.clear()
        for job in jobs:
            job()
        return len(jobs)

    def do_advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def state(self, keys: list[str]) -> Any:
        """Counters, the policy's view of every key, and what the tier holds."""
        policy, stats = self.policy, self.cache.stats()
        kept = {key: self.tier.peek(key) for key in keys}
        segments = {key: (policy.segment_of(key), policy.sketch.frequency(key)) for key in keys}
        return (
            stats["tiers"],
            stats["loads"],
            stats["fills_refused"],
            policy.evictions,
            segments,
            kept,
        )


steps = chain_scripts(
    ["get", "set", "set_short", "invalidate"], [0.5, 3.0, 40.0], min_size=40, max_size=250
)


@settings(max_examples=60, deadline=None)
@given(max_entries=st.sampled_from([2, 8, 100]), script=steps)
def test_a_set_alone_answers_counts_and_feeds_the_policy_as_the_steps(
    max_entries: int, script: list[tuple[str, Any]]
) -> None:
    sides = [Side(chain_class, max_entries) for chain_class in (TieredCache, StepsSet)]
    plain = sides[0].cache.set  # the plain calls: set_alone, under the public name
    assert plain.__self__ is sides[0].cache._paths  # type: ignore[attr-defined]
    assert plain.__func__.__code__ is ChainPaths.set_alone.__code__  # type: ignore[attr-defined]
    assert "set" not in vars(sides[1].cache)  # the steps
    for step in script:
        answers = [side.apply(step) for side in sides]
        assert answers[0] == answers[1], step
    states = [side.state(KEYS) for side in sides]
    assert states[0] == states[1]


def test_a_kept_key_written_again_enters_as_a_new_key() -> None:
    """The write drops the key first (its invalidation), then fills it: a key the policy
    had promoted starts again in the window, in one step as in two."""
    for chain_class in (TieredCache, StepsSet):
        side = Side(chain_class, 100)
        for _ in range(5):
            side.apply(("get", "k0"))
        side.apply(("get", "k1"))  # moves k0 out of the window
        assert side.policy.segment_of("k0") != "window"
        side.apply(("set", "k0"))
        assert side.policy.segment_of("k0") == "window", chain_class


def test_the_old_copy_goes_when_the_new_one_cannot_be_weighed() -> None:
    """A value the tier cannot weigh (``max_bytes``): the failure is the tier's (counted),
    the set returns, and no tier keeps the old value."""

    def sizeof(value: Any) -> int:
        if value == "unweighable":
            raise ValueError("cannot weigh it")
        return 1

    answers = []
    for chain_class in (TieredCache, StepsSet):
        clock = ManualClock(1_000_000.0)
        tier = MemoryTier(clock=clock, max_bytes=1000, sizeof=sizeof)
        cache = chain_class([tier], clock=clock, ttl=TTL)
        cache.set("k", "old")
        cache.set("k", "unweighable")
        answers.append((tier.peek("k"), cache.stats()["tiers"][0]["errors"]))
    assert answers == [(MISSING, 1), (MISSING, 1)]


def test_set_keeps_its_key_check_and_ttl() -> None:
    """(Its signature: test_help_and_signature_show_the_public_set. Kept apart, this test
    also runs under a mutation tool's trampolines, which change what a signature shows.)"""
    clock = ManualClock(1_000_000.0)
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, ttl=TTL)
    with pytest.raises(TypeError, match="cache keys are str, not int"):
        cache.set(42, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache.set("k", "v", 5)  # type: ignore[misc]
    cache.set("k", "v", ttl="2s")
    entry = cache.tiers[0].get("k")
    assert isinstance(entry, Entry)
    assert entry.soft_expiry == clock() + 2


def test_help_and_signature_show_the_public_set() -> None:
    """``cache.set`` of such a chain is ``ChainPaths.set_alone`` underneath; ``help()`` and
    introspecting frameworks must see ``TieredCache.set``: its name, doc and parameters."""
    cache = TieredCache([MemoryTier()])
    assert "set" in vars(cache)  # the lone chain's set, not the method
    assert cache.set.__name__ == "set"
    assert cache.set.__doc__ == TieredCache.set.__doc__
    assert inspect.signature(cache.set) == inspect.signature(StepsSet([]).set)
    shown = pydoc.render_doc(cache.set, renderer=pydoc.plaintext)
    assert "set_alone" not in shown and "set(key" in shown
    assert "Write ``value`` for ``key`` and make every process see it." in shown


def test_the_general_set_stays_for_other_chains() -> None:
    """A bus, a second tier, or a source written around: the steps (leases, announcements,
    the invalidation of every tier)."""
    clock = ManualClock(1_000_000.0)
    two = TieredCache([MemoryTier(clock=clock), MemoryTier(name="l2", clock=clock)], clock=clock)
    assert "set" not in vars(two)
    subclass = StepsSet([MemoryTier(clock=clock)], clock=clock)
    assert "set" not in vars(subclass)


@pytest.mark.parametrize("chain_class", [TieredCache, StepsSet])
@pytest.mark.parametrize("tiers", [1, 2])
def test_a_bad_ttl_is_refused_before_the_source_takes_the_value(
    chain_class: type[TieredCache], tiers: int
) -> None:
    """The ttl was read after the source was written (as the entry was stamped): a bad one
    raised there and left every tier holding the old value, which the source no longer had
    (then the key was dropped from every tier). It is checked before anything is written: the
    source and the tiers keep the old value."""
    clock = ManualClock(1_000_000.0)
    source = DictSource({"k": "old"})
    layers = [MemoryTier(name=f"m{i}", clock=clock) for i in range(tiers)]
    cache = chain_class(layers, source, clock=clock, ttl=TTL)
    assert cache.get("k") == "old"
    with pytest.raises(ValueError, match="duration"):
        cache.set("k", "new", ttl="soon")
    assert source.items["k"] == "old"
    assert cache.get("k") == "old"
