"""Scripts of chain operations for differential tests (it needs hypothesis).

A differential test runs one script on two chains that must decide alike (the plain-call
path and the general one, the compiled core and the pure one) and compares their answers
and state. The script's shape is shared here so that every such test draws from the same
mix: operations on a small key space where a few hot keys come up more often, queued
refreshes run now and then, and clock moves across the freshness boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

#: The key space: small, so that keys collide with each other and with the cache's size.
KEYS: list[str] = [f"k{index}" for index in range(24)]
#: How many of the first keys are hot (drawn twice as often as a key in general).
HOT = 4


def chain_scripts(
    operations: Sequence[str],
    advances: Sequence[float],
    *,
    min_size: int,
    max_size: int,
) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """Lists of steps ``(operation, key)``, ``("refresh", None)`` or ``("advance", seconds)``.

    ``operations`` take a key from :data:`KEYS` (hot keys more often); ``advances`` are
    the clock moves to draw from.
    """
    keyed = st.tuples(
        st.sampled_from(list(operations)),
        st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS[:HOT])),
    )
    refresh = st.tuples(st.just("refresh"), st.none())
    advance = st.tuples(st.just("advance"), st.sampled_from(list(advances)))
    return st.lists(keyed | refresh | advance, min_size=min_size, max_size=max_size)
