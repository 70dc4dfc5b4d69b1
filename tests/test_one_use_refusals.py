"""What the check of a loaded value that can be used only once does with it, and says.

A generator is closed unrun, an awaitable that is neither a coroutine nor an iterator is
refused too, and the refusal names the key, the kind of value, and the asyncio face (for an
``async def`` loader). For a batch, the message names the key whose value was refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Sequence
from typing import Any

import pytest

from tiered_cache import MemoryTier, PartialBatchError, TieredCache
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock

STRICT = Protection.never_stale(lease="off")


class Awaitable:
    """An awaitable that is neither a coroutine nor an iterator (as a Future-like object)."""

    def __await__(self) -> Generator[Any, None, int]:
        yield
        return 1


def cache_of(clock: FakeClock) -> TieredCache:
    return TieredCache([MemoryTier(clock=clock)], clock=clock, protection=STRICT)


def test_a_loaded_generator_is_closed_unrun_and_named(clock: FakeClock) -> None:
    cache = cache_of(clock)
    made = (i for i in range(3))
    with pytest.raises(TypeError) as refused:
        cache.get("k", lambda: made)
    assert inspect.getgeneratorstate(made) == inspect.GEN_CLOSED
    assert str(refused.value).startswith(
        "cannot cache what the load of 'k' returned, a generator: it can be used only once"
    )
    assert str(refused.value).endswith("for an async def use an AsyncTieredCache")
    cache.close()


def test_a_loaded_awaitable_is_refused(clock: FakeClock) -> None:
    cache = cache_of(clock)
    calls: list[str] = []

    def load() -> Awaitable:
        calls.append("load")
        return Awaitable()

    for _ in range(2):
        with pytest.raises(TypeError, match=r"load of 'k' returned, a Awaitable: it can be"):
            cache.get("k", load)
    assert calls == ["load", "load"]  # nothing was cached
    cache.close()


def test_a_batchs_refusal_names_the_key_of_the_value_refused(clock: FakeClock) -> None:
    cache = cache_of(clock)

    def load_many(keys: Sequence[str]) -> dict[str, Any]:
        return {"a": 1, "b": iter([1, 2])}

    with pytest.raises(PartialBatchError) as raised:
        cache.get_many(["a", "b"], load_many)
    assert "the load of 'b' returned, a list_iterator" in str(raised.value.errors["a"])
    cache.close()
