"""A ``close()`` interrupted (Ctrl-C's ``KeyboardInterrupt``, a signal handler raising) after
its entry and before its thread began: the exit's hook must already be registered, so that
a process the interrupt ends closes the chain before it exits (:mod:`tiered_cache.closing`).

CPython runs a signal handler only where it checks for signals: entering a Python function,
after a call returns, at a loop's jump back. ``close()``'s first call registers the hook and
is written in C, so the only such instant before the registration is ``close()``'s entry,
where an interrupt stops the call before it did anything, as one landing just before the
call would: that instant is pinned as it is (the chain open, usable, nothing left behind).
A trace function raises the interrupt at each line instead: a line's start stands for the
check after the call the line before it ended with, or for the entry of its function.
"""

from __future__ import annotations

import sys
from types import CodeType, FrameType

import pytest

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.closing import CloseOnce
from tiered_cache.memory import LruPolicy
from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.held_close import SERVICE_HEAD, ClosesCounted, service_ended
from tiered_cache.testing.interrupts import Interrupted, raised_at_line

CLOSE = TieredCache.close.__code__
#: The codes a close runs until its thread has begun: close() and the close's own start.
CODES = {
    code.co_name: code for code in (CLOSE, CloseOnce.start.__code__, CloseOnce._start.__code__)
}


def close_lines() -> list[tuple[str, int]]:
    """Each line (function name, line) of :data:`CODES` a close runs, but ``close()``'s first
    (its start is its entry: the interrupt there is the one pinned below)."""
    seen: list[tuple[str, int]] = []

    def calls(frame: FrameType, event: str, arg: object) -> object:
        return lines if event == "call" and frame.f_code in CODES.values() else None

    def lines(frame: FrameType, event: str, arg: object) -> object:
        if event == "line":
            seen.append((frame.f_code.co_name, frame.f_lineno))
        return lines

    cache = TieredCache([MemoryTier()])
    sys.settrace(calls)  # type: ignore[arg-type]
    try:
        cache.close()
    finally:
        sys.settrace(None)
    first = seen[0]
    assert first[0] == "close"
    return sorted(set(seen) - {first}, key=seen.index)


LINES = close_lines()


def ctrl_c_at(name: str, line: int, raised: type[BaseException] = KeyboardInterrupt) -> object:
    """A trace function raising ``raised`` once, at ``line`` of the close's code ``name``
    (``line`` 0: as it is entered)."""
    code: CodeType = CODES[name]

    def calls(frame: FrameType, event: str, arg: object) -> object:
        if event == "call" and frame.f_code is code and not line:
            sys.settrace(None)
            raise raised
        return at_line if event == "call" and frame.f_code is code else None

    at_line = raised_at_line(line, raised)
    return calls


SERVICE = (
    SERVICE_HEAD
    + """
from {module} import ctrl_c_at
sys.settrace(ctrl_c_at({name!r}, {line}))
with cache:  # the service's main ends: Ctrl-C lands in its close
    pass
"""
)

MODULE = __name__ if __name__ != "__main__" else "test_close_interrupted_entry"


def interrupted_at(name: str, line: int) -> list[str]:
    """What the service interrupted at ``line`` of ``name`` said it closed."""
    return service_ended(SERVICE.format(module=MODULE, name=name, line=line))


@pytest.mark.parametrize(("name", "line"), LINES, ids=[f"{n}:{line}" for n, line in LINES])
def test_a_process_whose_close_is_interrupted_after_its_entry_closes_before_it_exits(
    name: str, line: int
) -> None:
    """The ``KeyboardInterrupt`` ends the process; its exit finishes the close. Seen failing
    at the lines of the close's start before it registered the exit's hook (its check that a
    close runs or is done, and the registration's own line): ``assert [] == ['source
    closed']`` (the process exited with the chain open)."""
    assert interrupted_at(name, line) == ["source closed"]


def test_a_process_whose_close_is_interrupted_as_it_is_entered_exits_with_the_chain_open() -> None:
    """Pinned (documented: no Python code can mend it): the interrupt at ``close()``'s entry
    is the interrupt before the call; nothing closes the chain as the process exits."""
    assert interrupted_at("close", 0) == []


def test_a_close_interrupted_as_it_is_entered_leaves_the_chain_as_it_was() -> None:
    """Pinned too: in a process that goes on, the chain stays open and usable after that
    interrupt, and the next ``close()`` closes it."""
    clock = FakeClock(1000.0)
    memory, source = MemoryTier(policy=LruPolicy(100), clock=clock), ClosesCounted()
    cache = TieredCache([memory], source, clock=clock)
    assert cache.get("a") == "old"
    sys.settrace(ctrl_c_at("close", 0, Interrupted))  # type: ignore[arg-type]
    try:
        with pytest.raises(Interrupted):
            cache.close()
    finally:
        sys.settrace(None)
    assert (cache.closed, source.closes, cache.get("a")) == (False, 0, "old")
    cache.close()
    assert (cache.closed, len(memory), source.closes) == (True, 0, 1)
