"""Read capacity units, computed from item sizes: the rules, the source's report, and the units
a chain's ``stats()`` says the cache saved."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tiered_cache_dynamodb import DynamoDBSource
from tiered_cache_dynamodb.capacity import item_size, read_units

from tiered_cache import TieredCache
from tiered_cache.memory import MemoryTier

MakeSource = Callable[..., DynamoDBSource]


def test_item_size_counts_names_and_values_by_dynamodb_rules() -> None:
    assert item_size({"id": {"S": "42"}}) == 2 + 2
    assert item_size({"text": {"S": "é"}}) == 4 + 2  # UTF-8 bytes, not characters
    # Numbers: one byte per two significant digits (rounded up), plus one; zeros trimmed.
    assert item_size({"n": {"N": "12345"}}) == 1 + 3 + 1
    assert item_size({"n": {"N": "1200.00"}}) == 1 + 1 + 1
    assert item_size({"n": {"N": "-7"}}) == 1 + 1 + 1 + 1
    assert item_size({"b": {"B": b"\x00\x01\x02"}, "f": {"BOOL": True}, "z": {"NULL": True}}) == (
        1 + 3 + 1 + 1 + 1 + 1
    )
    assert item_size({"s": {"SS": ["ab", "c"]}}) == 1 + 3
    # Lists and maps: three bytes, one per element, and the elements (map keys included).
    assert item_size({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}) == 1 + 3 + (1 + 2) + (1 + 2)
    assert item_size({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + (1 + 1 + 1)


def test_read_units_round_each_item_up_to_4_kb_and_halve_eventual_reads() -> None:
    assert read_units(0, consistent=False) == 0.5  # a read that found nothing: the minimum
    assert read_units(1, consistent=False) == 0.5
    assert read_units(4096, consistent=False) == 0.5
    assert read_units(4097, consistent=False) == 1.0
    assert read_units(4097, consistent=True) == 2.0
    assert read_units(3 * 4096 + 1, consistent=True) == 4.0


def test_the_source_reports_the_units_its_reads_cost(
    make_table: Callable[..., str], make_source: MakeSource
) -> None:
    table = make_table(key="id")
    source = make_source(table=table, key="id")
    big = {"id": "big", "text": "x" * 5000}  # 2 + 2 + 4 + 5000 bytes: 2 units, halved
    small = {"id": "small", "text": "hi"}
    source.store("big", big)
    source.store("small", small)
    assert source.load("big") == big
    assert source.report() == {
        "reads": 1,
        "read_units": 1.0,
        "read_units_per_read": 1.0,
        "watches_on_another_layout": 0,
    }
    assert source.load_many(["small", "absent"]) == {"small": small}
    report = source.report()
    assert report["reads"] == 3
    assert report["read_units"] == 1.0 + 0.5 + 0.5


def test_strongly_consistent_reads_cost_twice_as_much(
    make_table: Callable[..., str], make_source: MakeSource
) -> None:
    table = make_table(key="id")
    source = make_source(table=table, key="id", consistent_read=True)
    source.store("a", {"id": "a"})
    source.load("a")
    source.load("absent")
    assert source.report()["read_units"] == 2.0


def test_stats_count_the_units_the_cache_saved(
    make_table: Callable[..., str], make_source: MakeSource
) -> None:
    table = make_table(key="id")
    source = make_source(table=table, key="id")
    source.store("big", {"id": "big", "text": "x" * 5000})
    with TieredCache([MemoryTier()], source) as cache:
        for _ in range(5):
            cache.get("big")
        stats = cache.stats()
    assert stats["source_reads_saved"] == 4
    # Each of the four reads the memory tier answered would have cost the 1.0 unit the load did.
    assert stats["source"]["read_units_saved"] == pytest.approx(4.0)
    assert stats["source"]["name"] == f"dynamodb:{table}"
