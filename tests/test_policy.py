"""The hot-key (W-TinyLFU) policy of the memory tier: admission rules, scans, viral keys."""

from __future__ import annotations

import collections
import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache import MISSING, MemoryTier, Tier
from tiered_cache.errors import ConfigError
from tiered_cache.memory import MISS_BUFFER_ROOM, LruPolicy
from tiered_cache.memory_plugin import build_memory_tier
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.registry import BuildContext
from tiered_cache.replay import lru_hits, replay
from tiered_cache.settings import MemoryTierSettings, load_settings
from tiered_cache.slot import Slot
from tiered_cache.testing import FakeClock
from tiered_cache.testing.conformance import TierConformance
from tiered_cache.testing.hash_seeds import under_hash_seeds
from tiered_cache.tier import Entry
from tiered_cache.workloads import (
    loop_keys,
    recency_biased,
    scan,
    shifting_zipf,
    zipf_cdf,
    zipf_keys,
)


def hot_tier(clock: FakeClock, max_entries: int, **options: object) -> MemoryTier:
    policy = TinyLfuPolicy(max_entries, clock=clock, **options)  # type: ignore[arg-type]
    return MemoryTier(policy=policy, clock=clock)


def policy_of(tier: MemoryTier) -> TinyLfuPolicy:
    policy = tier.policy
    assert isinstance(policy, TinyLfuPolicy)
    return policy


def read(tier: MemoryTier, clock: FakeClock, key: str, rate: float = 1000.0) -> bool:
    """One read at ``rate`` reads/s, filled on a miss as the chain does. True on a hit."""
    clock.advance(1.0 / rate)
    if tier.get(key):
        return True
    tier.set(key, Entry(value=key, loaded_at=clock()))
    return False


class TestHotKeysMemoryTier(TierConformance):
    @pytest.fixture
    def tier(self, clock: FakeClock) -> Tier:
        return MemoryTier(policy=TinyLfuPolicy(1000, clock=clock), ttl=3600, clock=clock)


def test_a_one_hit_key_does_not_displace_a_frequent_one(clock: FakeClock) -> None:
    tier = hot_tier(clock, 10)
    frequent = [f"f{index}" for index in range(10)]
    for _ in range(8):
        for key in frequent:
            read(tier, clock, key)
    assert all(key in tier for key in frequent)
    for index in range(50):
        read(tier, clock, f"once:{index}")
    # The window (one entry here) holds the latest one-off key; all the others were refused.
    assert sum(key in tier for key in frequent) == 9
    assert "once:49" in tier
    assert not any(f"once:{index}" in tier for index in range(49))


def test_the_window_lets_a_new_key_in(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100)
    for key in zipf_keys(1_000, 1.0, 5_000, seed=1):
        read(tier, clock, key)
    assert not read(tier, clock, "brand-new")
    assert "brand-new" in tier
    assert policy_of(tier).segment_of("brand-new") == "window"
    assert read(tier, clock, "brand-new")


def test_a_frequent_candidate_beats_a_rare_victim(clock: FakeClock) -> None:
    tier = hot_tier(clock, 10, adaptive=False)
    for index in range(10):
        read(tier, clock, f"rare:{index}")
    policy = policy_of(tier)
    for _ in range(6):  # counted in the sketch while it is absent
        policy.get("candidate")
    read(tier, clock, "candidate")
    read(tier, clock, "pusher")  # pushes "candidate" out of the window into the contest
    assert policy.segment_of("candidate") == "probation"
    assert sum(f"rare:{index}" in tier for index in range(10)) == 8


def test_a_batch_of_fills_is_judged_key_by_key(clock: FakeClock) -> None:
    tier = hot_tier(clock, 10)
    frequent = [f"f{index}" for index in range(10)]
    for _ in range(8):
        for key in frequent:
            read(tier, clock, key)
    policy = policy_of(tier)
    for _ in range(10):  # read ten times while absent: more than any frequent key
        policy.get("hot")
    batch = [f"once:{index}" for index in range(25)] + ["hot"]
    batch += [f"once:{index}" for index in range(25, 50)]
    tier.set_many({key: Entry(value=key, loaded_at=clock()) for key in batch})
    # One frequent key lost its window slot to the batch (as one by one), one lost its place
    # to "hot"; the one-off keys were refused, but for the last, which holds the window.
    assert "hot" in tier
    assert sum(key in tier for key in frequent) == 8
    assert [key for key in batch if key.startswith("once:") and key in tier] == ["once:49"]


def test_hits_to_keys_not_yet_protected_count_exactly(clock: FakeClock) -> None:
    # Admission compares keys read a few times: their hits are counted one by one.
    tier = hot_tier(clock, 100)
    policy = policy_of(tier)
    read(tier, clock, "new")  # a miss, then three hits while it sits in the window
    for _ in range(3):
        assert read(tier, clock, "new")
    assert policy.segment_of("new") == "window"
    read(tier, clock, "other")  # a miss: the tier replays its buffered hits
    assert policy.sketch.frequency("new") == 4


def test_protected_keys_hits_are_sampled_without_aliasing(clock: FakeClock) -> None:
    # Ten protected keys read in turn, one hit each between two replays: each such hit is
    # counted 4 at a time with probability 1/4. Counting every fourth hit instead would
    # count some keys every time and others never.
    tier = hot_tier(clock, 20)
    keys = [f"k{index}" for index in range(10)]
    for round_ in range(200):
        for key in keys:
            read(tier, clock, key)
        read(tier, clock, f"once:{round_}")  # a miss: the tier replays its buffered hits
    policy = policy_of(tier)
    assert all(policy.segment_of(key) == "protected" for key in keys)
    # 1 miss, 1 exact hit on probation, then 4 x Binomial(198, 1/4): 200 +- 24.
    estimates = [policy.sketch.frequency(key) for key in keys]
    assert all(128 <= estimate <= 272 for estimate in estimates), estimates
    rates = dict(policy.hot_keys(10))
    assert sorted(rates) == keys
    assert min(rates.values()) >= 0.6 * max(rates.values()), rates


@settings(max_examples=60, deadline=None)
@given(
    reads=st.lists(st.integers(min_value=0, max_value=30), max_size=150),
    batches=st.lists(
        st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=15),
        min_size=1,
        max_size=20,
    ),
)
def test_a_batch_is_offered_as_one_put_after_another(
    reads: list[int], batches: list[list[int]]
) -> None:
    clock = FakeClock(0.0)
    one_by_one = TinyLfuPolicy(8, clock=clock, rng=random.Random(3))
    batched = TinyLfuPolicy(8, clock=clock, rng=random.Random(3))
    slot = Slot(Entry(value=0, loaded_at=0.0), 1e9, 1)
    for policy in (one_by_one, batched):
        for read_key in reads:
            policy.get(f"k{read_key}")
    for batch in batches:
        items = [(f"k{key}", slot) for key in dict.fromkeys(batch)]  # keys of a mapping
        for item in items:
            one_by_one.put(*item)
        batched.put_many(items)
        for policy in (one_by_one, batched):  # a read between batches moves the sketch
            policy.get(f"k{batch[-1]}")
    keys = [f"k{key}" for key in range(31)]
    assert [one_by_one.segment_of(key) for key in keys] == [batched.segment_of(key) for key in keys]
    assert one_by_one.evictions == batched.evictions


def test_the_victim_is_the_coldest_of_the_oldest_probation_keys(clock: FakeClock) -> None:
    tier = hot_tier(clock, 20)  # a 1-entry window, 19 in the main area
    policy = policy_of(tier)
    for _ in range(4):  # "warm" was read four times while absent: it is the oldest, and warm
        policy.get("warm")
    read(tier, clock, "warm")
    for index in range(19):
        read(tier, clock, f"cold:{index}")  # fills probation behind "warm"; cold:18 in window
    policy.get("candidate")
    read(tier, clock, "candidate")  # read twice: more than any cold key, less than "warm"
    read(tier, clock, "pusher")  # pushes "candidate" out of the window into the contest
    # The least recently used key alone ("warm", 5) would have refused it; the coldest of
    # the oldest keys (cold:0, 1) gives way instead.
    assert policy.segment_of("candidate") == "probation"
    assert "warm" in tier
    assert "cold:0" not in tier


def test_kept_probation_estimates_follow_the_sketchs_aging(clock: FakeClock) -> None:
    tier = hot_tier(clock, 20, adaptive=False)  # the window stays at one entry
    policy = policy_of(tier)
    for index in range(20):
        policy.get(f"k{index}")  # counted once while absent, then read: 2 each, on probation
        read(tier, clock, f"k{index}")
    read(tier, clock, "candidate")
    read(tier, clock, "pusher")  # "candidate" (1) loses to the oldest keys (2): estimates kept
    assert "candidate" not in tier
    policy.sketch.reset()  # aging halves everything: the oldest keys now read as 1
    policy.get("candidate")
    read(tier, clock, "candidate")  # 1 halved to 0, then read twice: 2
    read(tier, clock, "pusher 2")
    assert policy.segment_of("candidate") == "probation"  # 2 beats the re-estimated 1


def test_a_scan_of_ten_times_the_capacity_evicts_none_of_the_top_100(clock: FakeClock) -> None:
    capacity = 1_000
    tier = hot_tier(clock, capacity)
    warm = list(zipf_keys(100_000, 1.0, 100_000, seed=5))
    for key in warm:
        read(tier, clock, key)
    top = [key for key, _ in collections.Counter(warm).most_common(100)]
    assert all(key in tier for key in top)
    for key in scan(10 * capacity):
        read(tier, clock, key)
    assert [key for key in top if key not in tier] == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_viral_key_is_served_from_memory_within_a_second(clock: FakeClock, seed: int) -> None:
    tier = hot_tier(clock, 1_000)
    for key in zipf_keys(100_000, 1.0, 50_000, seed=seed):
        read(tier, clock, key)
    # A new key jumps to rank 1 (the share of Zipf 1.0's top key) at 1,000 reads/s.
    share = 1.0 / zipf_cdf(100_000, 1.0)[-1]
    rng = random.Random(seed)
    background = zipf_keys(100_000, 1.0, 3_000, seed=seed + 100)
    start = clock()
    viral_reads = 0
    misses: list[float] = []
    for key in background:  # 3,000 reads: three seconds of workload time
        if rng.random() < share:
            viral_reads += 1
            if not read(tier, clock, "viral"):
                misses.append(clock() - start)
        read(tier, clock, key)
    assert viral_reads >= 150
    # Admitted within the first second: every read after that one is a hit.
    assert max(misses) < 1.0
    assert len(misses) <= 5
    assert "viral" in tier
    assert "viral" in [key for key, _ in policy_of(tier).hot_keys(5)]


def test_hot_keys_reports_rates(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100)
    for tick in range(10_000):  # 10 s at 1,000 reads/s; "a" is every other read
        read(tier, clock, "a" if tick % 2 == 0 else f"k{tick % 400}")
    (key, rate), *_ = policy_of(tier).hot_keys(5)
    assert key == "a"
    assert rate == pytest.approx(500.0, rel=0.15)


def test_weight_bound(clock: FakeClock) -> None:
    policy = TinyLfuPolicy(100, max_weight=1_000, clock=clock)
    tier = MemoryTier(policy=policy, max_bytes=1_000, sizeof=lambda value: value, clock=clock)
    for index in range(50):
        tier.set(f"k{index}", Entry(value=100, loaded_at=clock()))
        assert policy.weight <= 1_000
    assert len(tier) == 10
    assert policy.evictions == 40
    tier.set("huge", Entry(value=2_000, loaded_at=clock()))
    assert "huge" not in tier
    tier.delete("k49")
    assert policy.weight == 900


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=20),
    operations=st.lists(
        st.tuples(st.sampled_from(["get", "set", "delete"]), st.integers(0, 40)), max_size=200
    ),
)
def test_never_holds_more_than_its_capacity(
    capacity: int, operations: list[tuple[str, int]]
) -> None:
    clock = FakeClock()
    policy = TinyLfuPolicy(capacity, clock=clock)
    tier = MemoryTier(policy=policy, clock=clock)
    model: dict[str, object] = {}
    for operation, number in operations:
        key = f"k{number}"
        if operation == "get":
            entry = tier.get(key)
            if entry:
                assert entry.value == model[key]  # never a stale or foreign value
        elif operation == "set":
            tier.set(key, Entry(value=number, loaded_at=clock()))
            model[key] = number
        else:
            tier.delete(key)
            model.pop(key, None)
        assert len(tier) <= capacity
        assert len(policy) == sum(1 for name in model if policy.peek(name) is not None)


def test_hot_ttl_keeps_hot_keys_longer(clock: FakeClock) -> None:
    policy = TinyLfuPolicy(100, clock=clock, top_k=1, hot_ttl=3600.0)
    tier = MemoryTier(policy=policy, ttl=60.0, clock=clock)
    for _ in range(20):
        policy.get("hot")
        policy.get("other")
        policy.get("hot")
    tier.set("hot", Entry(value=1, loaded_at=clock()))
    tier.set("cold", Entry(value=2, loaded_at=clock()))
    clock.advance(120.0)
    assert tier.get("hot")
    assert not tier.get("cold")
    # Never past the entry's own hard expiry.
    tier.set("hot", Entry(value=1, loaded_at=clock(), hard_expiry=clock() + 10.0))
    clock.advance(11.0)
    assert not tier.get("hot")


def test_settings_default_to_hot_keys() -> None:
    clock = FakeClock()
    context = BuildContext(namespace="test", clock=clock, index=0)
    tier = build_memory_tier(MemoryTierSettings(max_entries=50, window_fraction=0.1), context)
    assert isinstance(tier, MemoryTier)
    assert isinstance(tier.policy, TinyLfuPolicy)
    assert tier.policy.window_max == 5
    plain = build_memory_tier(MemoryTierSettings(admission="always"), context)
    assert isinstance(plain, MemoryTier)
    assert isinstance(plain.policy, LruPolicy)


def test_settings_reject_a_sketch_width_that_is_not_a_power_of_two() -> None:
    with pytest.raises(ConfigError, match=r"tiers\[0\].*power of two"):
        load_settings(tiers=[{"kind": "memory", "sketch_width": 1000}])


def test_clear_keeps_the_frequency_history(clock: FakeClock) -> None:
    policy = TinyLfuPolicy(10, clock=clock)
    tier = MemoryTier(policy=policy, clock=clock)
    tier.set("a", Entry(value=1, loaded_at=clock()))
    for _ in range(5):
        assert policy.get("a") is not None
    tier.clear()
    assert len(tier) == 0
    assert policy.sketch.frequency("a") == 5


# -- the adaptive window ----------------------------------------------------------------------


def fill_main(tier: MemoryTier, clock: FakeClock, keys: int, reads: int) -> None:
    """Fill the main area with ``keys`` keys read ``reads`` times each."""
    for index in range(keys):
        for _ in range(reads):
            read(tier, clock, f"main:{index}")


def test_a_miss_on_a_refused_candidate_grows_the_window(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100)  # a 1-entry window, 99 in the main area
    policy = policy_of(tier)
    fill_main(tier, clock, 100, 3)
    assert policy.window_max == 1
    read(tier, clock, "once")
    read(tier, clock, "pusher")  # "once" (1 read) loses to a main key (3): refused
    assert "once" not in tier
    assert policy.window_max == 1
    read(tier, clock, "once")  # a larger window would have kept it: the window grows
    assert policy.window_max == 2


def test_a_miss_on_a_frequent_refused_candidate_leaves_the_window(clock: FakeClock) -> None:
    # It lost on frequency to a victim at least as frequent (a loop's miss): a larger window
    # would only have put off the same contest.
    tier = hot_tier(clock, 100)  # a 1-entry window, 99 in the main area
    policy = policy_of(tier)
    fill_main(tier, clock, 100, 10)
    for _ in range(8):
        read(tier, clock, "often")
    read(tier, clock, "pusher")  # "often" (8) loses to a main key (10): refused
    assert "often" not in tier
    read(tier, clock, "often")
    assert policy.window_max == 1
    read(tier, clock, "once")
    read(tier, clock, "pusher 2")  # "once" (1) refused too
    read(tier, clock, "once")  # read seldom: a larger window would have kept it
    assert policy.window_max == 2


def test_a_miss_on_an_evicted_main_key_shrinks_the_window(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100, window_fraction=0.1)  # 10 in the window, 90 in the main area
    policy = policy_of(tier)
    fill_main(tier, clock, 100, 1)
    assert policy.window_max == 10
    before = set(policy.keys())
    for _ in range(3):
        read(tier, clock, "frequent")
    for index in range(10):
        read(tier, clock, f"pusher:{index}")  # "frequent" (3) beats a main key (1)
    assert policy.segment_of("frequent") == "probation"
    (evicted,) = {key for key in before - set(policy.keys()) if key.startswith("main:")} - {
        f"main:{index}" for index in range(90, 100)
    }
    read(tier, clock, evicted)  # a larger main area would have kept it: the window shrinks
    # ARC's step: one entry times (refused candidates remembered / evicted keys remembered).
    assert policy.window_max < 10


def test_without_adaptive_the_window_stays_where_it_was_put(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100, adaptive=False)
    policy = policy_of(tier)
    fill_main(tier, clock, 100, 3)
    for _ in range(20):
        read(tier, clock, "once")
        read(tier, clock, "pusher")
    assert policy.window_max == 1


def test_a_recency_biased_trace_grows_the_window_and_beats_a_fixed_one() -> None:
    keys = list(recency_biased(60_000, mean_distance=400.0, seed=3))
    requests = [(None, key) for key in keys]
    adaptive = replay(requests, 500).hits
    fixed = replay(requests, 500, settings={"adaptive_window": False}).hits
    assert adaptive > fixed + 0.02 * len(keys)
    assert adaptive >= lru_hits(keys, 500) - 0.015 * len(keys)  # warming up costs a little


def test_one_sided_ghost_hits_grow_the_window_at_once(clock: FakeClock) -> None:
    # Refused candidates come back, evicted main keys never do: each hit in a row doubles the
    # step. At ARC's step of one entry per hit the window held 122 of 500 entries here (419
    # with the rule).
    tier = hot_tier(clock, 500)
    for key in recency_biased(5_000):
        read(tier, clock, key)
    assert policy_of(tier).window_max >= 350


def test_the_slow_starts_step_stops_doubling_at_sixteen_times_arcs(clock: FakeClock) -> None:
    # Unbounded, a long one-sided run swung OLTP's window from end to end. Here the largest
    # step of one read is 55 entries with the bound, 582 without. (1,200 entries: under
    # 1,024 the fill's trial takes the whole cache at the fill, and the ghosts take no step.)
    # 7,000 reads: the largest step is at read 6,880 (582 unbounded); past 7,500 the guard's
    # verdict may move the window to its split in one jump (275 -> 600 under 3 hash salts of
    # 40), which is not the slow start's step.
    tier = hot_tier(clock, 1_200)
    policy = policy_of(tier)
    largest, before = 0, policy.window_max
    for key in recency_biased(7_000):
        read(tier, clock, key)
        largest, before = max(largest, policy.window_max - before), policy.window_max
    assert largest <= 150


def test_a_zipf_laws_refused_candidates_do_not_double_the_step(clock: FakeClock) -> None:
    # Its refused candidates far outnumber its evicted main keys, so their ghosts are hit in
    # long runs, but the main area's ghosts are hit too: no slow start. Doubling on every run
    # of refused candidates took the window to 450 to 800 of these 1,000 entries.
    tier = hot_tier(clock, 1_000)
    largest = 0
    for key in zipf_keys(100_000, 1.0, 30_000, seed=5):
        read(tier, clock, key)
        largest = max(largest, policy_of(tier).window_max)
    assert largest <= 100


def test_the_window_stays_small_on_a_zipf_law(clock: FakeClock) -> None:
    tier = hot_tier(clock, 1_000)
    for key in zipf_keys(100_000, 1.0, 100_000, seed=5):
        read(tier, clock, key)
    assert policy_of(tier).window_max <= 50


def test_an_established_victim_gives_way_to_a_lead_of_two_not_one(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100)  # a 1-entry window: frequency rules
    policy = policy_of(tier)
    fill_main(tier, clock, 99, 5)  # 99 keys read 5 times each: established
    for _ in range(6):
        read(tier, clock, "six")
    read(tier, clock, "pusher")  # 6 against 5: a lead of one, refused
    assert "six" not in tier
    for _ in range(7):
        read(tier, clock, "seven")
    read(tier, clock, "pusher 2")  # 7 against 5: admitted
    assert policy.segment_of("seven") == "probation"


def test_a_loop_slightly_larger_than_the_cache_keeps_most_of_it(clock: FakeClock) -> None:
    # Plain LRU hits nothing here; admitting a candidate on a one-read lead churned the whole
    # main area (every loop key leads its victim by the read that just brought it in), and
    # growing the window on every refused loop key read again held it near 81%.
    # Counted after ten rounds, as the slice always meant (the first ten rounds were skipped,
    # not read): from a cold cache the slow start on one-sided ghost hits grows the window
    # to 18 in the first round before the loop's evicted keys come back (4,660 hits of 5,500
    # from cold, 4,772 without that rule; 495 of 550 a round with or without it from the fifth).
    tier = hot_tier(clock, 100)
    assert loop_hit_ratio(tier, clock, 110, 60) >= 0.85  # at most 99 of 110 keys: 90%


def loop_hit_ratio(tier: MemoryTier, clock: FakeClock, n_keys: int, rounds: int) -> float:
    """The hits of a loop of ``n_keys`` keys read ``rounds`` times, counted after ten rounds."""
    keys = list(loop_keys(n_keys, n_keys * rounds))
    for key in keys[: n_keys * 10]:
        read(tier, clock, key)
    counted = keys[n_keys * 10 :]
    return sum(read(tier, clock, key) for key in counted) / len(counted)


def small_cache_recency() -> list[float]:
    """Hits of a 50-entry tier on a recency-biased trace, and of plain LRU."""
    keys = list(recency_biased(30_000, reuse=0.8, mean_distance=30.0, seed=3))
    return [replay([(None, key) for key in keys], 50).hits, lru_hits(keys, 50)]


def test_a_cache_of_fewer_than_100_entries_follows_recency_too() -> None:
    # It used to keep its window of 1%, one entry: a key read again after the next miss had
    # gone to the admission contest, which a key read once loses (7,567 to 7,638 hits here
    # under salts 0 to 2, a third of LRU's 23,956). Adapting, it reaches LRU mode.
    for ours, lru in under_hash_seeds(small_cache_recency, range(2)).values():
        assert ours >= 0.99 * lru


def test_a_cache_of_fewer_than_100_entries_steps_by_a_hundredth_of_it(clock: FakeClock) -> None:
    # One entry is 5% of these 20: a step that large let a Zipf law's ghost hits swing the
    # window between 1 and 12. A step is a fifth of an entry here, and the fractions add up.
    tier = hot_tier(clock, 20)
    policy = policy_of(tier)
    fill_main(tier, clock, 20, 3)
    assert policy.window_max == 1
    for index in range(3):
        read(tier, clock, f"once:{index}")
        read(tier, clock, f"pusher:{index}")  # "once" (1 read) loses to a main key (3)
        assert f"once:{index}" not in tier
        read(tier, clock, f"once:{index}")  # a larger window would have kept it
        assert policy.window_max == (1 if index < 2 else 2)  # 1.2, 1.4, 1.6 entries


def test_a_miss_is_counted_at_the_next_write_in_order_with_the_hits(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100)
    policy = policy_of(tier)
    tier.set("hot", Entry("v", clock()))
    for _ in range(3):
        assert tier.get("absent") is MISSING
        assert tier.get("hot")
    # Buffered, not yet counted: the miss path took no lock.
    assert policy.sketch.frequency("absent") == 0
    tier.set("other", Entry("v", clock()))  # a write replays the buffer
    assert policy.sketch.frequency("absent") == 3
    assert policy.sketch.frequency("hot") == 3


def test_a_miss_behind_a_full_read_buffer_is_counted_at_once(clock: FakeClock) -> None:
    tier = hot_tier(clock, 100)
    policy = policy_of(tier)
    tier.set("hot", Entry("v", clock()))
    for _ in range(MISS_BUFFER_ROOM):
        assert tier.get("hot")
    assert tier.get("absent") is MISSING
    # Too little room behind it for the hits that may follow: replayed under the lock now.
    assert policy.sketch.frequency("absent") == 1
    assert policy.sketch.frequency("hot") == MISS_BUFFER_ROOM


def test_the_lru_guard_keeps_a_recency_trace_near_lru() -> None:
    # Reuse 0.7 at a mean distance of 500: the ghosts' balance left a main area of a tenth of
    # the cache holding keys whose bursts were over, 1.2 to 1.5% of the reads below LRU
    # (38,663 hits against LRU's 39,576 under one salt); the guard takes the window on to
    # the whole cache (39,234).
    keys = list(recency_biased(60_000, reuse=0.7, mean_distance=500.0, seed=3))
    hits = replay([(None, key) for key in keys], 500).hits
    assert hits >= lru_hits(keys, 500) - 0.009 * len(keys)


def main_area_loop() -> list[float]:
    """The hit ratio of rounds 10 to 40 of a loop of 1,100 keys at 1,000 entries."""
    clock = FakeClock()
    tier = MemoryTier(policy=TinyLfuPolicy(1_000, clock=clock), max_entries=100, clock=clock)
    return [loop_hit_ratio(tier, clock, 1_100, 40)]


def test_a_loop_the_main_area_holds_does_not_fool_the_lru_guard() -> None:
    # A loop of 1,100 keys at 1,000 entries: 990 hits in a row overflow the read buffer, and
    # the simulated LRU, seeing a part of the hits only, found keys a real LRU would not.
    # Acting with the window small (the ghosts saying frequency pays), it grew the window
    # into the loop: 74.5% to 84.8% of rounds 10 to 30 hit under five salts; 86.8% to 89.1%
    # of rounds 10 to 40 under six with the guard held to a window of half the cache or more.
    # (max_entries=100: the tier keeps 128 reads, as every tier did before its buffer took
    # one read per entry; a cache of more than 4,096 entries still drops such hits.)
    # Under 2 salts of 42 (PYTHONHASHSEED 23 and 31) it is 83%: the test asserts the share
    # (salts 0 to 11: 88.1% to 89.6%), and a floor that the old collapse is below.
    ratios = [ratio for (ratio,) in under_hash_seeds(main_area_loop, range(12)).values()]
    assert sum(ratio >= 0.86 for ratio in ratios) >= 11, ratios
    assert min(ratios) >= 0.80, ratios


def test_a_run_of_hits_longer_than_128_reads_is_counted_whole(clock: FakeClock) -> None:
    # A 128-read buffer counted the last 128 hits of a run only: in a loop of 1,100 keys at
    # 1,000 entries the main area's keys (990 hits in a row) looked cold next to candidates
    # counted at every miss, and were churned out (88.83% hit; 89.94% counted whole).
    tier = MemoryTier(policy=TinyLfuPolicy(1_000, clock=clock), max_entries=1_000, clock=clock)
    keys = [f"kept:{index}" for index in range(500)]
    for key in keys:
        tier.set(key, Entry(value=key, loaded_at=clock()))
    assert all(tier.get(key) for key in keys)
    tier.get("absent")  # a miss replays the buffered hits
    sketch = policy_of(tier).sketch
    assert all(sketch.frequency(key) >= 1 for key in keys)


def test_lru_mode_takes_the_whole_cache_on_recency_and_gives_it_back_on_a_zipf_law(
    clock: FakeClock,
) -> None:
    # Reuse 0.7 at a mean distance of 1,000, 500 entries: plain LRU is the best split, and
    # the policy kept at least one main slot (window 300 to 420 of 500 in a replay, 0.46% of
    # the reads below LRU). Under 17 salts LRU mode took the whole cache by the 30,000th
    # read, and left it within 15,000 reads of a Zipf law (window 100 to 250 after 20,000).
    tier = MemoryTier(policy=TinyLfuPolicy(500, clock=clock), max_entries=500, clock=clock)
    policy = policy_of(tier)

    def drive(keys: Iterable[str]) -> None:
        for key in keys:
            if not tier.get(key):
                tier.set(key, Entry(value=True, loaded_at=clock()))

    drive(recency_biased(40_000, reuse=0.7, mean_distance=1_000.0, seed=5))
    assert policy.window_max == 500
    drive(zipf_keys(10_000, 1.0, 20_000, seed=6))
    assert policy.window_max <= 250


def burst_then_zipf() -> list[float]:
    """The largest window of a 500-entry tier over a burst of new keys each read twice, 100
    reads apart (after 30,000 reads of a Zipf law), and its window after 4,000 more reads of
    the Zipf law."""
    clock = FakeClock()
    tier = hot_tier(clock, 500)
    policy = policy_of(tier)
    for key in zipf_keys(100_000, 1.0, 30_000, seed=5):
        read(tier, clock, key)
    top = 0
    for start in range(0, 8_000, 100):
        block = [f"burst:{index}" for index in range(start, start + 100)]
        for key in block + block:
            read(tier, clock, key)
            top = max(top, policy.window_max)
    for key in zipf_keys(100_000, 1.0, 4_000, seed=6):
        read(tier, clock, key)
    return [top, policy.window_max]


def test_a_window_the_ghosts_took_to_the_top_comes_back_when_frequency_pays() -> None:
    # The burst's refused keys come back within the ghosts' reach: the window goes to every
    # entry but one (as on CloudPhysics' strided streams at 490 entries). There the policy is
    # LRU, so the guard sees LRU level with it and never enters LRU mode, and with one main
    # slot no evicted main key comes back to shrink the window: before the rule it was still
    # 499 after the 4,000 reads of the Zipf law under 5 of these 8 salts. The guard now
    # weighs the miniature W-TinyLFU at the top (a main area of a tenth or less), and its
    # lead takes the window back to half.
    windows = under_hash_seeds(burst_then_zipf, range(8))
    assert sum(top == 499 for top, _ in windows.values()) >= 6, windows
    assert all(back <= 400 for _, back in windows.values()), windows


def one_burst_after_a_zipf_law() -> list[float]:
    """The window of a 500-entry tier after 30,000 reads of a Zipf law, and right after one
    burst of 100 new keys read twice each (the second reads all refused candidates coming
    back, as in CloudPhysics' strided streams)."""
    clock = FakeClock()
    tier = hot_tier(clock, 500)
    policy = policy_of(tier)
    for key in zipf_keys(100_000, 1.0, 30_000, seed=5):
        read(tier, clock, key)
    before = policy.window_max
    block = [f"burst:{index}" for index in range(100)]
    for key in block + block:
        read(tier, clock, key)
    return [before, policy.window_max]


def test_one_burst_of_comebacks_leaves_the_window_where_it_was() -> None:
    # A hundred refused candidates back in a row, each read once before: the ghosts took it
    # for a window too small and the slow start took the window from 10 to 499 entries, the
    # main area's frequent keys evicted for keys that are not read again (seen failing on
    # main: {0: [10, 499], 1: [8, 499], 2: [15, 499], 3: [1, 140], ...}). A run of
    # comebacks that long is a burst: the window goes back to where the run began.
    windows = under_hash_seeds(one_burst_after_a_zipf_law, range(6))
    assert all(after == before for before, after in windows.values()), windows


def main_key_read_after_the_switch() -> list[float]:
    """Into LRU mode on a recency trace; then one key still in the main area is read, and
    499 new keys follow: 1 if the key is still kept (LRU keeps it: the 500th most recent),
    0 if not, and how many main-area keys were left at the switch."""
    clock = FakeClock()
    tier = hot_tier(clock, 500)
    policy = policy_of(tier)
    for key in recency_biased(60_000, reuse=0.7, mean_distance=1_000.0, seed=9):
        read(tier, clock, key)
        if policy.window_max == 500:
            break
    kept = policy.keys()
    main = [key for key in kept if policy.segment_of(key) != "window"]
    read(tier, clock, main[-1])
    for index in range(499):
        read(tier, clock, f"new:{index}")
    return [float(policy.segment_of(main[-1]) is not None), float(len(main))]


def test_in_lru_mode_a_main_key_read_is_kept_as_lru_keeps_it() -> None:
    # LRU mode evicts the main area first (older in LRU's order, or let in by frequency),
    # but a main key read after the switch stayed there and went before window keys not read
    # since (recency-biased, 500 entries: 17 hits fewer than LRU in the 2,000 reads after the
    # switch). Now it joins the window's recent end, as LRU would have it. Seen failing on
    # main: the key was gone under every salt. (Seed 9, was 5: since the fill's trial has the
    # cache's own window it enters LRU mode on seed 5 at the first eviction, its keys in
    # LRU's order, and the guard's switch is not reached.)
    outcomes = under_hash_seeds(main_key_read_after_the_switch, range(6))
    assert all(main >= 1 for _, main in outcomes.values()), outcomes
    assert all(kept == 1 for kept, _ in outcomes.values()), outcomes


def test_in_the_warm_up_lru_ahead_takes_the_window_to_half_the_cache(clock: FakeClock) -> None:
    # Reuse 0.65 at a mean distance of 1,200, 500 entries: refused candidates come back later
    # than the ghosts remember (a quarter of the cache's departures), and the window was 67
    # of 500 after 4,000 reads (67 to 215 under seeds 1 to 8), LRU ahead all the while. The
    # warm-up's guard finds LRU ahead and the window jumps to half (252 to 299 under the
    # same seeds, 94 under one: the jump came later). The figures of this test and the two
    # below are seed 6's; they read seed 8 since the fill's trial has the cache's own window
    # and enters LRU mode on seed 6 (on seed 7 the jumped window was not in LRU mode by the
    # 6,000th read).
    tier = hot_tier(clock, 500)
    for key in recency_biased(4_000, reuse=0.65, mean_distance=1_200.0, seed=8):
        read(tier, clock, key)
    assert policy_of(tier).window_max >= 200


def jump_and_back() -> list[float]:
    """The window after the jump of the test above, then after 5,000 reads of a Zipf law."""
    clock = FakeClock()
    tier = hot_tier(clock, 500)
    for key in recency_biased(4_000, reuse=0.65, mean_distance=1_200.0, seed=8):
        read(tier, clock, key)
    jumped = policy_of(tier).window_max
    for key in zipf_keys(100_000, 0.9, 5_000, seed=9):
        read(tier, clock, key)
    return [jumped, policy_of(tier).window_max]


def test_in_the_warm_up_the_window_jumps_back_when_the_policy_leads() -> None:
    # The jump above, then a Zipf law before the sketch first ages (10,000 reads): the window
    # goes back to where the ghosts had it (35 of 500). Left to the ghosts, it was still 245
    # (262 to 275 with other seeds). While the jumped window waited for the warm-up's end
    # before LRU mode, the guard's evidence (LRU ahead while the sketch was cold on the new
    # keys, then the policy ahead by little) left it at 149 to 250 after 5,000 reads under 4
    # salts of 42 (PYTHONHASHSEED 4, 6, 16, 20; a test run under its process's own salt
    # failed in CI). Now LRU mode takes those first reads and the miniature gives the cache
    # back: the window is back (16 to 49) under all 42.
    windows = under_hash_seeds(jump_and_back, range(12))
    assert all(jumped >= 200 for jumped, _ in windows.values()), windows
    assert all(back <= 100 for _, back in windows.values()), windows


def warm_up_lru_mode() -> list[float]:
    """The window and the sketch's agings after 6,000 reads of the recency trace above."""
    clock = FakeClock()
    tier = hot_tier(clock, 500)
    for key in recency_biased(6_000, reuse=0.65, mean_distance=1_200.0, seed=8):
        read(tier, clock, key)
    return [policy_of(tier).window_max, policy_of(tier).sketch.epoch]


def test_in_the_warm_up_lru_ahead_of_a_window_that_jumped_takes_the_whole_cache() -> None:
    # After the jump the guard weighs LRU against the window at half the cache, the evidence
    # LRU mode takes after the warm-up too. A jumped window waited for the warm-up's end
    # (10,000 reads) before LRU mode: at half the cache, below LRU all the while (5,054 to
    # 5,065 hits of 10,000 under salts 0 to 5; 5,146 with LRU mode from the 4,361st read).
    windows = under_hash_seeds(warm_up_lru_mode, range(12))
    assert all(window == 500 and not epoch for window, epoch in windows.values()), windows


def first_agings(keys: Iterable[str]) -> float:
    """The read after the 20,000th at which a 1,000-entry policy's sketch first aged (-1:
    never)."""
    clock = FakeClock()
    tier = hot_tier(clock, 1_000)
    sketch = policy_of(tier).sketch
    resets = -1
    for index, key in enumerate(keys):
        read(tier, clock, key)
        if index == 20_000:
            resets = sketch.resets
        elif resets >= 0 and sketch.resets > resets:
            return index
    return -1


def agings_after_a_shift() -> list[float]:
    """``first_agings`` of a Zipf law whose hot set changes at the 20,000th read, and of the
    same law without the change."""
    return [
        first_agings(shifting_zipf(50_000, 1.0, 40_000, seed=3)),
        first_agings(zipf_keys(50_000, 1.0, 40_000, seed=3)),
    ]


def test_a_sharp_drop_of_the_hit_ratio_ages_the_sketch() -> None:
    # A new hot set at the 20,000th read: the old hot keys' counts, aged only every
    # sample's worth of reads, kept the new ones out of the main area (shift halfway at 2,000
    # entries: 0.24 points below ARC). The drop of the hit ratio ages the sketch within two
    # periods (2,000 reads each); on main it aged after 28,511 reads under salt 1. The same law
    # without the change (the first 20,000 reads the same) does not age early.
    agings = under_hash_seeds(agings_after_a_shift, range(12))
    assert all(0 < shifted <= 24_000 for shifted, _ in agings.values()), agings
    assert all(unshifted > 24_000 or unshifted < 0 for _, unshifted in agings.values()), agings


def returning_blocks_after_a_shift() -> list[float]:
    """A 2,000-entry tier over a Zipf law whose hot set changes halfway (24,000 reads: the
    shift ages the sketch long before its sample of 40,000 reads is full), then returning
    blocks (20,000 reads, reuse 0.65 a mean 3,000 reads back): the read at which the sketch
    first aged, the read at which the window first held half the cache after it (-1: never),
    the policy's hits over the returning blocks and LRU's."""
    clock = FakeClock()
    tier = hot_tier(clock, 2_000)
    policy = policy_of(tier)
    keys = list(shifting_zipf(50_000, 1.0, 24_000, seed=3))
    blocks = [f"block:{key}" for key in recency_biased(20_000, 0.65, 3_000.0, seed=13)]
    aged = half = -1
    hits = 0
    for index, key in enumerate(keys + blocks):
        hit = read(tier, clock, key)
        hits += hit and index >= len(keys)
        if aged < 0 and policy.sketch.epoch:
            aged = index
        if aged >= 0 and half < 0 and policy.window_max >= 1_000:
            half = index
    lru = lru_hits(keys + blocks, 2_000) - lru_hits(keys, 2_000)
    return [aged, half, hits, lru]


def test_a_shifts_aging_does_not_end_the_warm_up_from_1024_entries() -> None:
    # The shift ages the sketch early (the 16,000th read); the warm-up (the guard at any
    # window) ended at the guard's next period, short of the jump LRU's lead asks for, and
    # the returning blocks found the guard off at a small window and the ghosts too slow.
    # Seen failing on main: {0: [15999, -1, 10334, 12122], 1: [15999, -1, 10318, 12122], ...}:
    # no jump, 10,314 to 10,373 hits of the blocks' 20,000 under salts 0 to 5, LRU 12,122.
    # From 1,024 entries only the sketch's own aging ends the warm-up: the window jumps to
    # half (the 16,818th to 21,152nd read), 11,890 to 12,122 hits. (Under salt 6 the sketch
    # does not age in the 44,000 reads, and both read LRU's hits.)
    outcomes = under_hash_seeds(returning_blocks_after_a_shift, range(6))
    assert all(0 <= aged < 24_000 for aged, _, _, _ in outcomes.values()), outcomes  # the shift's
    assert all(half >= 0 for _, half, _, _ in outcomes.values()), outcomes
    assert all(hits >= lru - 400 for _, _, hits, lru in outcomes.values()), outcomes


def zipf_after_recency_in_lru_mode() -> list[float]:
    """A 1,000-entry tier over recency (60,000 reads, reuse 0.75 a mean 2,000 reads back),
    then a Zipf law over new keys (60,000 reads): whether LRU mode held at the change, the
    reads after it until LRU mode ended (-1: never), the policy's hits over the Zipf law and
    LRU's."""
    clock = FakeClock()
    tier = hot_tier(clock, 1_000)
    policy = policy_of(tier)
    first = [f"r:{key}" for key in recency_biased(60_000, 0.75, 2_000.0, seed=21)]
    second = [f"z:{key}" for key in zipf_keys(40_000, 0.9, 60_000, seed=23)]
    left = -1
    hits = 0
    for key in first:
        read(tier, clock, key)
    lru_mode_at_change = policy.window_max == 1_000
    for index, key in enumerate(second):
        hits += read(tier, clock, key)
        if left < 0 and policy.window_max < 1_000:
            left = index
    lru = lru_hits(first + second, 1_000) - lru_hits(first, 1_000)
    return [lru_mode_at_change, left, hits, lru]


def test_a_change_inside_lru_mode_is_judged_by_a_miniature_without_the_last_phase() -> None:
    # The recency phase takes the cache to LRU mode; its guard's miniature W-TinyLFU then held
    # the recency phase's keys in its main area, and the Zipf law's keys, counted less, did not
    # get in: LRU mode held for 21,307 to 27,614 reads of the Zipf law under salts 0 to 5,
    # 27,095 to 27,707 hits of its 60,000 (LRU 24,606). The sharp drop at the change restarts
    # the miniature: LRU mode ends 7,980 to 13,542 reads in, 28,592 to 29,035 hits.
    outcomes = under_hash_seeds(zipf_after_recency_in_lru_mode, range(6))
    assert all(at_change for at_change, _, _, _ in outcomes.values()), outcomes
    assert all(0 <= left < 16_000 for _, left, _, _ in outcomes.values()), outcomes
    assert all(hits >= 28_200 for _, _, hits, _ in outcomes.values()), outcomes


#: The sizes under 100 entries the pinned trace runs at (``small_cache_decisions``).
PINNED_SIZES = (7, 20, 50, 99)


def small_cache_decisions() -> list[float]:
    """Per size of :data:`PINNED_SIZES`: the hits, the evictions and the final window of a
    tier on a seeded trace that moves the window both ways (a recency phase, a Zipf law, a
    loop just larger than the cache, a scan, recency again), with a write of a key not read
    every seventh step (it leaves a ghost behind that no miss took out first)."""
    results: list[float] = []
    for size in PINNED_SIZES:
        keys = [
            *recency_biased(4_000, reuse=0.8, mean_distance=size / 2, n_keys=5_000, seed=41),
            *zipf_keys(3 * size, 0.9, 4_000, seed=42, prefix="zipf:"),
            *loop_keys(size + size // 5 + 1, 3_000),
            *(f"scan:{index}" for index in range(1_000)),
            *recency_biased(4_000, reuse=0.7, mean_distance=2.0 * size, n_keys=5_000, seed=43),
        ]
        clock = FakeClock()
        tier = hot_tier(clock, size)
        writes = random.Random(44)
        hits = 0
        for step, key in enumerate(keys):
            hits += read(tier, clock, key)
            if step % 7 == 0:
                written = f"page:{writes.randrange(5_000)}"
                tier.set(written, Entry(value=written, loaded_at=clock()))
        policy = policy_of(tier)
        results += [hits, policy.evictions, policy.window_max]
    return results


def test_a_small_cache_decides_as_it_did_before_its_miss_path_was_made_cheaper() -> None:
    # Pinned: computed on main de14876 (before the ghosts left the OrderedDict, 2026-12-04)
    # under salts 0 and 1, compiled and pure alike. The cheaper miss path must not change one
    # admission, eviction or hit; a change of any rule of the policy moves these numbers, and
    # whoever makes it recomputes them and says why in the commit. Recomputed for the burst
    # rule (_comeback): at 7 entries the loop of 9 keys is a run of comebacks of 8 or more,
    # taken once for a burst (9207 -> 9204 hits, 9069 -> 9072 evictions); the rest the same.
    expected = {
        0: [9204, 9072, 7, 8971, 9286, 20, 8810, 9404, 50, 8680, 9477, 20],
        1: [9204, 9072, 7, 8971, 9286, 20, 8810, 9404, 50, 8672, 9484, 58],
    }
    assert under_hash_seeds(small_cache_decisions, expected) == expected


def window_at_the_first_eviction(keys: Iterable[str], max_entries: int) -> int:
    """The window of a tier right after the read that first made it evict."""
    clock = FakeClock()
    tier = hot_tier(clock, max_entries)
    policy = policy_of(tier)
    for key in keys:
        read(tier, clock, key)
        if policy.evictions:
            return policy.window_max
    raise AssertionError("the cache never evicted")


def test_a_recency_trace_is_in_lru_mode_from_the_fill_and_hits_what_lru_hits() -> None:
    # Reuse 0.8 at a mean distance of 300, 500 entries: the guard's evidence took 1,250 reads
    # after the fill to reach LRU mode, 31 hits below LRU by then (recency-biased at 500 in
    # the table: 34 below over 300,000 reads). The fill's trial, at a quarter of the scale,
    # has its verdict by the fill: the whole cache is the window from the first eviction on,
    # its keys in the order of their last reads (before that order, the main area's went
    # probation first, then protected: seeds 51, 52, 53 0, -1, -1; before the trial -37,
    # -34, -31).
    for seed in (51, 52, 53):
        keys = list(recency_biased(12_000, reuse=0.8, mean_distance=300.0, seed=seed))
        assert window_at_the_first_eviction(keys, 500) == 500
        assert replay([(None, key) for key in keys], 500).hits == lru_hits(keys, 500)


def lru_mode_at_the_fill_of_a_thousand() -> list[float]:
    """Per seed of a recency trace (reuse 0.75, mean distance 800) at 1,000 entries: the window
    right after the first eviction, and the hits less LRU's."""
    results: list[float] = []
    for seed in (231, 232, 233):
        keys = list(recency_biased(15_000, reuse=0.75, mean_distance=800.0, seed=seed))
        results.append(window_at_the_first_eviction(keys, 1_000))
        results.append(replay([(None, key) for key in keys], 1_000).hits - lru_hits(keys, 1_000))
    return results


def test_a_cache_of_a_thousand_runs_the_trial_on_every_key_and_is_lru_from_the_fill() -> None:
    # A cache of 1,000 entries samples one key in four for the guard, and a trial on that
    # sample held 62 keys: the trial ran only under 512 entries, and the guard's LRU mode came
    # thousands of reads after the fill (seeds 231, 232, 233 under salt 0: 68, 95 and 68 hits
    # below LRU by the 15,000th read). Reading every key, the trial holds 250, and LRU leads
    # it by more than five sigma at the fill. From there the cache is LRU, hit for hit: at
    # the switch its keys take the order of their last reads (the main area's went probation
    # first, then protected, and cost 1 to 3 hits).
    for salt, results in under_hash_seeds(lru_mode_at_the_fill_of_a_thousand, range(3)).items():
        windows, below_lru = results[0::2], results[1::2]
        assert windows == [1_000, 1_000, 1_000], salt
        assert below_lru == [0, 0, 0], (salt, below_lru)


def lru_mode_at_the_fill_of_five_hundred() -> list[float]:
    """Per seed of a recency trace (reuse 0.75, mean distance 800) at 500 entries: the window
    right after the first eviction, and the hits less LRU's."""
    results: list[float] = []
    for seed in (251, 252, 253):
        keys = list(recency_biased(15_000, reuse=0.75, mean_distance=800.0, seed=seed))
        results.append(window_at_the_first_eviction(keys, 500))
        results.append(replay([(None, key) for key in keys], 500).hits - lru_hits(keys, 500))
    return results


def test_a_recency_trace_whose_reuse_passes_the_trials_scale_is_lru_from_the_fill() -> None:
    # Reuse distances of a mean of 800 reads mostly pass a quarter of 500 entries: LRU led the
    # trial by 0.5 to 4.5 sigma on such traces, under the five it asked for, and the guard's
    # LRU mode came thousands of reads after the fill (seeds 251, 252, 253: 89, 78 and 38 hits
    # below LRU by the 15,000th read). With the cache's own window in the trial, and LRU's
    # lead of one sigma enough, the cache is LRU from the fill, hit for hit (8 of seeds 251
    # to 260; 254 and 256 are main's, 33 and 24 below).
    for salt, results in under_hash_seeds(lru_mode_at_the_fill_of_five_hundred, range(3)).items():
        windows, below_lru = results[0::2], results[1::2]
        assert windows == [500, 500, 500], salt
        assert below_lru == [0, 0, 0], (salt, below_lru)


def blocks_read_twice(n_requests: int, seed: int) -> list[str]:
    """A new block read twice, one read of a Zipf law's key between, and again."""
    frequent = zipf_keys(10_000, 1.0, n_requests, seed=seed)
    keys: list[str] = []
    while len(keys) < n_requests:
        block = f"block:{len(keys)}"
        keys += [block, next(frequent), block, next(frequent)]
    return keys[:n_requests]


def test_blocks_read_twice_in_a_row_do_not_take_the_cache_to_lru_mode_at_the_fill() -> None:
    # A block read again two reads later hits in the cache's window of 5 entries; in the
    # trial's W-TinyLFU at a quarter of the scale, whose window was a quarter of it (one
    # entry), it went to the admission contest and lost, and LRU led the trial by 8.6 and
    # 8.7 sigma (seeds 271, 272): LRU mode from the fill, 73 and 87 hits fewer over 20,000
    # reads than with the small window kept. With the cache's window the trial's LRU leads
    # by 0.3 and -0.5 sigma.
    for seed in (271, 272):
        assert window_at_the_first_eviction(blocks_read_twice(20_000, seed), 500) == 5


def window_after(keys: Iterable[str], max_entries: int) -> int:
    clock = FakeClock()
    tier = hot_tier(clock, max_entries)
    for key in keys:
        read(tier, clock, key)
    return policy_of(tier).window_max


def warm_up_verdicts() -> list[float]:
    """Per seed of the table's recency-biased trace, 25,000 reads: the window at 1,000
    entries, then at 500."""
    results: list[float] = []
    for seed in (61, 62, 63):
        keys = list(recency_biased(25_000, seed=seed))
        results += [window_after(keys, 1_000), window_after(keys, 500)]
    return results


def test_lru_mode_from_the_fill_is_kept_after_the_warm_up_only_if_lru_still_leads() -> None:
    # The trial's verdict is taken at a quarter of the scale: on the recency-biased trace of
    # the table LRU leads there at 1,000 entries too, but the ghosts' split beats LRU later
    # (0.04 points by the end). At the warm-up's end (the sketch's first aging, the 20,000th
    # read) the miniature at half the cache is not behind LRU, and the window goes to half
    # (kept at the whole cache: 1,000 under each seed); at 500 entries LRU mode stays.
    # The verdict at 1,000 entries is the salt's draw at the margin: run under the process's
    # own salt this failed a full-suite run (salt 55: seed 63 stays at 1,000), so it runs
    # under fixed salts.
    for salt, results in under_hash_seeds(warm_up_verdicts, range(3)).items():
        at_a_thousand, at_five_hundred = results[0::2], results[1::2]
        assert all(window < 1_000 for window in at_a_thousand), (salt, at_a_thousand)
        assert at_five_hundred == [500, 500, 500], (salt, at_five_hundred)


def confirmed_on_every_key() -> list[float]:
    """The window of 1,000 entries after 25,000 reads (the warm-up ends at the 20,000th) of
    recency traces whose ghosts' split beats LRU later: reuse 0.6 / mean 200 (seeds 241,
    242, 244)."""
    return [
        window_after(recency_biased(25_000, 0.6, mean_distance=200.0, seed=seed), 1_000)
        for seed in (241, 242, 244)
    ]


def test_lru_mode_from_the_fill_is_left_where_a_window_of_three_quarters_keeps_up() -> None:
    # The trial's verdict is LRU at the fill; at the warm-up's end LRU mode stays only if LRU
    # also leads a miniature W-TinyLFU at three quarters of the cache, and on these traces it
    # does not: the window goes to three quarters (before any confirmation, half the cache
    # alone: LRU mode stayed; the ghosts' split sits above 700 by the end). That miniature
    # read the guard's sample, a quarter of the keys, and its verdict was the salt's draw:
    # under salts 1 and 4 LRU led it on all three traces and LRU mode stayed (1,000), 10 of 18
    # at 700 or more. Reading every key, as the trial does, every one of the 18 leaves LRU
    # mode and 14 are at 700 or more.
    results = list(under_hash_seeds(confirmed_on_every_key, range(6)).values())
    assert all(window < 1_000 for windows in results for window in windows), results
    assert sum(window >= 700 for windows in results for window in windows) >= 14, results


def test_a_zipf_law_keeps_the_small_window_at_the_fill() -> None:
    # LRU's lead at the trial's scale must be large for LRU mode: on a Zipf law the two differ
    # little before the sketch has learnt the frequent keys, and LRU mode there cost every
    # Zipf row until the miniature won (0.1 to 0.7 points).
    for seed, alpha in ((54, 0.6), (55, 0.8), (56, 1.0)):
        keys = list(zipf_keys(100_000, alpha, 20_000, seed=seed))
        assert window_at_the_first_eviction(keys, 1_000) == 10
