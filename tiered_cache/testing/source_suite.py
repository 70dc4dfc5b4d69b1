"""The conformance suite every :class:`~tiered_cache.tier.Source` should pass.

Subclass :class:`SourceConformance` in a test module (named ``Test...``), provide a ``source``
fixture that yields a fresh source (and closes it afterwards: ``close`` is idempotent, the
suite may have closed it already), and override :meth:`SourceConformance.make_value` (and
:meth:`SourceConformance.make_key` if the source needs a key format)::

    class TestMySource(SourceConformance):
        @pytest.fixture
        def source(self) -> Iterator[Source]:
            source = MySource(...)
            yield source
            source.close()

        def make_value(self, key: str) -> Any:
            return {"id": key, "body": "hello"}

Keys are unique per test, so the tests may share one backing store.
"""

from __future__ import annotations

import uuid
from typing import Any

from tiered_cache.tier import MISSING, Source

#: More keys than one request of a batching source takes (BatchGetItem: 100).
MANY_KEYS = 130


class SourceConformance:
    """Behaviour every source must have; see the module docstring for how to use it."""

    def make_key(self, name: str) -> str:
        """The cache key for a unique ``name`` (override if the source needs a key format)."""
        return name

    def make_value(self, key: str) -> Any:
        """A value the source can store for ``key`` and give back equal."""
        return {"key": key, "value": f"value of {key}"}

    def other_value(self, key: str) -> Any:
        """A second value for ``key``, different from :meth:`make_value` (for overwrites)."""
        value = self.make_value(key)
        if isinstance(value, dict):
            return {**value, "conformance_marker": "second"}
        raise NotImplementedError("override other_value() for non-dict values")

    def _keys(self, count: int) -> list[str]:
        run = uuid.uuid4().hex[:12]
        return [self.make_key(f"conformance-{run}-{index}") for index in range(count)]

    def test_is_a_source(self, source: Source) -> None:
        assert isinstance(source, Source)
        assert isinstance(source.name, str)
        assert source.name

    def test_load_of_an_absent_key_is_missing(self, source: Source) -> None:
        [key] = self._keys(1)
        assert source.load(key) is MISSING

    def test_store_then_load_round_trips(self, source: Source) -> None:
        [key] = self._keys(1)
        value = self.make_value(key)
        source.store(key, value)
        assert source.load(key) == value

    def test_store_overwrites(self, source: Source) -> None:
        [key] = self._keys(1)
        source.store(key, self.make_value(key))
        second = self.other_value(key)
        source.store(key, second)
        assert source.load(key) == second

    def test_load_many_returns_only_present_keys(self, source: Source) -> None:
        present, absent = self._keys(2)
        source.store(present, self.make_value(present))
        assert source.load_many([present, absent]) == {present: self.make_value(present)}

    def test_load_many_of_nothing_is_empty(self, source: Source) -> None:
        assert source.load_many([]) == {}

    def test_load_many_with_duplicates(self, source: Source) -> None:
        present, absent = self._keys(2)
        source.store(present, self.make_value(present))
        found = source.load_many([present, absent, present, absent, present])
        assert found == {present: self.make_value(present)}

    def test_load_many_of_more_than_one_batch(self, source: Source) -> None:
        keys = self._keys(MANY_KEYS)
        stored = keys[::2]
        for key in stored:
            source.store(key, self.make_value(key))
        found = source.load_many(keys)
        assert found == {key: self.make_value(key) for key in stored}

    def test_remove(self, source: Source) -> None:
        kept, removed = self._keys(2)
        source.store(kept, self.make_value(kept))
        source.store(removed, self.make_value(removed))
        source.remove(removed)
        assert source.load(removed) is MISSING
        assert source.load(kept) == self.make_value(kept)
        assert source.load_many([kept, removed]) == {kept: self.make_value(kept)}

    def test_remove_of_an_absent_key_is_not_an_error(self, source: Source) -> None:
        [key] = self._keys(1)
        source.remove(key)
        assert source.load(key) is MISSING

    def test_close_is_idempotent(self, source: Source) -> None:
        source.close()
        source.close()


__all__ = ["MANY_KEYS", "SourceConformance"]
