"""A copy past its freshness that a read found, and where it was found."""

from __future__ import annotations

from typing import NamedTuple

from .tier import Entry


class StaleCopy(NamedTuple):
    """A stale copy a read found (still servable: before its hard expiry), kept with the
    place of the tier it was found in, which decides where a fail-safe rest on it may be
    written (``Fence.rest_targets``). Made only when a read finds such a copy, never on a
    plain miss or hit."""

    entry: Entry
    #: The place of the tier the copy was found in.
    found_in: int
