"""The leases the loads and writes in flight hold, and what a close gives back.

A lease handed on (used by a fill, given back, taken over) is no longer held; a load that
ended is forgotten, its leases not given back again by a close; a forked child forgets the
parent's loads and keeps track of its own.
"""

from __future__ import annotations

from typing import Any, cast

from tiered_cache.fence import ChainTier
from tiered_cache.held_leases import HeldLeases, Holdings


class Leasing:
    """The one call the give-back makes of a leasing tier."""

    def release_leases(self, tokens: dict[str, str]) -> None:
        raise AssertionError("the steps are listed, not run")


def given_back(holdings: Holdings) -> list[Any]:
    """The tokens a close would give back, one call's worth per step."""
    return [args[0] for _, args in holdings.give_back_all()]


def test_a_lease_handed_on_is_no_longer_held() -> None:
    held = HeldLeases()
    held.took({"a": "ta", "b": "tb"})
    held.hand_on(["a"])
    assert held.tokens() == {"b": "tb"}


def test_a_close_gives_back_only_what_loads_in_flight_hold() -> None:
    holdings = Holdings(cast(ChainTier, Leasing()))
    ended, running = holdings.hold(), holdings.hold()
    ended.took({"a": "ta"})
    running.took({"b": "tb"})
    holdings.let_go(ended)
    holdings.let_go(None)  # a call that held nothing
    assert given_back(holdings) == [{"b": "tb"}]
    assert running.tokens() == {}  # handed on once given back


def test_a_forked_child_forgets_the_parents_loads_and_holds_its_own() -> None:
    holdings = Holdings(cast(ChainTier, Leasing()))
    holdings.hold().took({"a": "ta"})
    holdings.forget_all()
    holdings.hold().took({"b": "tb"})
    assert given_back(holdings) == [{"b": "tb"}]
