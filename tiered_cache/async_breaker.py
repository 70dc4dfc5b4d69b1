"""A circuit breaker around an async tier: :class:`~tiered_cache.breaker.CircuitBreakerTier`
with coroutines. The breaker is the same :class:`~tiered_cache.breaker.CircuitBreaker` (its
rule has one owner), awaited through :meth:`~tiered_cache.breaker.CircuitBreaker.acall`.

``AsyncTieredCache.from_config`` wraps each async tier in one, so ``cache.tiers`` holds tiers
whose every verb is awaited, as the user of an async cache expects; the chain takes the
wrapper apart again (as the sync chain does).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from .async_tier import (
    AsyncLeasingTier,
    AsyncTier,
    AsyncTierBase,
    declared_capabilities,
    declared_delete_prefix,
)
from .breaker import GuardedTier
from .settings import BreakerSettings
from .tier import Entry, MissingType

T = TypeVar("T")


class AsyncCircuitBreakerTier(GuardedTier[AsyncTier], AsyncTierBase):
    """An async tier and the breaker guarding it (same protocol, name, ``utf8_keys`` and
    ``one_loop``).

    Args:
        tier: the async tier to protect.
        settings, failure_threshold, cool_down, clock: as for
            :class:`~tiered_cache.breaker.CircuitBreaker`.
    """

    def _declare(self, tier: AsyncTier) -> None:
        #: The wrapped tier's declared capabilities.
        self._declared = declared_capabilities(tier)
        self.utf8_keys = self._declared.utf8_keys
        self.one_loop = self._declared.one_loop
        self._delete_prefix = declared_delete_prefix(tier)

    def _call(self, operation: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return self.breaker.acall(operation)

    def check_value(self, value: Any) -> None:
        """The wrapped tier's own check (a plain call: nothing to guard)."""
        self._declared.check_value(value)

    def prepare_value(self, value: Any) -> Any:
        """The wrapped tier's own form of ``value`` (the Redis tier's payload), so a write
        through this wrapper encodes it once, as through the tier itself."""
        return self._declared.prepare_value(value)

    # -- the AsyncTier protocol

    async def get(self, key: str) -> Entry | MissingType:
        return await self._call(lambda: self._tier.get(key))

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return await self._call(lambda: self._tier.get_many(keys))

    async def set(self, key: str, entry: Entry) -> None:
        await self._call(lambda: self._tier.set(key, entry))

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        await self._call(lambda: self._tier.set_many(entries))

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self._call(lambda: self._tier.delete_many(keys))

    async def clear(self) -> None:
        await self._call(self._tier.clear)

    async def delete_prefix(self, prefix: str) -> None:
        """The tier's declared ``delete_prefix``, else its ``clear`` (more than asked, never
        less), through the breaker."""
        await self._call(lambda: self._delete_prefix(prefix))

    async def aclose(self) -> None:
        """Close the wrapped tier, whatever the state of the circuit."""
        await self._tier.aclose()


class AsyncLeasingCircuitBreakerTier(AsyncCircuitBreakerTier):
    """:class:`AsyncCircuitBreakerTier` around a tier that declares leases: used on its own,
    the lease calls go through the breaker too."""

    leases = True

    @property
    def _leasing(self) -> AsyncLeasingTier:
        return cast(AsyncLeasingTier, self._tier)  # guard_async wraps only a leasing tier here

    def can_lease(self, key: str) -> bool:
        return self._leasing.can_lease(key)  # no round trip: nothing to guard

    async def acquire_lease(self, key: str, ttl: float) -> tuple[str | None, Entry | MissingType]:
        return await self._call(lambda: self._leasing.acquire_lease(key, ttl))

    async def steal_lease(self, key: str, ttl: float) -> str:
        return await self._call(lambda: self._leasing.steal_lease(key, ttl))

    async def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]:
        return await self._call(lambda: self._leasing.steal_leases(keys, ttl))

    async def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool:
        return await self._call(lambda: self._leasing.fill_with_lease(key, entry, token))

    async def release_lease(self, key: str, token: str) -> None:
        await self._call(lambda: self._leasing.release_lease(key, token))

    async def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]:
        return await self._call(lambda: self._leasing.acquire_leases(keys, ttl))

    async def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> builtins.set[str]:
        return await self._call(lambda: self._leasing.fill_with_leases(entries))

    async def release_leases(self, tokens: Mapping[str, str]) -> None:
        await self._call(lambda: self._leasing.release_leases(tokens))


def guard_async(
    tier: AsyncTier,
    settings: BreakerSettings | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncCircuitBreakerTier:
    """:func:`~tiered_cache.breaker.guard` for an async tier: the same breaker, awaited; a
    tier that declares leases keeps them (:class:`AsyncLeasingCircuitBreakerTier`)."""
    if declared_capabilities(tier).leases:
        return AsyncLeasingCircuitBreakerTier(tier, settings, clock=clock)
    return AsyncCircuitBreakerTier(tier, settings, clock=clock)
