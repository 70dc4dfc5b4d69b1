"""A set or a mapping is refused as a key template's value: its text lists its items in an
order its value does not fix (a set of str: the process's hash seed), so equal values made
different keys, and an invalidation from another process missed the entry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.memory import MemoryTier

TAGS = {"alpha", "beta", "gamma", "delta", "epsilon"}

_KEY_IN_A_CHILD = """
from tiered_cache import TieredCache
from tiered_cache.memory import MemoryTier
cache = TieredCache([MemoryTier()], namespace="n")
@cache.cached(key="posts:{tags}")
def posts(tags):
    return []
try:
    print(posts.key_for(tags={"alpha", "beta", "gamma", "delta", "epsilon"}))
except TypeError as refused:
    print("refused", "tags" in str(refused))
"""


def test_processes_of_other_hash_seeds_agree_on_what_a_set_makes() -> None:
    answers = set()
    for seed in range(6):
        environment = {**os.environ, "PYTHONHASHSEED": str(seed)}
        run = subprocess.run(
            [sys.executable, "-c", _KEY_IN_A_CHILD],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )
        answers.add(run.stdout.strip())
    # On main: six seeds, up to six keys for one set (an invalidation from another process
    # missed the entry its reader had filled).
    assert answers == {"refused True"}


@pytest.mark.parametrize(
    "value",
    [
        TAGS,
        frozenset(TAGS),
        {"a": 1, "b": 2},
        OrderedDict(a=1),
        MappingProxyType({"a": 1}),
        ("x", TAGS),  # inside a tuple
        ["x", ["y", {"a": 1}]],  # inside a list inside a list
    ],
    ids=["set", "frozenset", "dict", "ordered", "proxy", "in-tuple", "in-list"],
)
def test_a_set_or_a_mapping_is_refused_naming_the_parameter(value: Any) -> None:
    cache = TieredCache([MemoryTier()], namespace="n")
    loads: list[object] = []

    @cache.cached(key="posts:{tags}:{page}")
    def posts(tags: object, page: int) -> list[str]:
        loads.append(tags)
        return []

    for call in (
        lambda: posts(value, 1),
        lambda: posts(tags=value, page=1),
        lambda: posts.key_for(tags=value, page=1),
        lambda: posts.invalidate(tags=value, page=1),
    ):
        with pytest.raises(TypeError, match=r"tags.*sorted"):
            call()
    assert loads == []  # refused before the function ran
    cache.close()


def test_ordered_values_are_still_taken_and_a_list_that_holds_itself_too() -> None:
    cache = TieredCache([MemoryTier()], namespace="n")

    @cache.cached(key="posts:{tags}")
    def posts(tags: object) -> str:
        return str(tags)

    looped: list[object] = ["a"]
    looped.append(looped)
    assert posts.key_for(tags=tuple(sorted(TAGS))) == f"posts:{tuple(sorted(TAGS))}"
    assert posts(["b", ("c", 1)]) == "['b', ('c', 1)]"
    assert posts(looped) == "['a', [...]]"
    cache.close()


@pytest.mark.anyio
async def test_the_async_decorator_refuses_them_too() -> None:
    cache = AsyncTieredCache([MemoryTier()], namespace="n")

    @cache.cached(key="posts:{tags}")
    async def posts(tags: object) -> list[str]:
        return []

    with pytest.raises(TypeError, match="tags"):
        await posts(TAGS)
    await cache.aclose()
