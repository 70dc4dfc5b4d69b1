"""What the chain's state machines share (it needs hypothesis): the read check against the
source's history and the rule that runs the background refreshes they hold back
(tests/test_chain_model.py, adapters/redis/tests/test_redis_two_chain_model.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from .clock import FakeClock
from .sources import DictSource


class SourceModel(RuleBasedStateMachine):
    """A machine whose chains read ``source`` on ``clock``: a value read is one the source
    held within ``bound`` seconds, and the current one for a key in ``exact`` (written or
    invalidated through the cache since the source last changed around it)."""

    def __init__(self, clock: FakeClock, bound: float) -> None:
        super().__init__()
        self.clock = clock
        self.bound = bound
        self.source = DictSource(clock=clock)
        #: Background refreshes, held until :meth:`run_background_refreshes` runs them.
        self.pending: list[Callable[[], None]] = []
        self.exact: set[str] = set()

    def check(self, key: str, value: Any) -> None:
        now = self.clock()
        bound = self.bound
        assert self.source.held_within(key, value, now - bound, now), (
            f"{key} -> {value!r}: the source did not hold that value in the last {bound}s"
        )
        if key in self.exact:
            assert value == self.source.items.get(key), f"{key}: expected the current value"

    @precondition(lambda self: bool(self.pending))
    @rule()
    def run_background_refreshes(self) -> None:
        tasks, self.pending[:] = list(self.pending), []
        for task in tasks:
            task()
