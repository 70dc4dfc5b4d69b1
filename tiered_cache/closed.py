"""What a closed chain answers: :class:`ChainClosedError`, to every read, write and invalidation.

The one owner of that rule. Every call of either face reaches the chain's
:class:`~tiered_cache.paths.ChainPaths` once its L1 lookup has missed (a write, an
invalidation, a batch at once), so ``close()`` turns the L1 lookup off and puts a
:class:`ClosedPaths` in the place of the paths: no public method checks a flag of its own,
and nothing reaches a tier or the source, so nothing is counted as a tier's failure (a closed
Redis tier raised a bare ``RuntimeError``, and a memory-only chain went on serving).

Both stand behind :class:`Paths`, the calls a chain makes on its paths: a path added to the
chains and :class:`ChainPaths` but not to :class:`ClosedPaths` fails the type check (mypy
strict), where a stand-in answering any name (``__getattr__``) would have hidden it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Protocol

from .errors import ChainClosedError
from .read_state import CONNECTED, ReadState
from .singleflight import Landing
from .stamp import CheckedTtl
from .steps import Steps
from .tier import Entry
from .units import DurationLike


class Paths(Protocol):
    """What a chain calls on its paths: :class:`~tiered_cache.paths.ChainPaths` while open,
    :class:`ClosedPaths` once closed (see :class:`~tiered_cache.paths.ChainPaths` for each)."""

    def looked(self) -> ReadState: ...

    def entered(self) -> None: ...

    def read_through_plain(
        self, flight: Landing, key: str, loader: Any, ttl: CheckedTtl | None, state: ReadState
    ) -> Any: ...

    def read_through(
        self,
        key: str,
        mark: int,
        loader: Any,
        ttl: CheckedTtl | None,
        state: ReadState,
        *,
        beside: bool = False,
        first_counted: bool = False,
    ) -> Steps[Any]: ...

    def get_many(
        self, keys: list[str], loader: Any, ttl: DurationLike | None
    ) -> Steps[dict[str, Any]]: ...

    def lookup_many(self, keys: list[str]) -> Steps[dict[str, Entry]]: ...

    def set(self, key: str, value: Any, ttl: DurationLike | None) -> Steps[None]: ...

    def set_many(self, items: Mapping[str, Any], ttl: DurationLike | None) -> Steps[None]: ...

    def invalidate_many(self, keys: Sequence[str], *, strict: bool = False) -> Steps[None]: ...

    def invalidate_prefix(self, prefix: str) -> Steps[None]: ...

    def clear(self, *, strict: bool = False) -> Steps[None]: ...

    def set_bus_connected(
        self, connected: bool, bound: float, *, starting: bool = False
    ) -> ReadState | None: ...


def is_closed(paths: Paths) -> bool:
    """Whether ``paths`` are a closed chain's: the one test of "closed", which both chains'
    ``closed`` and the switch of their L1 lookup (:meth:`~tiered_cache.l1.L1Reader._use_l1`)
    ask."""
    return isinstance(paths, ClosedPaths)


class ClosedPaths:
    """Stands in for a closed chain's :class:`~tiered_cache.paths.ChainPaths`: each of its
    calls raises :class:`ChainClosedError` naming ``chain`` (the chain's repr)."""

    def __init__(self, chain: str) -> None:
        self._message = f"{chain} is closed: build a new chain to use the cache again"

    def refuse(self) -> NoReturn:
        """Any call of the paths, on a closed chain."""
        raise ChainClosedError(self._message)

    def looked(self) -> NoReturn:
        self.refuse()

    def entered(self) -> NoReturn:
        self.refuse()

    def read_through_plain(
        self, flight: Landing, key: str, loader: Any, ttl: CheckedTtl | None, state: ReadState
    ) -> NoReturn:
        self.refuse()

    def read_through(
        self,
        key: str,
        mark: int,
        loader: Any,
        ttl: CheckedTtl | None,
        state: ReadState,
        *,
        beside: bool = False,
        first_counted: bool = False,
    ) -> NoReturn:
        self.refuse()

    def get_many(self, keys: list[str], loader: Any, ttl: DurationLike | None) -> NoReturn:
        self.refuse()

    def lookup_many(self, keys: list[str]) -> NoReturn:
        self.refuse()

    def set(self, key: str, value: Any, ttl: DurationLike | None) -> NoReturn:
        self.refuse()

    def set_many(self, items: Mapping[str, Any], ttl: DurationLike | None) -> NoReturn:
        self.refuse()

    def invalidate_many(self, keys: Sequence[str], *, strict: bool = False) -> NoReturn:
        self.refuse()

    def invalidate_prefix(self, prefix: str) -> NoReturn:
        self.refuse()

    def clear(self, *, strict: bool = False) -> NoReturn:
        self.refuse()

    def set_bus_connected(
        self, connected: bool, bound: float, *, starting: bool = False
    ) -> ReadState:
        """The bus of a closed chain is closing: what it reports on its way out is moot, and
        the L1 lookup stays off (a late "reconnected" must not turn it on again; one that
        decided on the open paths before the close is kept off by the L1 switch itself,
        :meth:`~tiered_cache.l1.L1Reader._use_l1`)."""
        return CONNECTED
