"""The decaying top-k list: precision, rates, fading, randomized admission."""

from __future__ import annotations

import collections
import random

import pytest

from tiered_cache.sketch import FrequencySketch
from tiered_cache.testing import FakeClock
from tiered_cache.topk import TopK
from tiered_cache.workloads import zipf_keys


@pytest.mark.parametrize("prefilter", [False, True])
def test_top_k_precision_against_exact_counts(prefilter: bool) -> None:
    clock = FakeClock(0.0)
    # Space-Saving alone needs room for the tail of the top 50 (20 per hot key); with the
    # sketch as a pre-filter, as the admission policy uses it, 4 per hot key are enough.
    top = TopK(50, capacity=200 if prefilter else 1_000, half_life=1e9, clock=clock)
    sketch = FrequencySketch(1_000)
    stream = list(zipf_keys(100_000, 1.0, 100_000, seed=3))
    for key in stream:
        if not prefilter or sketch.increment(key, 1) >= 3:
            top.add(key)
        clock.advance(0.001)
    exact = {key for key, _ in collections.Counter(stream).most_common(50)}
    found = {key for key, _ in top.top(50)}
    assert len(found & exact) / 50 >= 0.9
    assert len(top) <= top.capacity


def test_top_k_rates_match_the_request_rate() -> None:
    clock = FakeClock(0.0)
    top = TopK(10, half_life=30.0, clock=clock)
    # 100 reads/s for 60 s: "a" takes half of them, "b" a quarter.
    for tick in range(6_000):
        top.add("a" if tick % 2 == 0 else ("b" if tick % 4 == 1 else f"x{tick}"))
        clock.advance(0.01)
    rates = dict(top.top(2))
    assert list(rates) == ["a", "b"]
    assert rates["a"] == pytest.approx(50.0, rel=0.1)
    assert rates["b"] == pytest.approx(25.0, rel=0.1)


def test_yesterdays_viral_key_fades() -> None:
    clock = FakeClock(0.0)
    top = TopK(2, capacity=8, half_life=10.0, clock=clock)
    for _ in range(1_000):
        top.add("viral")
        clock.advance(0.01)
    assert top.top(1)[0][0] == "viral"
    for _ in range(100_000):
        top.add("steady")
        top.add(f"noise:{int(clock())}")
        clock.advance(0.01)  # 1,000 s later: "viral" is 100 half-lives old
    assert top.top(1)[0][0] == "steady"
    assert "viral" not in dict(top.top(2))


def test_hot_is_the_top_k() -> None:
    clock = FakeClock(0.0)
    top = TopK(2, capacity=10, clock=clock)
    for key, times in (("a", 30), ("b", 20), ("c", 10), ("d", 5)):
        for _ in range(times):
            top.add(key)
    assert top.is_hot("a")
    assert top.is_hot("b")
    assert not top.is_hot("c")
    assert not top.is_hot("never")
    top.clear()
    assert top.top(5) == []


def test_a_long_tail_of_one_off_keys_does_not_churn_a_full_list_out_of_its_hot_keys() -> None:
    # 90% of the reads are keys never seen again. Plain Space-Saving gives each one the
    # lightest key's place, so the ten hot keys (1% of the reads each, below the N / capacity
    # that Space-Saving guarantees) keep being pushed out; with randomized admission (RAP) a
    # one-off key rarely gets in and the hot keys stay on top.
    clock = FakeClock(0.0)
    top = TopK(10, capacity=40, half_life=1e9, clock=clock, rng=random.Random(1))
    hot = [f"hot:{index}" for index in range(10)]
    inserted = 0
    for step in range(20_000):
        key = hot[step % 100] if step % 100 < 10 else f"once:{step}"
        absent = key not in top
        top.add(key)
        inserted += absent and key in top
        clock.advance(0.001)
    assert sorted(key for key, _ in top.top(10)) == sorted(hot)
    # Admitted with probability weight / (lightest + weight): about one in seventeen here,
    # where plain Space-Saving admits every one of the 18,000.
    assert inserted < 0.1 * 18_000, inserted
