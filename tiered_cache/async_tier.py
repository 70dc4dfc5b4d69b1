"""The contracts of tiers and sources with native asyncio I/O (Redis on ``redis.asyncio``,
DynamoDB on aiobotocore). They mirror :class:`~tiered_cache.tier.Tier` and
:class:`~tiered_cache.tier.Source` verb for verb, with coroutines.

The asyncio chain takes these, and also the plain (sync) ones: the memory tier as it is (its
calls do no I/O), any other sync tier or source through a thread, with a one-time warning.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from .tier import Entry, MissingType


@runtime_checkable
class AsyncTier(Protocol):
    """:class:`~tiered_cache.tier.Tier` with coroutine methods."""

    name: str

    async def get(self, key: str) -> Entry | MissingType:
        """The live entry for ``key``, or ``MISSING``."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """The live entries among ``keys``; absent keys are left out."""
        ...

    async def set(self, key: str, entry: Entry) -> None:
        """Store ``entry``; raises :class:`~tiered_cache.CodecError` for a value it cannot
        store, and then stores nothing."""
        ...

    async def set_many(self, entries: Mapping[str, Entry]) -> None:
        """Store several entries at once."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove several keys at once."""
        ...

    async def clear(self) -> None:
        """Remove every entry this tier holds for this cache."""
        ...

    async def aclose(self) -> None:
        """Release connections; the tier is not used afterwards."""
        ...


class AsyncTierBase:
    """The optional capabilities of an async tier, declared with their defaults (as
    :class:`~tiered_cache.tier.TierBase` does for sync tiers). An async tier is never
    ``local``: the in-process tier of the asyncio chain is the memory tier itself.

    Attributes:
        leases: offers the coroutine forms of :class:`~tiered_cache.leases.LeasingTier`'s
            operations (:class:`AsyncLeasingTier`).
        utf8_keys: stores keys as UTF-8 (see :class:`~tiered_cache.tier.TierBase`).
        one_loop: its connections belong to the event loop they were opened on, and it
            serves one running loop at a time: the chain refuses calls from a second loop
            while the first runs (:class:`~tiered_cache.EventLoopConflict`).
    """

    leases: bool = False
    utf8_keys: bool = False
    one_loop: bool = False

    async def clear(self) -> None:  # pragma: no cover - a subclass overrides
        raise NotImplementedError

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every key that starts with ``prefix``; by default everything (always safe)."""
        await self.clear()

    def check_value(self, value: Any) -> None:
        """:meth:`tiered_cache.tier.TierBase.check_value` (a plain call: no I/O)."""

    def prepare_value(self, value: Any) -> Any:
        """:meth:`tiered_cache.tier.TierBase.prepare_value` (a plain call: no I/O)."""
        self.check_value(value)
        return value


#: What a tier that declares nothing declares: :class:`AsyncTierBase`'s defaults.
UNDECLARED: Final = AsyncTierBase()


def declared_capabilities(tier: object) -> AsyncTierBase:
    """The capabilities ``tier`` declares: the tier itself when it is an
    :class:`AsyncTierBase`, else the defaults (:data:`UNDECLARED`). The one place an async
    tier's capabilities are resolved (:func:`tiered_cache.tier.declared_capabilities` for a
    sync tier): once, when a wrapper or an accessor is built, never probed per call, so
    nothing wrapping a tier hides what it declares. For a tier that declares none, its flags
    and plain calls (``check_value``, ``prepare_value``) are the defaults'; the defaults'
    ``delete_prefix`` clears the defaults, not the tier, so it is bound to the tier apart
    (:func:`declared_delete_prefix`)."""
    return tier if isinstance(tier, AsyncTierBase) else UNDECLARED


def declared_delete_prefix(tier: AsyncTier) -> Callable[[str], Coroutine[Any, Any, None]]:
    """``tier``'s declared ``delete_prefix``, else its ``clear`` (more than asked, never less),
    resolved once (:func:`declared_capabilities`)."""
    if isinstance(tier, AsyncTierBase):
        return tier.delete_prefix
    return lambda prefix: tier.clear()


class AsyncLeasingTier(AsyncTier, Protocol):
    """An async tier that offers leases: :class:`~tiered_cache.leases.LeasingTier`'s
    operations (same meaning, same names) as coroutines; ``can_lease`` stays plain."""

    def can_lease(self, key: str) -> bool: ...

    async def acquire_lease(
        self, key: str, ttl: float
    ) -> tuple[str | None, Entry | MissingType]: ...

    async def steal_lease(self, key: str, ttl: float) -> str: ...

    async def steal_leases(self, keys: Sequence[str], ttl: float) -> dict[str, str]: ...

    async def fill_with_lease(self, key: str, entry: Entry, token: str) -> bool: ...

    async def release_lease(self, key: str, token: str) -> None: ...

    async def acquire_leases(
        self, keys: Sequence[str], ttl: float
    ) -> dict[str, tuple[str | None, Entry | MissingType]]: ...

    async def fill_with_leases(self, entries: Mapping[str, tuple[Entry, str]]) -> set[str]: ...

    async def release_leases(self, tokens: Mapping[str, str]) -> None: ...


class AsyncSourceBase:
    """The optional capabilities of an async source, declared with their defaults.

    Attributes:
        one_loop: its client belongs to the event loop it was made on (aiobotocore's aiohttp
            session): the chain refuses calls from a second loop while the first runs
            (:class:`~tiered_cache.EventLoopConflict`).
    """

    one_loop: bool = False


@runtime_checkable
class AsyncSource(Protocol):
    """:class:`~tiered_cache.tier.Source` with coroutine methods."""

    name: str

    async def load(self, key: str) -> Any | MissingType:
        """The value for ``key``, or ``MISSING`` if the source has no such item."""
        ...

    async def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Values for the keys the source has; absent keys are left out."""
        ...

    async def store(self, key: str, value: Any) -> None:
        """Write ``value`` for ``key`` (write-through); must not mutate ``value`` (see
        :meth:`tiered_cache.tier.Source.store`)."""
        ...

    async def remove(self, key: str) -> None:
        """Delete ``key`` from the source."""
        ...

    async def aclose(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...
