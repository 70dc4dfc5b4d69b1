"""The behaviour every tier must show, as a pytest base class.

Subclass it in a test module and provide a ``tier`` fixture built with the ``clock`` fixture::

    class TestMyTier(TierConformance):
        @pytest.fixture
        def tier(self, clock):
            t = MyTier(clock=clock)
            yield t
            t.close()

The tier must judge expiry by the injected clock (a shared tier may also hand expiry to its
server, but must not return an entry the clock says has expired).
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest

from ..tier import MISSING, Entry, Tier
from .clock import FakeClock
from .values import assert_same_value

SAMPLE_VALUES: list[Any] = [
    "text",
    "",
    0,
    -17,
    2**70,
    1.5,
    True,
    False,
    None,
    Decimal("3.14"),
    [1, "two", None],
    {"tweet_id": "42", "likes": Decimal("7"), "tags": ["a", "b"], "meta": {"x": None}},
]


class TierConformance:
    """Tests any :class:`~tiered_cache.Tier` must pass."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def tier(self, clock: FakeClock) -> Tier:
        raise NotImplementedError("a conformance test module provides the 'tier' fixture")

    @staticmethod
    def entry(clock: FakeClock, value: Any, lifetime: float = 600.0, version: int = 0) -> Entry:
        now = clock()
        return Entry(
            value=value,
            loaded_at=now,
            soft_expiry=now + lifetime / 2,
            hard_expiry=now + lifetime,
            load_duration=0.25,
            version=version,
        )

    def test_absent_key_is_missing_and_falsy(self, tier: Tier) -> None:
        result = tier.get("conformance:absent")
        assert result is MISSING
        assert not result

    def test_set_then_get_returns_the_whole_entry(self, tier: Tier, clock: FakeClock) -> None:
        entry = self.entry(clock, {"tweet_id": "1", "text": "hello"}, version=3)
        tier.set("conformance:k1", entry)
        assert tier.get("conformance:k1") == entry

    @pytest.mark.parametrize("value", SAMPLE_VALUES, ids=repr)
    def test_values_round_trip(self, tier: Tier, clock: FakeClock, value: Any) -> None:
        tier.set("conformance:value", self.entry(clock, value))
        got = tier.get("conformance:value")
        assert got is not MISSING
        assert got.value == value
        assert_same_value(got.value, value)

    def test_none_is_a_cached_value_not_a_miss(self, tier: Tier, clock: FakeClock) -> None:
        tier.set("conformance:none", self.entry(clock, None))
        got = tier.get("conformance:none")
        assert got is not MISSING
        assert got.value is None

    def test_set_overwrites(self, tier: Tier, clock: FakeClock) -> None:
        tier.set("conformance:k", self.entry(clock, "old"))
        tier.set("conformance:k", self.entry(clock, "new", version=1))
        got = tier.get("conformance:k")
        assert got is not MISSING
        assert (got.value, got.version) == ("new", 1)

    def test_delete(self, tier: Tier, clock: FakeClock) -> None:
        tier.set("conformance:k", self.entry(clock, "v"))
        tier.delete("conformance:k")
        assert tier.get("conformance:k") is MISSING
        tier.delete("conformance:never-set")  # absent keys are not an error

    def test_get_many_returns_only_present_keys(self, tier: Tier, clock: FakeClock) -> None:
        tier.set("conformance:a", self.entry(clock, "A"))
        tier.set("conformance:c", self.entry(clock, None))
        found = tier.get_many(["conformance:a", "conformance:b", "conformance:c"])
        assert {key: entry.value for key, entry in found.items()} == {
            "conformance:a": "A",
            "conformance:c": None,
        }
        assert tier.get_many([]) == {}

    def test_set_many_and_delete_many(self, tier: Tier, clock: FakeClock) -> None:
        keys = [f"conformance:many:{i}" for i in range(50)]
        tier.set_many({key: self.entry(clock, i) for i, key in enumerate(keys)})
        found = tier.get_many(keys)
        assert {key: entry.value for key, entry in found.items()} == {
            key: i for i, key in enumerate(keys)
        }
        tier.delete_many(keys[:25])
        assert sorted(tier.get_many(keys)) == sorted(keys[25:])
        tier.delete_many([])

    def test_entry_past_hard_expiry_is_missing(self, tier: Tier, clock: FakeClock) -> None:
        tier.set("conformance:exp", self.entry(clock, "v", lifetime=10.0))
        clock.advance(9.0)
        assert tier.get("conformance:exp") is not MISSING
        clock.advance(1.5)
        assert tier.get("conformance:exp") is MISSING
        assert tier.get_many(["conformance:exp"]) == {}

    def test_stale_entry_before_hard_expiry_is_kept(self, tier: Tier, clock: FakeClock) -> None:
        # Past soft expiry, the chain decides what to do with the entry: the tier keeps it.
        tier.set("conformance:stale", self.entry(clock, "v", lifetime=10.0))
        clock.advance(6.0)
        got = tier.get("conformance:stale")
        assert got is not MISSING
        assert not got.is_fresh(clock())

    def test_already_expired_entry_is_not_stored(self, tier: Tier, clock: FakeClock) -> None:
        now = clock()
        dead = Entry(value="v", loaded_at=now - 10, soft_expiry=now - 5, hard_expiry=now - 1)
        tier.set("conformance:dead", dead)
        assert tier.get("conformance:dead") is MISSING

    def test_keys_with_unusual_characters(self, tier: Tier, clock: FakeClock) -> None:
        keys = ["conformance:with space", "conformance:ünïcødé:🐦", "conformance:a:b:c", "x" * 300]
        for i, key in enumerate(keys):
            tier.set(key, self.entry(clock, i))
        for i, key in enumerate(keys):
            got = tier.get(key)
            assert got is not MISSING
            assert got.value == i

    def test_clear_removes_everything(self, tier: Tier, clock: FakeClock) -> None:
        tier.set_many({f"conformance:clear:{i}": self.entry(clock, i) for i in range(10)})
        tier.clear()
        assert tier.get_many([f"conformance:clear:{i}" for i in range(10)]) == {}

    def test_concurrent_use_from_threads(self, tier: Tier, clock: FakeClock) -> None:
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for i in range(100):
                    key = f"conformance:threads:{i % 10}"
                    tier.set(key, self.entry(clock, {"worker": worker, "i": i}))
                    got = tier.get(key)
                    if got is not MISSING:
                        assert set(got.value) == {"worker", "i"}
            except BaseException as exc:  # collected and asserted on the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(tier.get_many([f"conformance:threads:{i}" for i in range(10)])) == 10
