"""The conformance suites, run against async tiers and sources: the same cases, not copies.

An async tier is driven through :class:`OnLoopTier`, a sync face that runs each of its
coroutines on an event loop of its own thread (:class:`LoopThread`); the sync suites' cases
then run against it unchanged -- their threaded case included, since every thread's calls go
to the one loop, as a service's coroutines would. Subclass :class:`AsyncTierConformance` (or
:class:`AsyncSourceConformance`) and provide the ``async_tier`` (or ``async_source``)
fixture; the suite closes it::

    class TestMyAsyncTier(AsyncTierConformance):
        @pytest.fixture
        def async_tier(self, clock):
            return MyAsyncTier(clock=clock)
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import pytest

from ..async_tier import (
    AsyncLeasingTier,
    AsyncSource,
    AsyncTier,
    declared_capabilities,
    declared_delete_prefix,
)
from ..tier import Entry, MissingType, Source, Tier, TierBase
from .clock import FakeClock
from .conformance import TierConformance
from .source_suite import SourceConformance

T = TypeVar("T")


class LoopThread:
    """An event loop running on a daemon thread; :meth:`run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="tiered-cache-test-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class OnLoopTier(TierBase):
    """A sync :class:`~tiered_cache.Tier` over an async tier: each call runs on ``loop``."""

    def __init__(self, tier: AsyncTier, loop: LoopThread) -> None:
        self.inner = tier
        self.name = tier.name
        #: The async tier's declared capabilities, resolved once, as the chain's accessor does.
        self._declared = declared_capabilities(tier)
        self._delete_prefix = declared_delete_prefix(tier)
        self.leases = self._declared.leases
        self.utf8_keys = self._declared.utf8_keys
        self._run = loop.run

    def _leasing(self) -> AsyncLeasingTier:
        return cast(AsyncLeasingTier, self.inner)

    def check_value(self, value: Any) -> None:
        """The async tier's own check (a plain call: no loop needed), so the suite tests it."""
        self._declared.check_value(value)

    def prepare_value(self, value: Any) -> Any:
        """The async tier's own (a plain call), so the suite tests it."""
        return self._declared.prepare_value(value)

    def get(self, key: str) -> Entry | MissingType:
        return self._run(self.inner.get(key))

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return self._run(self.inner.get_many(keys))

    def set(self, key: str, entry: Entry) -> None:
        self._run(self.inner.set(key, entry))

    def set_many(self, entries: Mapping[str, Entry]) -> None:
        self._run(self.inner.set_many(entries))

    def delete(self, key: str) -> None:
        self._run(self.inner.delete_many([key]))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._run(self.inner.delete_many(keys))

    def clear(self) -> None:
        self._run(self.inner.clear())

    def delete_prefix(self, prefix: str) -> None:
        self._run(self._delete_prefix(prefix))

    def close(self) -> None:
        self._run(self.inner.aclose())

    # -- leases (only called when ``leases``)

    def can_lease(self, key: str) -> bool:
        return self._leasing().can_lease(key)

    def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        return self._run(self._leasing().acquire_lease(key, ttl))

    def steal_lease(self, key: str, ttl: float) -> str:
        return self._run(self._leasing().steal_lease(key, ttl))

    def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        return self._run(self._leasing().steal_leases(keys, ttl))

    def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        return self._run(self._leasing().fill_with_lease(key, entry, token))

    def release_lease(self, key: str, token: str) -> None:
        self._run(self._leasing().release_lease(key, token))

    def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        return self._run(self._leasing().acquire_leases(keys, ttl))

    def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> builtins.set[str]:
        return self._run(self._leasing().fill_with_leases(entries))

    def release_leases(self, tokens: Mapping[str, str]) -> None:
        self._run(self._leasing().release_leases(tokens))


class OnLoopSource:
    """A sync :class:`~tiered_cache.Source` over an async source: each call runs on ``loop``."""

    def __init__(self, source: AsyncSource, loop: LoopThread) -> None:
        self.inner = source
        self.name = source.name
        self._run = loop.run
        self._closed = False

    def load(self, key: str) -> Any | MissingType:
        return self._run(self.inner.load(key))

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        return self._run(self.inner.load_many(keys))

    def store(self, key: str, value: Any) -> None:
        self._run(self.inner.store(key, value))

    def remove(self, key: str) -> None:
        self._run(self.inner.remove(key))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._run(self.inner.aclose())


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """An event loop on a thread of its own, for the async suites."""
    loop = LoopThread()
    yield loop
    loop.close()


class AsyncTierConformance(TierConformance):
    """:class:`~tiered_cache.testing.conformance.TierConformance`'s cases, for an async tier."""

    @pytest.fixture
    def async_tier(self, clock: FakeClock) -> AsyncTier:
        raise NotImplementedError("an async conformance module provides 'async_tier'")

    @pytest.fixture
    def tier(self, async_tier: AsyncTier) -> Iterator[Tier]:
        loop = LoopThread()
        tier = OnLoopTier(async_tier, loop)
        try:
            yield tier
        finally:
            try:
                tier.close()
            finally:
                loop.close()


class AsyncSourceConformance(SourceConformance):
    """:class:`~tiered_cache.testing.source_suite.SourceConformance`'s cases, for an async
    source."""

    @pytest.fixture
    def async_source(self) -> AsyncSource:
        raise NotImplementedError("an async conformance module provides 'async_source'")

    @pytest.fixture
    def source(self, async_source: AsyncSource) -> Iterator[Source]:
        loop = LoopThread()
        source = OnLoopSource(async_source, loop)
        try:
            yield source
        finally:
            try:
                source.close()
            finally:
                loop.close()
