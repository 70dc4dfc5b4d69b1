"""What a write's value checks made of its values, handed on to the write's fill.

Before a write sends anything (the source, a tier, the bus), every tier is asked
(``TierBase.prepare_value``): a value one cannot store is refused there, and a tier that
stores values in a form of its own returns that form (the Redis tier: the value encoded by its
codec). The fill of the write then hands each tier its own form as the entry's value, so a
written value is encoded once, at the check, and what is sent is what was checked. Only forms
that are not the value itself are kept: a chain whose tiers store the objects (memory) keeps
none, and its entries go to the tiers as they were made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .tier import Entry

#: ``(tier index, prepare)``: a tier's ``prepare_value``, with its place in the chain.
Prepare = tuple[int, Callable[[Any], Any]]


class Forms:
    """The forms of a write's values that are not the values themselves: by tier index, then
    by key."""

    __slots__ = ("_of",)

    def __init__(self, of: dict[int, dict[str, Any]]) -> None:
        self._of = of

    def entry(self, index: int, key: str, entry: Entry) -> Entry:
        """``entry`` as the tier at ``index`` stores it: holding its form of the value."""
        mine = self._of.get(index)
        if mine is None or key not in mine:
            return entry
        return entry.with_value(mine[key])

    def entries(self, index: int, entries: Mapping[str, Entry]) -> Mapping[str, Entry]:
        """:meth:`entry` of each of ``entries``."""
        mine = self._of.get(index)
        if mine is None:
            return entries
        return {
            key: entry.with_value(mine[key]) if key in mine else entry
            for key, entry in entries.items()
        }


def prepared(prepares: Sequence[Prepare], items: Mapping[str, Any]) -> Forms | None:
    """Every tier's ``prepare_value`` of every value of ``items`` (raises
    :class:`~tiered_cache.CodecError` for one a tier cannot store); the forms that are not the
    value itself, or None if there is none."""
    of: dict[int, dict[str, Any]] | None = None
    for key, value in items.items():
        of = _prepared(prepares, key, value, of)
    return None if of is None else Forms(of)


def prepared_one(prepares: Sequence[Prepare], key: str, value: Any) -> Forms | None:
    """:func:`prepared` of one value (a ``set``): no mapping made when no tier has a form."""
    of = _prepared(prepares, key, value, None)
    return None if of is None else Forms(of)


def _prepared(
    prepares: Sequence[Prepare], key: str, value: Any, of: dict[int, dict[str, Any]] | None
) -> dict[int, dict[str, Any]] | None:
    """The rule of both: each tier's form of ``value``, added to ``of`` (made at the first
    form) when it is not the value itself."""
    for index, prepare in prepares:
        form = prepare(value)
        if form is not value:
            if of is None:
                of = {}
            of.setdefault(index, {})[key] = form
    return of
