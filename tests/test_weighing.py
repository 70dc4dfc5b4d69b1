"""The memory tier's ``max_bytes`` bounds the memory values really hold: objects, deep nesting,
shared parts and cycles are weighed by walking them (tiered_cache.weighing)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tiered_cache import TieredCache
from tiered_cache.weighing import UNWEIGHABLE, deep_size

MIB = 1024 * 1024
#: What the tier may hold beyond max_bytes: its own bookkeeping, the last value handed back.
OVERHEAD = 2 * MIB


class Document:
    """An object holding 1 MB, as a loader returning model instances makes."""

    def __init__(self, n: int) -> None:
        self.body = "x" * 1_000_000
        self.n = n


class Slotted:
    __slots__ = ("__body", "n")

    def __init__(self, n: int) -> None:
        self.__body = bytes(1_000_000)
        self.n = n


@dataclass
class Wrapper:
    inner: Any


def nested(n: int, depth: int = 12) -> Any:
    """1 MB under ``depth`` levels of dicts, lists and objects."""
    value: Any = {"n": n, "blob": "y" * 1_000_000}
    for level in range(depth):
        value = [value] if level % 3 == 0 else {"a": value} if level % 3 == 1 else Wrapper(value)
    return value


@pytest.mark.parametrize("make", [Document, Slotted, nested], ids=["object", "slots", "nested"])
def test_max_bytes_bounds_the_memory_values_hold(make: Callable[[int], Any]) -> None:
    """40 values of 1 MB each through a 10 MiB memory tier: traced memory stays near 10 MiB."""
    cache = TieredCache.from_config(
        tiers=[{"kind": "memory", "admission": "always", "max_bytes": "10MiB"}]
    )
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(40):
            assert cache.get(f"k{n}", lambda n=n: make(n)) is not None
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= 10 * MIB + OVERHEAD, f"{held / MIB:.1f} MiB held"
    # and the tier kept what fits, not nothing
    assert sum(cache.get(f"k{n}", lambda: None) is not None for n in range(40)) >= 1
    cache.close()


def test_an_object_weighs_what_it_holds() -> None:
    assert deep_size(Document(1)) > 1_000_000
    assert deep_size(Slotted(1)) > 1_000_000
    assert deep_size(nested(1, depth=50)) > 1_000_000


def test_shared_parts_count_once_and_cycles_end() -> None:
    blob = "z" * 1_000_000
    assert deep_size([blob, blob, blob]) < 1_100_000
    loop: list[Any] = []
    loop.append(loop)
    assert deep_size(loop) < 1_000


def test_deep_nesting_needs_no_recursion() -> None:
    value: Any = "leaf"
    for _ in range(100_000):
        value = [value]
    assert deep_size(value) > 100_000 * 56


def test_classes_and_functions_are_not_the_values() -> None:
    small = deep_size(Wrapper(1))
    assert deep_size(Wrapper(Document)) < small + 100
    assert deep_size(Wrapper(deep_size)) < small + 200


def test_a_value_too_large_to_walk_is_not_kept() -> None:
    assert deep_size(list(range(2_000)), max_objects=1_000) == UNWEIGHABLE
    assert deep_size(list(range(500)), max_objects=1_000) < UNWEIGHABLE


class _SizeRaises:
    def __sizeof__(self) -> int:
        raise RuntimeError("no size")


class _SizeNegative:
    def __sizeof__(self) -> int:
        return -1  # sys.getsizeof raises ValueError


class _ClassRaises:
    """As a lazy object whose set-up fails: its ``__class__`` (which isinstance reads) raises."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("set-up failed")


@pytest.mark.parametrize("make", [_SizeRaises, _SizeNegative, _ClassRaises])
def test_a_value_whose_weighing_raises_is_unweighable(make: Callable[[], Any]) -> None:
    assert deep_size(make()) == UNWEIGHABLE
    assert deep_size({"inside": [make()]}) == UNWEIGHABLE


@pytest.mark.parametrize("make", [_SizeRaises, _SizeNegative])
def test_a_value_memory_cannot_weigh_is_not_kept_and_no_error_of_the_tier(
    make: Callable[[], Any],
) -> None:
    """With ``max_bytes``, a value whose ``__sizeof__`` raised made the memory tier's fill
    raise: counted and logged as the tier failing (a breaker on it opens after enough such
    values), after the source had taken the value. It weighs more than any bound: not kept,
    as a value too large to walk."""
    cache = TieredCache.from_config(tiers=[{"kind": "memory", "max_bytes": "10MiB"}])
    value = make()
    assert cache.get("k", lambda: value) is value
    cache.set("k", value)
    tier = cache.stats()["tiers"][0]
    assert (tier["errors"], tier["entries"]) == (0, 0)
    cache.close()
