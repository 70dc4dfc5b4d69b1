"""A chain is not data: pickling or copying one is refused with what to do instead."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.memory import MemoryTier


class Repository:
    """The decorator page's pattern: a repository holding its chain."""

    def __init__(self, cache: object) -> None:
        self.cache = cache


COPIES: list[Callable[[Any], object]] = [pickle.dumps, copy.copy, copy.deepcopy]


@pytest.mark.parametrize("make_copy", COPIES, ids=["pickle", "copy", "deepcopy"])
def test_a_chain_refuses_to_be_pickled_or_copied_saying_what_to_do(
    make_copy: Callable[[Any], object],
) -> None:
    cache = TieredCache([MemoryTier()], namespace="n")
    # On main: pickle said "cannot pickle 'Lock' object" (a ProcessPoolExecutor's worker
    # argument holding a repository), and copy.copy made a second chain sharing the first's
    # tiers, locks and threads.
    # A shallow copy of a repository shares its chain, as it should; the others copy it.
    holders = [cache] if make_copy is copy.copy else [cache, Repository(cache)]
    for item in holders:
        with pytest.raises(TypeError, match=r"TieredCache 'n'.*one per process.*from_config"):
            make_copy(item)
    assert cache.get("k", lambda: 1) == 1  # still in use
    cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("make_copy", COPIES, ids=["pickle", "copy", "deepcopy"])
async def test_an_async_chain_refuses_too(make_copy: Callable[[Any], object]) -> None:
    cache = AsyncTieredCache([MemoryTier()], namespace="a")
    with pytest.raises(TypeError, match=r"AsyncTieredCache 'a'.*one per process"):
        make_copy(cache)
    await cache.aclose()
