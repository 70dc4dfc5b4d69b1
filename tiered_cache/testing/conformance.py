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

A tier that subclasses :class:`~tiered_cache.tier.TierBase` also runs one test per optional
capability it declares (``peek``, ``get_at``, ``hit_reader``, ``delete_prefix``, ``hot_keys``,
and with ``leases = True`` the lease operations and their batch forms; without ``utf8_keys``,
keys UTF-8 cannot encode); the others are skipped.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any, cast

import pytest

from ..errors import CodecError
from ..leases import LeasingTier
from ..tier import MISSING, Entry, Tier, TierBase, declared_capabilities
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

    # -- optional capabilities (TierBase declares them; docs/adapters.md lists them) ----------

    @staticmethod
    def declared(tier: Tier) -> TierBase:
        """The tier as a :class:`TierBase`; a tier that declares nothing has nothing to test."""
        if not isinstance(tier, TierBase):
            pytest.skip("the tier declares no optional capability (TierBase)")
        return tier

    @staticmethod
    def leasing(tier: Tier) -> LeasingTier:
        """The tier's lease operations; skipped for a tier that does not declare ``leases``."""
        if not declared_capabilities(tier).leases:
            pytest.skip("the tier does not declare leases")
        return cast(LeasingTier, tier)

    def test_capability_flags_are_booleans(self, tier: Tier) -> None:
        declared = self.declared(tier)
        assert isinstance(declared.local, bool)
        assert isinstance(declared.leases, bool)
        assert isinstance(declared.utf8_keys, bool)

    def test_capability_a_tier_without_utf8_keys_holds_any_str_key(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        """A tier that does not declare ``utf8_keys`` is given keys UTF-8 cannot encode (a lone
        surrogate): the chain refuses them only in front of a tier that declares it."""
        if self.declared(tier).utf8_keys:
            pytest.skip("the tier stores keys as UTF-8: the chain refuses such keys")
        keys = ["conformance:\udcff", "\ud800"]
        tier.set_many({key: self.entry(clock, i) for i, key in enumerate(keys)})
        assert {key: entry.value for key, entry in tier.get_many(keys).items()} == {
            keys[0]: 0,
            keys[1]: 1,
        }
        tier.delete(keys[0])
        assert tier.get(keys[0]) is MISSING
        assert tier.get(keys[1]) is not MISSING

    def test_capability_prepare_value_is_what_set_stores(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        """The form ``prepare_value`` returns (the chain hands it to the write's fill as the
        entry's value) is stored as the value itself: read back, it is the value. One it
        refuses, ``check_value`` refuses too (the chain asks one, a tier's user the other)."""
        declared = self.declared(tier)
        value = {"text": "conformance", "n": [1, 2.5, None, True]}
        form = declared.prepare_value(value)
        tier.set("conformance:prepared", self.entry(clock, form))
        found = tier.get("conformance:prepared")
        assert found is not MISSING and found.value == value
        refused = object()
        try:
            declared.prepare_value(refused)
        except CodecError:
            with pytest.raises(CodecError):
                declared.check_value(refused)
        else:
            declared.check_value(refused)

    def test_capability_check_value_refuses_only_what_set_refuses(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        """``check_value`` takes a value ``set`` stores; one it refuses, ``set`` refuses too,
        storing nothing (the chain asks before a write sends anything). One it takes, ``set``
        must store: a check that takes everything (a wrapper that hides the tier's) would
        let the write reach the source before the tier refused it."""
        declared = self.declared(tier)
        value = {"text": "conformance", "n": [1, 2.5, None, True]}
        declared.check_value(value)
        tier.set("conformance:checked", self.entry(clock, value))
        assert tier.get("conformance:checked") is not MISSING
        refused = object()
        try:
            declared.check_value(refused)
        except CodecError:
            with pytest.raises(CodecError):
                tier.set("conformance:refused", self.entry(clock, refused))
            assert tier.get("conformance:refused") is MISSING
        else:
            tier.set("conformance:refused", self.entry(clock, refused))
            assert tier.get("conformance:refused") is not MISSING

    def test_capability_peek_sees_what_get_sees(self, tier: Tier, clock: FakeClock) -> None:
        declared = self.declared(tier)
        assert declared.peek("conformance:peek") is MISSING
        tier.set("conformance:peek", self.entry(clock, "v"))
        got = declared.peek("conformance:peek")
        assert got is not MISSING
        assert got.value == "v"
        clock.advance(601)  # past the hard expiry
        assert declared.peek("conformance:peek") is MISSING

    def test_capability_get_at_judges_expiry_at_the_given_time(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        declared = self.declared(tier)
        tier.set("conformance:get-at", self.entry(clock, "v"))
        got = declared.get_at("conformance:get-at", clock())
        assert got is not MISSING
        assert got.value == "v"
        assert declared.get_at("conformance:absent", clock()) is MISSING

    def test_capability_hit_reader_answers_only_fresh_hits_and_counts_them(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        from ..hit import NOT_FRESH, HitCount

        declared = self.declared(tier)
        hits = HitCount()
        reader = declared.hit_reader(clock, 10.0, hits)
        if reader is None:
            pytest.skip("the tier offers no hit_reader (the chain reads through get_at)")
        tier.set("conformance:hit", self.entry(clock, "v"))  # soft expiry in 300 s, load 0.25 s
        assert reader("conformance:hit") == "v"
        assert reader("conformance:absent") is NOT_FRESH
        assert hits.value == 1
        clock.advance(298)  # 2 s before the soft expiry: within 10 x the 0.25 s load
        assert reader("conformance:hit") is NOT_FRESH  # left to get_at, which makes the draw
        assert declared.get_at("conformance:hit", clock()) is not MISSING
        clock.advance(3)  # stale (past the soft expiry), still live
        assert reader("conformance:hit") is NOT_FRESH
        assert hits.value == 1

    def test_capability_replace_drops_the_old_copy_and_stores_the_new(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        declared = self.declared(tier)
        tier.set("conformance:replace", self.entry(clock, "old"))
        declared.replace("conformance:replace", self.entry(clock, "new", version=1))
        got = tier.get("conformance:replace")
        assert got is not MISSING
        assert (got.value, got.version) == ("new", 1)
        declared.replace("conformance:replace:absent", self.entry(clock, "v"))
        assert tier.get("conformance:replace:absent") is not MISSING
        # An entry already past its hard expiry is not kept, and the old copy goes anyway.
        past = Entry("past", clock() - 20, clock() - 10, clock() - 5)
        declared.replace("conformance:replace", past)
        assert tier.get("conformance:replace") is MISSING

    def test_capability_delete_prefix_removes_every_key_with_the_prefix(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        declared = self.declared(tier)
        tier.set_many(
            {
                "conformance:user:1:a": self.entry(clock, 1),
                "conformance:user:1:b": self.entry(clock, 2),
                "conformance:user:10:a": self.entry(clock, 3),
            }
        )
        declared.delete_prefix("conformance:user:1:")
        assert tier.get_many(["conformance:user:1:a", "conformance:user:1:b"]) == {}
        # Another key may go too (clearing everything is a safe default), never come back.
        kept = tier.get("conformance:user:10:a")
        assert kept is MISSING or kept.value == 3

    def test_capability_hot_keys_are_key_and_rate_pairs(self, tier: Tier, clock: FakeClock) -> None:
        declared = self.declared(tier)
        for _ in range(5):
            tier.get("conformance:hot")
        report = declared.hot_keys(3)
        assert len(report) <= 3
        assert all(isinstance(key, str) and rate >= 0 for key, rate in report)

    def test_capability_lease_one_holder_and_fill_releases(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        leasing = self.leasing(tier)
        assert leasing.can_lease("conformance:lease")
        token, current = leasing.acquire_lease("conformance:lease", 5.0)
        assert token is not None
        assert current is MISSING
        assert leasing.acquire_lease("conformance:lease", 5.0)[0] is None  # held
        assert leasing.fill_with_lease("conformance:lease", self.entry(clock, "v"), token)
        got = tier.get("conformance:lease")
        assert got is not MISSING
        assert got.value == "v"
        again, current = leasing.acquire_lease("conformance:lease", 5.0)
        assert again is not None  # the fill gave the lease up ...
        assert current is not MISSING  # ... and the look came with it
        leasing.release_lease("conformance:lease", again)

    def test_capability_lease_is_voided_by_deletes_and_writes(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        leasing = self.leasing(tier)
        for void in (
            tier.delete,
            lambda key: tier.set(key, self.entry(clock, "written")),
            lambda key: self.declared(tier).delete_prefix(key[:-1]),
            lambda key: tier.clear(),
        ):
            key = "conformance:void:k"
            tier.delete(key)
            token, _ = leasing.acquire_lease(key, 5.0)
            assert token is not None
            void(key)  # an invalidation or a write while the holder loads
            assert not leasing.fill_with_lease(key, self.entry(clock, "read before"), token)
            got = tier.get(key)
            assert got is MISSING or got.value == "written"

    @pytest.mark.parametrize("batch", [False, True], ids=["one key", "batch"])
    def test_capability_a_fill_with_nothing_to_keep_leaves_what_voided_its_lease(
        self, tier: Tier, clock: FakeClock, batch: bool
    ) -> None:
        """A load whose entry is past its expiry by its fill keeps nothing, and drops the
        older copy it was loaded to replace only while its lease holds: a write that voided
        the lease meanwhile stays (a chain without a source has no other copy of it)."""
        leasing = self.leasing(tier)
        key = "conformance:void:past"
        token, _ = leasing.acquire_lease(key, 5.0)
        assert token is not None
        tier.set(key, self.entry(clock, "written"))  # a write while the holder loads
        past = Entry("read before", clock() - 20, clock() - 10, clock() - 5)
        if batch:
            assert leasing.fill_with_leases({key: (past, token)}) == set()
        else:
            assert not leasing.fill_with_lease(key, past, token)
        got = tier.get(key)
        assert got is not MISSING and got.value == "written"

    def test_capability_steal_lease_makes_the_holder_lose(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        leasing = self.leasing(tier)
        token, _ = leasing.acquire_lease("conformance:steal", 5.0)
        assert token is not None
        writer = leasing.steal_lease("conformance:steal", 5.0)
        assert not leasing.fill_with_lease("conformance:steal", self.entry(clock, "old"), token)
        later = leasing.steal_lease("conformance:steal", 5.0)  # a later write overlaps ...
        assert not leasing.fill_with_lease("conformance:steal", self.entry(clock, "w1"), writer)
        assert leasing.fill_with_lease("conformance:steal", self.entry(clock, "w2"), later)
        got = tier.get("conformance:steal")
        assert got is not MISSING
        assert got.value == "w2"

    def test_capability_steal_leases_takes_a_batch_from_its_holders(
        self, tier: Tier, clock: FakeClock
    ) -> None:
        leasing = self.leasing(tier)
        keys = [f"conformance:steals:{i}" for i in range(3)]
        held, _ = leasing.acquire_lease(keys[0], 5.0)
        assert held is not None
        stolen = leasing.steal_leases(keys, 5.0)
        assert set(stolen) == set(keys)
        assert len(set(stolen.values())) == len(keys)  # a token of its own for each key
        assert not leasing.fill_with_lease(keys[0], self.entry(clock, "old"), held)
        kept = leasing.fill_with_leases(
            {key: (self.entry(clock, key), stolen[key]) for key in keys}
        )
        assert kept == set(keys)
        for key in keys:
            got = tier.get(key)
            assert got is not MISSING
            assert got.value == key

    def test_capability_leases_in_batches(self, tier: Tier, clock: FakeClock) -> None:
        leasing = self.leasing(tier)
        keys = [f"conformance:batch:{i}" for i in range(4)]
        tier.set(keys[0], self.entry(clock, "there"))
        looks = leasing.acquire_leases(keys, 5.0)
        assert set(looks) == set(keys)
        assert all(token is not None for token, _ in looks.values())
        first = looks[keys[0]][1]
        assert first is not MISSING
        assert first.value == "there"
        assert all(leasing.acquire_leases(keys, 5.0)[key][0] is None for key in keys)
        tier.delete(keys[1])  # voids that key's lease
        kept = leasing.fill_with_leases(
            {key: (self.entry(clock, key), str(looks[key][0])) for key in keys[1:3]}
        )
        assert kept == {keys[2]}
        leasing.release_leases({keys[3]: str(looks[keys[3]][0])})
        assert leasing.acquire_leases([keys[3]], 5.0)[keys[3]][0] is not None
