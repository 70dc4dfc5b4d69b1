"""What a closed chain answers: :class:`ChainClosedError`, to every read, write and invalidation.

The one owner of that rule. Every call of either face reaches the chain's
:class:`~tiered_cache.paths.ChainPaths` once its L1 lookup has missed (a write, an
invalidation, a batch at once), so ``close()`` turns the L1 lookup off and puts a
:class:`ClosedPaths` in the place of the paths: no public method checks a flag of its own,
and nothing reaches a tier or the source, so nothing is counted as a tier's failure (a closed
Redis tier raised a bare ``RuntimeError``, and a memory-only chain went on serving).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from .errors import ChainClosedError


class ClosedPaths:
    """Stands in for a closed chain's :class:`~tiered_cache.paths.ChainPaths`: each of its
    calls raises :class:`ChainClosedError` naming ``chain`` (the chain's repr)."""

    def __init__(self, chain: str) -> None:
        self._message = f"{chain} is closed: build a new chain to use the cache again"

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        return self.refuse

    def refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Any call of the paths, on a closed chain."""
        raise ChainClosedError(self._message)

    def set_bus_connected(self, connected: bool, bound: float) -> bool:
        """The bus of a closed chain is closing: what it reports on its way out is moot, and
        the L1 lookup stays off (a late "reconnected" must not turn it on again)."""
        return False
