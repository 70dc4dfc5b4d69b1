"""The event loop an asyncio part's connections belong to, and what happens when it ends.

A ``redis.asyncio`` connection, or an aiobotocore client's aiohttp session, belongs to the loop
it was opened on. A chain kept across ``asyncio.run`` calls (a job runner that runs each job
in a loop of its own) kept the connections of the first loop, parked by the reader and pooled
by the client: the next loop's calls tried them, and each failed (``RuntimeError: Event loop
is closed``, an error of the tier for its breaker) until none was left -- 9 errors over 5
jobs; the aiobotocore source failed every call after the first loop. Once used on a loop, a
part keeps an async generator begun there: the loop's ``shutdown_asyncgens`` closes it, which
``asyncio.run`` calls (as ``asyncio.Runner`` and ``IsolatedAsyncioTestCase`` do) once the
tasks it cancelled at its end have ended, the loop still running; its ``finally`` lets go of
the part's connections then (the Redis tier's pool, the async Redis bus's listener and
publisher, the aiobotocore source's client), and the next loop opens its own.

After those tasks, not among them: the writes that end cancelled finish with an invalidation
then (:mod:`tiered_cache.write_tasks`), on the tier. A task cancelled with them (the hook this
was until then) disconnected the pool under their calls, which reconnected and left their
connections to the next loop; and a write that was the loop's first call of the tier made its
task after the cancelling, so that nothing ever let go of them (2 errors of the next loop, 40
connections left).

A loop run by hand and closed without ``shutdown_asyncgens`` never closes the generator: its
connections were tried by the next loop (the aiobotocore source failed every call with
``Event loop is closed``). The next call of the part on another loop sees the first one
closed with its end never seen, and tells the part (``abandon``): it drops what belonged to
that loop, without closing it -- a connection of a closed loop cannot be closed from another
(its transport needs its own loop), so its socket waits for the collector -- and the new loop
opens its own. A warning says so once per part, in the part's words (``left``: the owed
deletes' timer leaves a task, not connections).

The close itself is seen too, not only the next call: the async bus's listener is a task of
the loop, and a chain that only served memory hits on the next loop never called the bus
there -- the listener dead, the bus still "connected", the memory trusted after other
processes' writes until the chain's next miss or write. A hit cannot afford to look at its
loop (``asyncio.get_running_loop`` makes a ``getpid`` system call on Python 3.11, about half
the cost of the hit: docs/async.md). So each loop a part is used on holds a timer of the
part's that never fires (due at infinity), watched through a weak reference: ``loop.close()``
discards pending callbacks (documented), the timer is dropped, and the part is told at once,
on the thread that closed the loop, before anything runs on the next one (CPython frees it
there; another interpreter when it collects it, the next call of the part seeing it anyway).
The warning is logged then. A loop ended by ``asyncio.run`` drops it too, after its end let
go: nothing left to tell.

A loop run by hand and left open (``run_until_complete``, never closed) neither ends nor
closes: the part's next call on another loop found it not running and moved on, keeping that
loop's connections, which the new loop's calls tried (the Redis tier: ``got Future attached
to a different loop``, each call an error of the tier, the reads going through to the
source). A part that can close what belongs to such a loop without that loop running says
how (``leave``): it is called then, the part's connections closed without waiting and this
loop opening its own; counted (:attr:`LoopEnd.left_open`) and logged, as a warning the first
time. Without ``leave`` a part keeps them, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import weakref
from asyncio import runners
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import CodeType, FunctionType

from .logs import tier_logger

#: What a part holding connections leaves on a loop closed by hand (the warning's words).
CONNECTIONS_LEFT = (
    "that loop's connections are dropped, not closed (they need their loop), and this loop "
    "opens its own"
)
#: What a part holding connections does with those of a loop left open (the warning's words).
CONNECTIONS_CLOSED = (
    "that loop's connections are closed without waiting for it, and this loop opens its own"
)
#: When the timer that watches a loop's close is due (:meth:`LoopEnd._watch_close`): never,
#: on any clock. A year away, it came due on a clock a test moved (freezegun's, a fake-time
#: loop's), and the loop was no longer watched (tests/test_loop_end.py).
WATCH_AT = math.inf


class LoopEnd:
    """Calls ``let_go`` (a coroutine function: disconnect the connections, stop a task of
    the loop such as the bus's listener) on the loop the part is used on, when that loop
    ends; or ``abandon`` (a plain function: drop them), on the next loop, when that loop was
    closed without its end being seen. ``left``: what the warning then says is left behind.
    ``leave`` (a plain function of that loop), if given: called on the next loop when that
    loop is left open, not running; ``left_open``: what the warning then says it did.
    """

    def __init__(
        self,
        name: str,
        let_go: Callable[[], Awaitable[None]],
        abandon: Callable[[], None],
        left: str = CONNECTIONS_LEFT,
        *,
        leave: Callable[[asyncio.AbstractEventLoop], object] | None = None,
        left_open: str = CONNECTIONS_CLOSED,
    ) -> None:
        self._name = name
        self._left = left
        self._left_open = left_open
        self._let_go = let_go
        self._abandon = abandon
        self._leave = leave
        self._warned = False
        self._warned_left_open = False
        #: Times the part moved on from a loop left open, not running, telling ``leave``.
        self.left_open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The generator begun on ``_loop`` (kept: the loop only holds it weakly).
        self._hook: AsyncGenerator[None, None] | None = None
        #: Which use of a loop ``_hook`` was begun for: a loop used again after another keeps
        #: the generator of its earlier use, which ends when it runs next, and must let go
        #: of nothing then (it let go of the part under its later use: tests/test_loop_end.py).
        self._turn = 0
        #: The timer on ``_loop`` whose drop tells its close (:meth:`_watch_close`), weakly.
        self._watch: weakref.ref[asyncio.TimerHandle] | None = None

    def here(self) -> None:
        """Called by each call of the part, on its loop: one look when nothing changed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._move_to(loop)

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        previous = self._loop
        if previous is not None and self._hook is not None and previous.is_running():
            # Two loops at once (threads): the chain refuses the second loop's calls at its
            # face, before any tier (tiered_cache/loop_owner.py; the part declares
            # one_loop). A part used without a chain is not guarded: its connections stay
            # the first loop's, and redis-py fails the other's calls.
            return
        if previous is not None and self._hook is not None:
            if previous.is_closed():
                self._abandoned(previous)
            elif self._leave is not None:
                self._moved_from_open(previous, self._leave)
        # A loop left not running keeps its generator, should it ever end: told it is no
        # longer the part's loop, it lets go of nothing then.
        self._loop = loop
        self._watch_close(loop)
        self._turn += 1
        hook = self._hook = self._until_the_loop_ends(self._turn)
        # Begun here, at once (no task): the loop's first-iteration hook registers it; it
        # stops at its yield (StopIteration), where it waits to be closed.
        with contextlib.suppress(StopIteration):
            hook.asend(None).send(None)

    async def _until_the_loop_ends(self, turn: int) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if (
                self._hook is not None
                and self._turn == turn
                and self._loop is asyncio.get_running_loop()
            ):
                self._hook = None  # not stopped, nor moved on
                try:
                    await self._let_go()
                except Exception:
                    # Connections another loop opened meanwhile (two loops at once, not
                    # supported) cannot be disconnected from this one: left as they are.
                    tier_logger(self._name).debug("could not let go of a loop's connections")

    def _watch_close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the part as soon as ``loop`` is closed by hand (see the module's doc)."""
        self._unwatch()
        self._watch = when_closed(loop, self._closed_by_hand)

    def _unwatch(self) -> None:
        """The previous loop is not running (or not the part's any more): its timer is
        cancelled, not to pile up on a loop that lives on; dropped later, it tells nothing
        (that loop is no longer the part's)."""
        timer = self._watch() if self._watch is not None else None
        self._watch = None
        if timer is not None:
            timer.cancel()

    def _closed_by_hand(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop`` was closed: if it is still the part's and its end never let go, as the
        next call on another loop would have found it."""
        if loop is self._loop and self._hook is not None:
            try:
                self._abandoned(loop)
            except Exception:  # in a weak reference's callback: nobody to raise to
                tier_logger(self._name).exception("letting go of a closed loop's part failed")

    def _abandoned(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop`` was closed without ``shutdown_asyncgens``: its end never let go."""
        self._hook = None
        self._abandon()
        if not self._warned:
            self._warned = True
            tier_logger(self._name).warning(
                "%s: the event loop it was used on was closed without its shutdown_asyncgens "
                "(run by hand); %s. End a loop with asyncio.run or asyncio.Runner, or await "
                "loop.shutdown_asyncgens() before loop.close()",
                self._name,
                self._left,
            )

    def _moved_from_open(
        self,
        loop: asyncio.AbstractEventLoop,
        leave: Callable[[asyncio.AbstractEventLoop], object],
    ) -> None:
        """The part's ``loop`` is open and not running, and the part is used on another: what
        belongs to that loop is closed without it (``leave(loop)``). Should it ever end, its
        generator lets go of nothing (it is no longer the part's)."""
        self._hook = None
        leave(loop)
        self.left_open += 1
        if not self._warned_left_open:
            self._warned_left_open = True
            tier_logger(self._name).warning(
                "%s: the event loop it was used on is left open and not running (run by hand, "
                "never closed), and it is used on another: %s (counted in loops_left_open). "
                "End a loop with asyncio.run or asyncio.Runner",
                self._name,
                self._left_open,
            )

    def ended_here(self) -> bool:
        """The running loop's end has let go already (after :meth:`here` on it): something
        begun on it now would outlive what its end stops."""
        return self._hook is None and self._loop is asyncio.get_running_loop()

    def close_here(self) -> None:
        """The part closes, on the running loop: moved to it first, as by any call of the
        part (what belongs to a loop left open or closed by hand is let go of then, not
        tried from this one), then :meth:`stop`. Stopped without the move, a part last used
        on a loop left open closed its connections from the new loop: ``got Future attached
        to a different loop``, the Redis tier's close failing."""
        self.here()
        self.stop()

    def stop(self) -> None:
        """Nothing to watch any more: the part is closing (its close disconnects), or it is
        in a forked child (the parent's loop never runs there; the child's next call, on a
        loop of its own, watches that one). The generator begun on the old loop, if that
        loop ever ends, lets go of nothing (it is no longer the part's)."""
        self._hook, self._loop = None, None
        self._unwatch()


def _sweep_code() -> CodeType | None:
    """The code of the sweep of every task at the end of ``asyncio.run`` (``asyncio.Runner``'s
    close; ``IsolatedAsyncioTestCase`` and uvloop's ``run`` end through it too), a private
    function of :mod:`asyncio.runners` (3.11 to 3.14): None on a Python without it, which
    must not stop the library importing."""
    sweep = vars(runners).get("_cancel_all_tasks")
    return sweep.__code__ if isinstance(sweep, FunctionType) else None


_SWEEP = _sweep_code()


def in_final_sweep() -> bool:
    """Whether the running code runs under the sweep of every task at the end of
    ``asyncio.run`` (or ``asyncio.Runner``): a task cancelled there is on its way out with its
    loop, which closes once the tasks the sweep cancelled have ended (and its
    ``shutdown_asyncgens`` has run). A task begun from there is none of them: left pending,
    it was destroyed as the loop closed. Nothing public tells it (the loop is still running,
    the service's coroutine has returned): the sweep's frame is on the stack of whatever it
    runs, as the frame of a signal handler is (:mod:`tiered_cache.signal_frames`). Asked
    only by a caller that was cancelled, so the walk up the stack (some twenty frames) is
    paid once per cancellation, never by a call that goes on. A loop ended another way (run
    by hand, its tasks cancelled and the loop closed) is not told apart. On a Python whose
    sweep is not known (:func:`_sweep_code`), every cancellation may be the sweep's: True,
    so that nothing is begun there (a cancelled caller's load is then not begun again)."""
    if _SWEEP is None:
        return True
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _SWEEP:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def when_closed(
    loop: asyncio.AbstractEventLoop,
    told: Callable[[asyncio.AbstractEventLoop], None],
    keep: object = None,
) -> weakref.ref[asyncio.TimerHandle]:
    """Call ``told(loop)`` as soon as ``loop`` is closed (see the module's doc): a timer due
    never, held by the loop alone, which ``loop.close()`` drops. Keep the weak reference
    returned: collected, it tells nothing (and the timer held, it was never dropped).
    ``.cancel()`` on what it refers to stops the watch of a loop that lives on. ``keep``:
    held by the timer, so by the loop alone (what refers to the loop may be kept there
    without keeping it alive: :mod:`tiered_cache.left_transports`)."""
    timer = loop.call_at(WATCH_AT, _nothing, keep)
    watched = weakref.ref(loop)

    def dropped(_: object) -> None:
        closed = watched()
        if closed is not None and closed.is_closed():
            told(closed)

    return weakref.ref(timer, dropped)


def _nothing(_: object) -> None:
    """The watching timer's callback (:func:`when_closed`): it is never due."""
