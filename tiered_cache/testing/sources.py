"""An in-memory source of truth for tests: a dict that counts its reads and keeps its history."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..tier import MISSING, MissingType


class DictSource:
    """A :class:`~tiered_cache.Source` backed by a dict.

    Attributes:
        items: what the source holds now; tests may change it directly (a write that bypasses
            the cache).
        loads: the keys passed to :meth:`load`, in order.
        batches: the key lists passed to :meth:`load_many`, in order.
        history: per key, ``(since, value)`` for every value it held (``None``: absent), on the
            given clock; :meth:`held_within` answers from it.
    """

    name = "dict"

    def __init__(
        self, items: Mapping[str, Any] | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self.items: dict[str, Any] = dict(items or {})
        self.loads: list[str] = []
        self.batches: list[list[str]] = []
        self._clock = clock or (lambda: 0.0)
        self.history: dict[str, list[tuple[float, Any]]] = {
            key: [(0.0, value)] for key, value in self.items.items()
        }

    @property
    def reads(self) -> int:
        """Calls that reached the source (a batch counts once)."""
        return len(self.loads) + len(self.batches)

    def write(self, key: str, value: Any) -> None:
        """Change ``key`` in the source (recorded in the history)."""
        self.items[key] = value
        self.history.setdefault(key, [(0.0, None)]).append((self._clock(), value))

    def held_within(self, key: str, value: Any, start: float, end: float) -> bool:
        """True if ``key`` held ``value`` (``None``: was absent) at some time in [start, end]."""
        segments = self.history.get(key, [(0.0, None)])
        for index, (since, held) in enumerate(segments):
            until = segments[index + 1][0] if index + 1 < len(segments) else float("inf")
            if held == value and since <= end and until >= start:
                return True
        return False

    def load(self, key: str) -> Any | MissingType:
        self.loads.append(key)
        return self.items.get(key, MISSING)

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        self.batches.append(list(keys))
        return {key: self.items[key] for key in keys if key in self.items}

    def store(self, key: str, value: Any) -> None:
        self.write(key, value)

    def remove(self, key: str) -> None:
        self.items.pop(key, None)
        self.history.setdefault(key, [(0.0, None)]).append((self._clock(), None))

    def close(self) -> None:
        pass


class AsyncDictSource:
    """An :class:`~tiered_cache.AsyncSource` over a :class:`DictSource` (``inner``, which
    counts the reads and holds the items).

    Attributes:
        gate: while set and not yet set free, :meth:`load` waits for it (a slow source).
        failure: raised by :meth:`load` and :meth:`load_many` while set (a failing source).
    """

    name = "async-dict"

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self.inner = DictSource(items)
        self.gate: asyncio.Event | None = None
        self.failure: Exception | None = None

    async def load(self, key: str) -> Any | MissingType:
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return self.inner.load(key)

    async def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        if self.failure is not None:
            raise self.failure
        return self.inner.load_many(keys)

    async def store(self, key: str, value: Any) -> None:
        self.inner.store(key, value)

    async def remove(self, key: str) -> None:
        self.inner.remove(key)

    async def aclose(self) -> None:
        pass
