"""Checks of a settings model that ship with tiered-cache, for adapters' tests too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from ..errors import ConfigError


def bools_taken_as_something_else(
    model: type[BaseModel], path: str, table_with: Callable[[str, Any], Any]
) -> list[str]:
    """The fields of ``model`` that take ``true`` for something else than a bool (pydantic's
    lax mode reads it as 1 for a number); each should keep it (a bool field) or refuse it
    with a :class:`ConfigError` naming ``path.<field>``.

    Args:
        model: the settings table.
        path: where the table sits (``tiered_cache.tiers[0]``).
        table_with: ``table_with(name, value)``: the table read back from settings loaded
            with ``value`` in its field ``name`` (raises ConfigError if they are refused).
    """
    wrong = []
    for name in model.model_fields:
        try:
            table = table_with(name, True)
        except ConfigError as exc:
            if not str(exc).startswith(f"{path}.{name}:"):
                wrong.append(f"{name} (refused, but the error says: {exc})")
            continue
        taken = getattr(table, name)
        if taken is not True:
            wrong.append(f"{name} (took true as {taken!r})")
    return wrong
