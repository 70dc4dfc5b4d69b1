"""Wrappers around a real tier for tests: count its calls, or make it fail on demand."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence

from ..tier import Entry, MissingType, Tier


class RecordingTier:
    """Passes every call to ``inner`` and counts calls per method in :attr:`calls`.

    Set :attr:`failure` to an exception to make every call raise it (a tier that is down),
    and back to ``None`` to bring the tier back.
    """

    def __init__(self, inner: Tier) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: Counter[str] = Counter()
        self.failure: Exception | None = None
        self._lock = threading.Lock()

    def _record(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1
        if self.failure is not None:
            raise self.failure

    def get(self, key: str) -> Entry | MissingType:
        self._record("get")
        return self.inner.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        self._record("get_many")
        return self.inner.get_many(keys)

    def set(self, key: str, entry: Entry) -> None:
        self._record("set")
        self.inner.set(key, entry)

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._record("set_many")
        self.inner.set_many(entries)

    def delete(self, key: str) -> None:
        self._record("delete")
        self.inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        self._record("delete_many")
        self.inner.delete_many(keys)

    def clear(self) -> None:
        self._record("clear")
        self.inner.clear()

    def close(self) -> None:
        self.inner.close()
