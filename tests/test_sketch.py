"""The frequency sketch: error bound, aging, saturation, doorkeeper, bounded memory."""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_cache import sketch as sketch_module
from tiered_cache.sketch import (
    MAX_CEILING,
    MIN_CEILING,
    Counters,
    CounterTable,
    FrequencySketch,
    counter_ceiling,
)
from tiered_cache.workloads import zipf_keys


def test_sketch_never_undercounts_and_overcounts_within_the_count_min_bound() -> None:
    capacity = 1_000
    sketch = FrequencySketch(capacity, sample_factor=1_000)  # no aging during the stream
    stream = list(zipf_keys(20_000, 1.0, 5_000, seed=1))
    for key in stream:
        sketch.increment(key, 1)
    exact = collections.Counter(stream)
    # Count-min: with probability 1 - e^-depth an estimate exceeds the true count by at most
    # e * N / width. Counters saturate, so compare against min(true, ceiling).
    bound = math.e * len(stream) / sketch.width
    ceiling = sketch.max_count
    over = []
    for key, count in exact.items():
        estimate = sketch.frequency(key)
        assert estimate >= min(count, ceiling)
        over.append(estimate - min(count, ceiling))
    beyond = sum(1 for excess in over if excess > bound)
    assert beyond <= len(over) * math.exp(-sketch.depth)
    # Unseen keys are estimated near zero.
    unseen = [sketch.frequency(f"never:{index}") for index in range(1_000)]
    assert sum(unseen) / len(unseen) < 0.5


def test_the_heavy_keys_rank_above_the_light_ones() -> None:
    sketch = FrequencySketch(100, sample_factor=1_000)
    stream = list(zipf_keys(10_000, 1.0, 3_000, seed=2))
    for key in stream:
        sketch.increment(key, 1)
    top = [key for key, _ in collections.Counter(stream).most_common(10)]
    assert all(sketch.frequency(key) >= 10 for key in top)


class HashedAs(str):
    """A key whose hash the test chooses."""

    hashed: int

    def __new__(cls, text: str, hashed: int) -> HashedAs:
        key = super().__new__(cls, text)
        key.hashed = hashed
        return key

    def __hash__(self) -> int:
        return self.hashed


def test_a_cold_key_does_not_share_all_four_counters_with_a_hot_one() -> None:
    # These two hashes agree on h1 and h2 modulo the width (64): with double hashing
    # (h1 + i * h2) the cold key would read exactly as hot as the hot one.
    sketch = FrequencySketch(16, width=64, sample_factor=1_000)
    hot = HashedAs("hot", 5 | 7 << 32)
    cold = HashedAs("cold", 5 | 7 << 32 | 1 << 20 | 1 << 52)
    for _ in range(15):
        sketch.increment(hot, 1)
    assert sketch.frequency(hot) == 15
    assert sketch.frequency(cold) == 0


def test_every_row_spreads_over_a_table_wider_than_two_to_the_sixteen() -> None:
    width = 1 << 17
    sketch = FrequencySketch(1_000, width=width, sample_factor=10_000)  # no aging here
    n_keys = 200_000
    for index in range(n_keys):
        sketch.increment(f"k{index}", 1)
    counter = sketch.counter
    used = [sum(1 for i in range(row * width, (row + 1) * width) if counter(i)) for row in range(4)]
    expected = width * (1 - math.exp(-n_keys / width))  # balls into bins
    assert all(count > 0.97 * expected for count in used), (used, expected)


def test_aging_halves_every_counter_after_the_sample() -> None:
    sketch = FrequencySketch(10, sample_factor=10)  # ages after 100 additions
    for _ in range(12):
        sketch.increment("hot", 1)
    assert sketch.frequency("hot") == 12
    for index in range(100 - 12 - 1):
        sketch.increment(f"cold:{index}", 1)
    assert sketch.resets == 0
    sketch.increment("last", 1)
    assert sketch.resets == 1
    assert sketch.frequency("hot") == 6
    assert sketch.size < sketch.sample_size


def test_aging_halves_the_sample_count_so_the_next_aging_comes_half_a_sample_later() -> None:
    # Every addition counts 2, so every counter stays even and halving loses nothing: the
    # sample count after an aging is exactly half the sample.
    sketch = FrequencySketch(10, sample_factor=10)  # ages after 100 additions
    keys = [f"key:{index}" for index in range(200)]
    for key in keys[:49]:
        sketch.increment(key, 2)
    assert (sketch.resets, sketch.size) == (0, 98)
    sketch.increment(keys[49], 2)
    assert (sketch.resets, sketch.size) == (1, 50)
    for key in keys[50:74]:
        sketch.increment(key, 2)
    assert (sketch.resets, sketch.size) == (1, 98)
    sketch.increment(keys[74], 2)
    # Halved counters may be odd now: their lost half units come off the count as well.
    assert sketch.resets == 2
    assert sketch.size <= 50


def test_counters_saturate_at_fifteen_with_tinylfus_sample() -> None:
    sketch = FrequencySketch(10, sample_factor=10)  # W = 10 C: TinyLFU's 4-bit counters
    assert sketch.max_count == MIN_CEILING == 15
    for _ in range(40):
        sketch.increment("key", 1)
    assert sketch.frequency("key") == 15
    assert sketch.increment("key", 4) == 15


@pytest.mark.parametrize(
    ("sample_size", "capacity", "ceiling"),
    [(100, 10, 15), (200, 10, 31), (10_000, 1_000, 15), (10_000, 100, 127), (10_000, 20, 255)],
)
def test_the_ceiling_follows_the_reads_a_slot_needs_per_sample(
    sample_size: int, capacity: int, ceiling: int
) -> None:
    assert counter_ceiling(sample_size, capacity) == ceiling
    sketch = FrequencySketch(capacity, sample_factor=1, min_sample=sample_size)
    assert sketch.max_count == ceiling


def test_a_small_cache_with_a_long_sample_still_ranks_its_hottest_keys() -> None:
    # 20 entries, aged every 10,000 reads: keys read 100 and 300 times per sample both earn a
    # slot; with 4-bit counters both would read 15 and the sketch could not rank them.
    sketch = FrequencySketch(20, sample_factor=1, min_sample=10_000)
    for _ in range(100):
        sketch.increment("warm", 1)
    for _ in range(300):
        sketch.increment("hot", 1)
    assert sketch.frequency("warm") == 100
    assert sketch.frequency("hot") == MAX_CEILING
    sketch.reset()
    assert (sketch.frequency("warm"), sketch.frequency("hot")) == (50, MAX_CEILING // 2)


def test_the_ceiling_is_one_byte_at_most() -> None:
    with pytest.raises(ValueError, match="max_count"):
        FrequencySketch(10, max_count=256)


def test_weighted_increment_counts_like_repeated_ones() -> None:
    sketch = FrequencySketch(10, sample_factor=1_000)
    assert sketch.increment("key", 4) == 4
    assert sketch.size == 4


def test_doorkeeper_absorbs_first_sightings() -> None:
    sketch = FrequencySketch(100, doorkeeper=True, sample_factor=1_000)
    assert sketch.increment("once", 1) == 1
    assert sketch.frequency("once") == 1
    for _ in range(4):
        sketch.increment("often", 1)
    assert sketch.frequency("often") == 4
    sketch.reset()
    assert sketch.frequency("once") == 0


def test_doorkeeper_takes_one_of_a_weighted_first_sighting() -> None:
    sketch = FrequencySketch(100, doorkeeper=True, sample_factor=1_000)
    assert sketch.increment("key", 4) == 4  # one in the doorkeeper, three in the counters
    assert sketch.frequency("key") == 4
    assert sketch.size == 4
    assert sketch.increment("key", 3) == 7  # seen before: all three in the counters
    assert (sketch.frequency("key"), sketch.size) == (7, 7)
    assert sketch.frequency("other") == 0


def test_doorkeeper_is_forgotten_on_clear() -> None:
    sketch = FrequencySketch(100, doorkeeper=True, sample_factor=1_000)
    sketch.increment("once", 1)
    sketch.increment("twice", 2)
    sketch.clear()
    assert (sketch.frequency("once"), sketch.frequency("twice"), sketch.size) == (0, 0, 0)
    assert sketch.increment("once", 1) == 1  # a first sighting again, not a second


def test_memory_is_bounded_with_a_million_distinct_keys() -> None:
    sketch = FrequencySketch(1_000)
    size = sketch.nbytes
    for index in range(1_000_000):
        sketch.increment(f"k{index}", 1)
    assert sketch.nbytes == size <= 4 * sketch.width
    # Aged every 10,000 additions at most, and halving leaves at most half a sample (less by
    # the odd counters' lost half units): every 5,000 additions at least.
    assert 100 <= sketch.resets <= 1 + (1_000_000 - 10_000) // 5_000, sketch.resets


@given(st.integers(min_value=1, max_value=100_000))
def test_width_is_a_power_of_two_from_the_capacity(capacity: int) -> None:
    sketch = FrequencySketch(capacity)
    assert sketch.width & (sketch.width - 1) == 0
    assert sketch.width >= 4 * capacity


def test_width_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        FrequencySketch(10, width=100)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=300))
def test_sketch_estimate_is_at_least_the_true_count(stream: list[int]) -> None:
    sketch = FrequencySketch(64, sample_factor=1_000)
    for item in stream:
        sketch.increment(str(item), 1)
    for item, count in collections.Counter(stream).items():
        assert sketch.frequency(str(item)) >= min(count, sketch.max_count)


@pytest.mark.parametrize(("max_count", "bits"), [(1, 1), (15, 4), (31, 5), (100, 7), (255, 8)])
def test_each_counter_takes_the_bits_its_ceiling_needs(max_count: int, bits: int) -> None:
    # The default sketch of a large cache saturates at 31: a byte per counter wasted three
    # bits of every eight (a 1e6-entry cache's 64 MiB table is 40 MiB packed).
    sketch = FrequencySketch(1_000, max_count=max_count, sample_factor=1_000)
    assert sketch.nbytes == 4 * sketch.width * bits // 8 + 1  # one spare byte
    keys = [f"k{index}" for index in range(3_000)]
    for index, key in enumerate(keys):
        sketch.increment(key, index % (max_count + 3))
    # Neighbouring counters share bytes: none spills into another.
    assert all(
        sketch.frequency(key) >= min(index % (max_count + 3), max_count)
        for index, key in enumerate(keys)
    )
    assert max(sketch.counter(i) for i in range(4 * sketch.width)) == max_count


def test_counters_of_the_default_sample_are_five_bits() -> None:
    sketch = FrequencySketch(1_000, sample_factor=20)  # the policy's default sample factor
    assert (sketch.max_count, sketch.nbytes) == (31, 4 * sketch.width * 5 // 8 + 1)


def _reference_rows(hashed: int, width: int) -> list[int]:
    """The counters a key hashed to ``hashed`` takes, as the sketch has always chosen them:
    bits 0, 16, 32 and 48 (wrapping around) of the unsigned 64-bit hash, one slice per row."""
    h = hashed & ((1 << 64) - 1)
    mask = width - 1
    slices = (h, h >> 16, h >> 32, (h >> 48) | (h << 16))
    return [row * width + (part & mask) for row, part in enumerate(slices)]


@settings(max_examples=300, deadline=None)
@given(
    hashed=st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    log_width=st.integers(min_value=6, max_value=20),
)
def test_a_key_takes_the_counters_its_hash_slices_name(hashed: int, log_width: int) -> None:
    # The rows are indexed from the hash's two 32-bit halves (machine words to the compiled
    # core): the same counters as from the 64-bit hash, so the policy decides as before.
    width = 1 << log_width
    sketch = FrequencySketch(16, width=width, sample_factor=1_000)
    key = HashedAs("key", hashed)
    assert sketch.increment(key, 1) == 1
    expected = _reference_rows(hash(key), width)  # hash() never returns -1 (it gives -2)
    assert [sketch.counter(index) for index in expected] == [1, 1, 1, 1]
    assert sum(1 for byte in sketch._table if byte) <= 8  # nothing else was touched
    assert sketch.frequency(key) == 1


def test_a_row_wider_than_two_to_the_thirty_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        FrequencySketch(16, width=1 << 33)


# -- the C counters (tiered_cache/_sketch.c) against their reference, sketch.Counters

needs_c_counters = pytest.mark.skipif(
    sketch_module.COUNTERS is Counters,
    reason="the C counters are not in use (not built, stale, or TIERED_CORE_PURE=1): the "
    "sketch counts with sketch.Counters, which the other tests cover",
)

#: Hashes drawn whole (any 64-bit value, every row's slice) or from a few, so keys share
#: counters and saturate them.
_HASHES = st.one_of(
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.sampled_from([0, 1, -2, 1 << 16, (1 << 32) + 5, -(1 << 63), (1 << 63) - 1]),
)
_SKETCH_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("increment"), _HASHES, st.integers(min_value=0, max_value=300)),
        st.tuples(st.just("frequency"), _HASHES, st.just(0)),
        st.tuples(st.sampled_from(["reset", "clear"]), st.just(0), st.just(0)),
    ),
    max_size=150,
)


@needs_c_counters
@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=64),
    log_width=st.one_of(st.none(), st.integers(min_value=0, max_value=18)),
    max_count=st.one_of(st.none(), st.integers(min_value=1, max_value=MAX_CEILING)),
    doorkeeper=st.booleans(),
    steps=_SKETCH_STEPS,
)
def test_the_c_counters_count_as_their_reference(
    capacity: int,
    log_width: int | None,
    max_count: int | None,
    doorkeeper: bool,
    steps: list[tuple[str, int, int]],
) -> None:
    # A sketch on the C counters and one on sketch.Counters take the same steps (short
    # samples: aging runs too); every answer, the sample's count and the tables themselves
    # must stay identical.
    made = [
        FrequencySketch(
            capacity,
            width=None if log_width is None else 1 << log_width,
            sample_factor=2,
            doorkeeper=doorkeeper,
            max_count=max_count,
            counters=counters,
        )
        for counters in (sketch_module.COUNTERS, Counters)
    ]
    for step, hashed, count in steps:
        key = HashedAs(f"k{hashed}", hashed)
        answers = []
        for sketch in made:
            if step == "increment":
                answers.append(sketch.increment(key, count))
            elif step == "frequency":
                answers.append(sketch.frequency(key))
            elif step == "reset":
                answers.append(sketch.reset())
            else:
                answers.append(sketch.clear())
        assert answers[0] == answers[1], (step, hashed, count)
    c_side, reference = made
    assert (c_side.size, c_side.resets, c_side.epoch) == (
        reference.size,
        reference.resets,
        reference.epoch,
    )
    assert c_side._table == reference._table


@needs_c_counters
@pytest.mark.parametrize("counters", [sketch_module.COUNTERS, Counters])
def test_counters_refuse_what_they_cannot_count(
    counters: Callable[[bytearray, int, int, int], CounterTable],
) -> None:
    table = bytearray(4 * 64 * 5 // 8 + 1)
    with pytest.raises(ValueError, match="power of two"):
        counters(table, 48, 5, 31)
    with pytest.raises(ValueError, match="bits"):
        counters(table, 64, 9, 31)
    with pytest.raises(ValueError, match="ceiling"):
        counters(table, 64, 5, 32)
    with pytest.raises(ValueError, match="too small"):
        counters(table[:-1], 64, 5, 31)
    made = counters(table, 64, 5, 31)
    with pytest.raises(ValueError, match="negative"):
        made.add("key", -1)
    assert (made.add("key", 10**30), made.add("key", 1), made.frequency("key")) == (31, -1, 31)
    assert table.count(0) < len(table)  # the counters write the table they were given
