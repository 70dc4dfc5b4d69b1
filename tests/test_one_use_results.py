"""A loaded result that can be used only once is refused, not cached, on every read path.

A coroutine, a generator or another iterator cached as a value is used up by its first
reader: the next got "cannot reuse already awaited coroutine", or an empty iteration. The
decorator refused them; ``cache.get(key, loader)`` and ``get_many(keys, loader)`` called
directly (either face) cached them. The check is the loaders' now, for every read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, MemoryTier, PartialBatchError, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import DictSource

STRICT = Protection.never_stale(lease="off")
MADE = ["coroutine", "generator", "iterator"]


async def _fetch() -> int:
    return 1


def one_use(made: str) -> Any:
    """A result of the kind ``made`` that can be used only once."""
    if made == "coroutine":
        return _fetch()
    if made == "generator":
        return (i for i in range(3))
    return iter([1, 2, 3])


def loads_counted(made: str, calls: list[str]) -> Callable[[], Any]:
    def load() -> Any:
        calls.append("load")
        return one_use(made)

    return load


def batch_of(made: str, calls: list[list[str]], keys: Sequence[str]) -> dict[str, Any]:
    """A batch loader's result: ``a`` plain, ``b`` a result used only once."""
    calls.append(list(keys))
    return {"a": 1, "b": one_use(made)}


def refused_batch(raised: pytest.ExceptionInfo[PartialBatchError]) -> None:
    """Every key of the batch failed with the check's TypeError: the loader is broken."""
    errors = raised.value.errors
    assert sorted(errors) == ["a", "b"]
    assert all(isinstance(error, TypeError) for error in errors.values())
    assert "can be used only once" in str(errors["b"])


@pytest.mark.parametrize("made", MADE)
def test_get_with_a_loader_returning_a_one_use_result_refuses_it(
    clock: FakeClock, made: str
) -> None:
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, protection=STRICT)
    calls: list[str] = []
    for _ in range(2):
        with pytest.raises(TypeError, match=r"'k'.* can be used only once"):
            cache.get("k", loads_counted(made, calls))
    assert calls == ["load", "load"]  # nothing was cached
    assert cache.stats()["load_failures"] == 2
    cache.close()


@pytest.mark.parametrize("made", MADE)
def test_get_many_with_a_batch_loader_returning_one_use_values_refuses_them(
    clock: FakeClock, made: str
) -> None:
    cache = TieredCache([MemoryTier(clock=clock)], clock=clock, protection=STRICT)
    calls: list[list[str]] = []
    for _ in range(2):
        with pytest.raises(PartialBatchError) as raised:
            cache.get_many(["a", "b"], lambda keys: batch_of(made, calls, keys))
        refused_batch(raised)
    assert calls == [["a", "b"], ["a", "b"]]  # nothing was cached, not even "a"
    cache.close()


@pytest.mark.anyio
@pytest.mark.parametrize("made", MADE)
async def test_async_reads_with_loaders_awaiting_to_one_use_results_refuse_them(
    clock: FakeClock, made: str
) -> None:
    cache = AsyncTieredCache([MemoryTier(clock=clock)], clock=clock, protection=STRICT)
    calls: list[str] = []
    batches: list[list[str]] = []

    async def load() -> Any:
        return loads_counted(made, calls)()

    async def load_many(keys: Sequence[str]) -> dict[str, Any]:
        return batch_of(made, batches, keys)

    for _ in range(2):
        with pytest.raises(TypeError, match=r"'k'.* can be used only once"):
            await cache.get("k", load)
        with pytest.raises(PartialBatchError) as raised:
            await cache.get_many(["a", "b"], load_many)
        refused_batch(raised)
    assert calls == ["load", "load"]  # nothing was cached
    assert batches == [["a", "b"], ["a", "b"]]
    await cache.aclose()


def test_a_source_returning_a_one_use_value_is_refused_too(clock: FakeClock) -> None:
    """The rule is the load's, whoever loads: the source's value is checked as a loader's."""
    source = DictSource({"k": iter([1, 2, 3])})
    cache = TieredCache([MemoryTier(clock=clock)], source, clock=clock, protection=STRICT)
    with pytest.raises(TypeError, match="can be used only once"):
        cache.get("k")
    cache.close()
