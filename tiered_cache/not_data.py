"""A chain is not data: pickling or copying one is refused, saying what to do instead.

A chain holds this process's connections, threads, locks and compiled lookups. Pickled (a
``ProcessPoolExecutor`` argument holding a repository that holds the chain) it failed on the
first of them it met (``cannot pickle '_sketch.Counters' object``); copied with ``copy.copy``
it made a second chain object sharing the first one's tiers, locks and threads.
"""

from __future__ import annotations

from typing import NoReturn, SupportsIndex


class NotData:
    """A base of both chains: ``pickle``, ``copy.copy`` and ``copy.deepcopy`` (which all ask
    ``__reduce_ex__``) raise a ``TypeError`` naming the chain."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        kind = type(self).__name__
        raise TypeError(
            f"{self!r} cannot be pickled or copied: it holds this process's connections, "
            f"threads and locks. Build one per process ({kind}.from_config(...) in each "
            "worker, or at import in a module the workers import) and pass keys and values "
            "between processes, not the chain"
        )
