"""The plain L1 hit (tiered_cache/hit.py) answers as the general lookup would, only cheaper.

Two chains run the same reads, writes and clock moves: one whose memory tier offers its
plain-hit reader (what every chain uses), one whose tier declares none (every read takes the
general lookup, ``l1.py: L1Reader.lookup_l1``). Their answers, counters, early refreshes and
the eviction policy's whole state must stay identical.
"""

from __future__ import annotations

import inspect
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache import TieredCache
from tiered_cache.clocks import ManualClock
from tiered_cache.hit import NOT_FRESH, HitCount, HitReader, PlainGet
from tiered_cache.memory import MemoryTier
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.protection import Protection
from tiered_cache.testing.scripts import KEYS, chain_scripts

#: How long a value is fresh; then it is stale (served while refreshed) for max_stale.
TTL = 30.0
#: How long each load takes (the clock moves): the XFetch window is 20 x this before the
#: soft expiry (Protection's default beta of 1).
LOAD = 0.5


class GeneralLookupOnly(MemoryTier):
    """A memory tier that offers no plain-hit reader: the chain reads it through get_at."""

    def hit_reader(self, clock: Callable[[], float], margin: float, hits: HitCount) -> None:
        return None


class Side:
    """One chain over a hot-key memory tier, a manual clock, a seeded draw, queued refreshes."""

    def __init__(self, tier_class: type[MemoryTier], max_entries: int) -> None:
        self.clock = ManualClock(1_000_000.0)
        self.draws = 0
        self.refreshes: list[Callable[[], None]] = []
        self.versions: dict[str, int] = {}
        self.policy = TinyLfuPolicy(max_entries, clock=self.clock, top_k=5)
        self.tier = tier_class(policy=self.policy, clock=self.clock)
        draw = random.Random(7).random

        def counted_draw() -> float:
            self.draws += 1
            return draw()

        # No soft timeout: every load runs on the caller's thread, so both sides run alike.
        self.cache = TieredCache(
            [self.tier],
            clock=self.clock,
            ttl=TTL,
            rng=counted_draw,
            background=self.queue,
            protection=Protection(soft_timeout=None),
        )

    def queue(self, job: Callable[[], None]) -> None:
        self.refreshes.append(job)

    def load(self, key: str) -> str:
        self.clock.advance(LOAD)
        return f"{key}@{self.versions.get(key, 0)}"

    def apply(self, step: tuple[str, Any]) -> Any:
        name, argument = step
        if name == "get":
            return self.cache.get(argument, lambda: self.load(argument))
        if name == "set":
            self.versions[argument] = self.versions.get(argument, 0) + 1
            self.cache.set(argument, self.load(argument))
            return None
        if name == "invalidate":
            self.cache.invalidate(argument)
            return None
        if name == "refresh":
            jobs, self.refreshes = self.refreshes, []
            for job in jobs:
                job()
            return len(jobs)
        self.clock.advance(argument)
        return None

    def state(self, keys: list[str]) -> Any:
        stats = self.cache.stats()
        return (
            stats["tiers"],
            stats["loads"],
            stats["early_refreshes"],
            stats["stale_served"],
            [self.policy.segment_of(key) for key in keys],
            [self.policy.sketch.frequency(key) for key in keys],
            self.policy.evictions,
            self.draws,
            len(self.refreshes),
        )


steps = chain_scripts(
    ["get", "get", "set", "invalidate"], [0.1, 3.0, 12.0, 40.0], min_size=50, max_size=300
)


@settings(max_examples=60, deadline=None)
@given(max_entries=st.sampled_from([2, 8, 100]), script=steps)
def test_plain_hits_answer_count_and_feed_the_policy_as_the_general_lookup(
    max_entries: int, script: list[tuple[str, Any]]
) -> None:
    plain = Side(MemoryTier, max_entries)
    general = Side(GeneralLookupOnly, max_entries)
    assert isinstance(plain.cache.l1_hit, HitReader)
    assert not isinstance(general.cache.l1_hit, HitReader)
    for step in script:
        assert plain.apply(step) == general.apply(step), step
    assert plain.state(KEYS) == general.state(KEYS)


def test_a_read_in_the_xfetch_window_is_left_to_the_draw() -> None:
    side = Side(MemoryTier, 10)
    assert side.apply(("get", "k")) == "k@0"
    side.apply(("advance", TTL - 20 * LOAD - 1))  # a second before the window
    assert side.cache.l1_hit("k") == "k@0"
    side.apply(("advance", 2.0))  # inside it: the reader declines, the general lookup draws
    assert side.cache.l1_hit("k") is NOT_FRESH
    draws = side.draws
    assert side.apply(("get", "k")) == "k@0"
    assert side.draws == draws + 1
    assert side.cache.stats()["tiers"][0]["hits"] == 2  # the reader's, the general lookup's


def test_a_key_that_is_not_a_str_still_gets_the_explaining_type_error() -> None:
    side = Side(MemoryTier, 10)
    side.apply(("get", "k"))
    with pytest.raises(TypeError, match="cache keys are str, not int"):
        side.cache.get(42)  # type: ignore[arg-type]


def test_a_copy_on_read_tier_offers_no_reader() -> None:
    tier = MemoryTier(copy_on_read=True)
    assert tier.hit_reader(ManualClock(), 1.0, HitCount()) is None
    cache = TieredCache([tier])
    assert not isinstance(cache.l1_hit, HitReader)
    cache.set("k", [1])
    cache.get("k").append(2)
    assert cache.get("k") == [1]


def test_the_decorator_reads_the_chain_s_current_reader() -> None:
    side = Side(MemoryTier, 10)
    calls: list[str] = []

    @side.cache.cached(key="user:{user_id}")
    def user(user_id: str) -> str:
        calls.append(user_id)
        return f"user {user_id}"

    assert user("1") == user("1") == "user 1"
    assert calls == ["1"]
    side.cache._set_bus_connected(False)  # the bus went down: memory is bypassed
    assert side.cache.l1_hit("user:1") is NOT_FRESH
    assert user("1") == "user 1"
    assert calls == ["1", "1"]


@pytest.fixture
def switch_often() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("switch_often")
def test_plain_hits_from_many_threads_are_counted_exactly() -> None:
    cache = TieredCache([MemoryTier()])
    for index in range(10):
        cache.set(f"k{index}", index)
    threads, reads = 8, 20_000
    barrier = threading.Barrier(threads)

    def read() -> None:
        barrier.wait()
        get = cache.get
        for index in range(reads):
            get(f"k{index % 10}")

    workers = [threading.Thread(target=read) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert cache.stats()["tiers"][0]["hits"] == threads * reads


def test_cache_get_reports_the_methods_signature() -> None:
    # Compiled, PlainGet is a C callable: inspect.signature(cache.get) raised ValueError
    # (help()) while TieredCache.get had a signature.
    cache = Side(MemoryTier, 10).cache
    expected = inspect.signature(TieredCache.get)
    signature = inspect.signature(cache.get)
    assert list(signature.parameters) == ["key", "loader", "ttl"]
    assert signature.parameters["ttl"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.return_annotation == expected.return_annotation


def test_cache_get_is_the_frameless_plain_get_unless_a_subclass_has_its_own() -> None:
    plain = Side(MemoryTier, 10).cache
    assert isinstance(plain.get, PlainGet)
    assert plain.get.reader is plain.l1_hit  # the reader, not the general lookup alone
    assert plain.get("k", lambda: "v", ttl=5.0) == plain.get("k") == "v"
    with pytest.raises(TypeError):
        plain.get("k", None, 5.0)  # type: ignore[call-arg]  # ttl stays keyword-only

    class Counting(TieredCache):
        reads = 0

        def get(self, key: str, loader: Any = None, *, ttl: float | str | None = None) -> Any:
            Counting.reads += 1
            return super().get(key, loader, ttl=ttl)

    counting = Counting([MemoryTier()])
    assert counting.get("k", lambda: "v") == counting.get("k") == "v"
    assert Counting.reads == 2


def test_help_and_signature_show_the_public_get() -> None:
    """``cache.get`` is a PlainGet underneath (see test_set_alone for ``cache.set``):
    ``help()`` showed the internal class, its name and doc; it must show ``TieredCache.get``."""
    import pydoc

    cache = Side(MemoryTier, 10).cache
    assert cache.get.__name__ == "get"
    assert cache.get.__doc__ == TieredCache.get.__doc__
    shown = pydoc.render_doc(cache.get, renderer=pydoc.plaintext).partition("\n")[2]
    # pydoc's title names an object's class (as "method of ChainPaths instance" for set)
    assert "PlainGet" not in shown and shown.lstrip().startswith("get(key"), shown
    assert "The value for ``key``, read through the tiers down to the source." in shown
    assert inspect.isroutine(cache.get)
