"""A blocking call awaited from a thread of its own, which the end of the event loop does not
wait for (:func:`in_own_thread`).

``asyncio.to_thread`` runs its call in the loop's default executor, whose threads the end of
``asyncio.run`` joins (``shutdown_default_executor``: without limit before Python 3.12), once
every task has ended; and the interpreter's exit joins every executor's threads. A call stuck
there (a threaded bus's publish on a stalled Redis, its publisher with no socket timeout)
held the loop's end until Redis resumed, though every task had stopped waiting for it. A
daemon thread of its own is joined by neither: the caller bounds its own wait, and the call
ends by itself, or with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

__all__ = ["in_own_thread"]

T = TypeVar("T")


async def in_own_thread(function: Callable[..., T], *args: Any, name: str) -> T:
    """``function(*args)`` in a daemon thread named ``name``, awaited (the context copied, as
    ``asyncio.to_thread`` does). Cancelled, the wait ends; the call goes on, its outcome
    dropped."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def call() -> None:
        try:
            result = context.run(function, *args)
        except BaseException as exc:
            told = partial(_raised, outcome, exc)
        else:
            told = partial(_returned, outcome, result)
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(told)

    threading.Thread(target=call, name=name, daemon=True).start()
    return await outcome


def _returned(outcome: asyncio.Future[T], result: T) -> None:
    if not outcome.done():  # not given up (cancelled) meanwhile
        outcome.set_result(result)


def _raised(outcome: asyncio.Future[Any], exc: BaseException) -> None:
    if not outcome.done():
        outcome.set_exception(exc)
