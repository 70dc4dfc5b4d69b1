"""What the memory tier keeps per key (its own module so that the compiled core shares it)."""

from __future__ import annotations

from typing import final

from .tier import Entry

__all__ = ["Slot"]


@final
class Slot:
    """What the memory tier keeps per key: the entry, when this tier drops it, and its weight
    (bytes, for ``max_bytes``; 0 without). One object, compared by identity: the tier tells a
    slot it read from its replacement by ``is``."""

    __slots__ = ("entry", "expire_at", "weight")

    def __init__(self, entry: Entry, expire_at: float, weight: int = 0) -> None:
        self.entry = entry
        self.expire_at = expire_at
        self.weight = weight
