"""The adaptive policy's ghosts: keys that recently left the cache, in the order they left, each
with the side that let it go (its own module so that the compiled core shares it).

ARC's two ghost lists in one (see :mod:`tiered_cache.policy`): a miss looks its key up and takes
it out, every departure puts one in at the recent end, and past the policy's bound the oldest
goes. An ``OrderedDict[str, int]`` did the same; compiled, each of its three operations per
departure was a generic call into the ordered dict's own C code (about 540 instructions each:
a ghost remembered cost 2,160), where a plain dict's lookup, store and delete are direct calls
of the compiled core, and the order is a :class:`~tiered_cache.slot.SlotList` of records used
again and again.
"""

from __future__ import annotations

from typing import Final, final

from .entry import Entry
from .slot import Slot, SlotList

__all__ = ["GhostList"]

#: What a ghost's record holds in place of an entry: nothing of the key's value stays.
_NO_VALUE: Final = Entry(None, 0.0)
#: The tag of the ghosts' list (a ghost's record is in no segment of the policy's).
_GHOSTS: Final = 3


@final
class GhostList:
    """Keys in the order they were put in, each with a side (a non-zero int): the operations
    the policy asked of an ``OrderedDict[str, int]`` (``pop(key, 0)``, a store at the recent
    end, ``popitem(last=False)``), in O(1) each, answering the same in the same order.

    A key's record is an empty :class:`~tiered_cache.slot.Slot` whose ``weight`` holds the
    side. A record taken out is kept as the spare for the next key put in: a full list that
    forgets its oldest key for each new one allocates nothing.
    """

    __slots__ = ("_index", "_order", "_spare")

    def __init__(self) -> None:
        self._order = SlotList(_GHOSTS)
        self._index: dict[str, Slot] = {}
        self._spare: Slot | None = None

    def __len__(self) -> int:
        return self._order.size

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def size(self) -> int:
        """Keys held."""
        return self._order.size

    def pop(self, key: str) -> int:
        """Take ``key`` out: its side, or 0 when it is not held."""
        ghost = self._index.get(key)
        if ghost is None:
            return 0
        del self._index[key]
        self._order.remove(ghost)
        self._spare = ghost
        return ghost.weight

    def append(self, key: str, side: int) -> None:
        """Put ``key`` (not held) in as the most recent, with ``side``."""
        ghost = self._spare
        if ghost is None:
            ghost = Slot(_NO_VALUE, 0.0)
        else:
            self._spare = None
        ghost.weight = side
        self._order.append(key, ghost)
        self._index[key] = ghost

    def pop_oldest(self) -> int:
        """Take the oldest key out (the list must not be empty): its side."""
        ghost = self._order.pop_oldest()
        del self._index[ghost.key]
        self._spare = ghost
        return ghost.weight

    def oldest_keys(self, count: int) -> list[str]:
        """The ``count`` oldest keys (fewer if the list is shorter), oldest first."""
        return self._order.oldest_keys(count)
