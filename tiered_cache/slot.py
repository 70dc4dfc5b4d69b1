"""What the memory tier keeps per key, and the recency lists the policy threads through it (its
own module so that the compiled core shares it)."""

from __future__ import annotations

from typing import Any, Final, final

from .entry import COMPILED, Entry

__all__ = ["DETACHED", "Slot", "SlotList"]

#: :attr:`Slot.segment` of a slot that is in no :class:`SlotList`.
DETACHED: Final = -1


@final
class Slot(Entry):
    """What the memory tier keeps per key: the entry itself (a copy of the one stored: a
    ``Slot`` is an :class:`Entry`, and a read hands it out as is), when this tier drops it,
    and its weight (bytes, for ``max_bytes``; 0 without). One object, compared by identity
    inside the tier: the tier tells a slot it read from its replacement by ``is``.

    One object rather than a record pointing at the entry: compiled, an entry and a record
    beside it were 88 + 96 bytes per key; this is 136.

    A policy that keeps an order threads the slots themselves into :class:`SlotList` s
    (``key``, ``prev``, ``next``, ``segment``): no node, no second dict per key beside the
    policy's one dict of slots. A slot is in one list at most.
    """

    __slots__ = ("expire_at", "key", "next", "prev", "segment", "weight")

    def __init__(self, entry: Entry, expire_at: float, weight: int = 0) -> None:
        super().__init__(
            entry.value,
            entry.loaded_at,
            entry.soft_expiry,
            entry.hard_expiry,
            entry.load_duration,
            entry.version,
        )
        self.expire_at = expire_at
        self.weight = weight
        #: The key the slot is kept under, set when a list takes it (an eviction needs it).
        self.key = ""
        #: Neighbours in its list: ``prev`` is more recently used, ``next`` less.
        self.prev: Slot | None = None
        self.next: Slot | None = None
        #: The ``tag`` of the list holding it, or :data:`DETACHED`.
        self.segment = DETACHED

    @property
    def entry(self) -> Entry:
        """The entry kept: the slot itself."""
        return self


#: The bookkeeping fields, which the tier changes (the entry's own fields never change).
_SLOT_FIELDS = frozenset(("expire_at", "key", "next", "prev", "segment", "weight"))


def _set_slot_field(slot: Slot, name: str, value: object) -> None:
    """``__setattr__`` of the pure-Python :class:`Slot`: its own fields (through their
    slots' setters), not the entry's."""
    setter = _SETTERS.get(name)
    if setter is None:
        Entry.__setattr__(slot, name, value)  # refused: raises
    else:
        setter(slot, value)


def _pure_init(self: Slot, entry: Entry, expire_at: float, weight: int = 0) -> None:
    """``Slot.__init__`` of the pure-Python class: the entry's fields through
    ``Entry.__init__`` (its slots' setters), the bookkeeping through its slots' setters too,
    rather than six calls of the Python ``__setattr__`` above."""
    _ENTRY_INIT(self, *entry._fields())
    setters = _SETTERS
    setters["expire_at"](self, expire_at)
    setters["weight"](self, weight)
    setters["key"](self, "")
    setters["prev"](self, None)
    setters["next"](self, None)
    setters["segment"](self, DETACHED)


if not COMPILED:
    # The pure-Python Entry refuses assignment through its __setattr__; a slot's bookkeeping
    # must still be assignable (compiled, only the entry's Final fields lack a setter).
    _SETTERS: dict[str, Any] = {name: vars(Slot)[name].__set__ for name in _SLOT_FIELDS}
    _ENTRY_INIT = Entry.__init__
    type.__setattr__(Slot, "__init__", _pure_init)
    type.__setattr__(Slot, "__setattr__", _set_slot_field)


#: The sentinels' entry: never read.
_NO_ENTRY = Entry(None, 0.0)


@final
class SlotList:
    """Slots in recency order, linked through their own fields (an intrusive doubly linked
    ring around a sentinel). Does what the policy asked of an ``OrderedDict[str, Slot]`` per
    segment (append, move to the recent end, take out, pop the oldest, look at the oldest few)
    in O(1) each, without a node or a hash entry per key.

    ``tag`` is written into each slot it holds (:attr:`Slot.segment`), so that the policy
    finds a key's list from its slot. A removed slot is unlinked (``prev``/``next`` back to
    ``None``) so that it holds no list alive and is freed by reference counting.
    """

    __slots__ = ("_head", "size", "tag")

    def __init__(self, tag: int) -> None:
        head = Slot(_NO_ENTRY, 0.0)
        # The sentinel: head.prev is the most recently used slot, head.next the oldest.
        head.prev = head
        head.next = head
        self._head = head
        #: Slots held.
        self.size = 0
        self.tag = tag

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, key: str, slot: Slot) -> None:
        """Link ``slot`` (in no list) as the most recently used, kept under ``key``."""
        head = self._head
        last = head.prev
        assert last is not None
        slot.key = key
        slot.segment = self.tag
        slot.prev = last
        slot.next = head
        last.next = slot
        head.prev = slot
        self.size += 1

    def remove(self, slot: Slot) -> None:
        """Unlink ``slot``, which this list holds."""
        before = slot.prev
        after = slot.next
        assert before is not None and after is not None
        before.next = after
        after.prev = before
        slot.prev = None
        slot.next = None
        slot.segment = DETACHED
        self.size -= 1

    def move_to_end(self, slot: Slot) -> None:
        """Make ``slot``, which this list holds, the most recently used."""
        head = self._head
        last = head.prev
        if last is slot:
            return
        before = slot.prev
        after = slot.next
        assert before is not None and after is not None and last is not None
        before.next = after
        after.prev = before
        slot.prev = last
        slot.next = head
        last.next = slot
        head.prev = slot

    def oldest(self) -> Slot:
        """The least recently used slot (the list must not be empty)."""
        first = self._head.next
        assert first is not None and self.size > 0
        return first

    def pop_oldest(self) -> Slot:
        """Unlink and return the least recently used slot (the list must not be empty)."""
        first = self.oldest()
        self.remove(first)
        return first

    def oldest_keys(self, count: int) -> list[str]:
        """The keys of the ``count`` least recently used slots (fewer if the list is shorter),
        oldest first."""
        head = self._head
        keys: list[str] = []
        slot = head.next
        while slot is not None and slot is not head and len(keys) < count:
            keys.append(slot.key)
            slot = slot.next
        return keys

    def replace(self, old: Slot, new: Slot) -> None:
        """Put ``new`` (in no list) where ``old`` (held here) is, under the same key."""
        before = old.prev
        after = old.next
        assert before is not None and after is not None
        new.key = old.key
        new.segment = self.tag
        new.prev = before
        new.next = after
        before.next = new
        after.prev = new
        old.prev = None
        old.next = None
        old.segment = DETACHED

    def clear(self) -> None:
        """Unlink every slot (each is freed by reference counting once nothing else holds it)."""
        head = self._head
        slot = head.next
        while slot is not None and slot is not head:
            after = slot.next
            slot.prev = None
            slot.next = None
            slot.segment = DETACHED
            slot = after
        head.prev = head
        head.next = head
        self.size = 0
