"""Decisions written once, run by a sync or an async driver (sans-I/O).

A decision that does I/O on its way (the fence's fill, the wait for a lease) is written as a
generator that *yields* each call it needs, ``(function, arguments)``, and gets the result
back (or the exception thrown in). :func:`run` makes each call directly, for the threaded
chain; :func:`arun` awaits each one, for the asyncio chain, whose tier accessors have
coroutine methods of the same names. So the order of checks and writes that keeps a cache
coherent lives in one place, and only the I/O differs between the two faces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeAlias, TypeVar, cast

from .loops import running_task

T = TypeVar("T")

#: One call a decision asks its driver to make.
Step: TypeAlias = tuple[Callable[..., Any], tuple[Any, ...]]
#: A decision: yields steps, receives their results, returns its outcome.
Steps: TypeAlias = Generator[Step, Any, T]


def run(steps: Steps[T]) -> T:
    """Run ``steps`` with each call made directly (the threaded chain)."""
    try:
        function, arguments = next(steps)
        while True:
            try:
                result = function(*arguments)
            except BaseException as exc:
                function, arguments = steps.throw(exc)
            else:
                function, arguments = steps.send(result)
    except StopIteration as stop:
        return cast(T, stop.value)
    except BaseException:
        # Stopped here, between two steps (an interrupt: Ctrl-C, a handler's sys.exit()), or
        # by what the steps raised (then they are done): their clean-up (a with block's
        # lock, a finally) runs now, not when the collector finds them, which the exception's
        # traceback, holding this frame, delayed (tests/test_announce_interrupted.py).
        _close(steps)
        raise


async def arun(steps: Steps[T]) -> T:
    """Run ``steps`` with each call awaited (the asyncio chain: the calls are coroutines).

    The coroutine closed (its task destroyed pending with a loop closed by hand, collected),
    the steps are closed without awaiting the calls their clean-up asks for: awaiting there
    raised ``RuntimeError: coroutine ignored GeneratorExit``, an unraisable error."""
    task = running_task()
    try:
        function, arguments = next(steps)
        while True:
            try:
                result = await cast(Awaitable[Any], function(*arguments))
            except BaseException as exc:
                if isinstance(exc, GeneratorExit) and (task is None or running_task() is not task):
                    # Closed, not run by its task (which ran it until now): the collector's,
                    # or close() by hand. A call that raised GeneratorExit (a hostile
                    # loader) is an error like any other: its task still runs it.
                    _close(steps)
                    raise
                function, arguments = steps.throw(exc)
            else:
                function, arguments = steps.send(result)
    except StopIteration as stop:
        return cast(T, stop.value)


def _close(steps: Steps[Any]) -> None:
    """Close ``steps`` whose driver is closed: each call their clean-up asks for is skipped
    (``GeneratorExit`` thrown in its place), a few at most."""
    for _ in range(100):
        try:
            steps.throw(GeneratorExit())
        except (GeneratorExit, StopIteration):
            return
        except BaseException:  # what the clean-up raised instead: the driver is gone
            return
