"""Single-flight: concurrent calls for one key share one execution."""

from __future__ import annotations

import threading
from _thread import LockType, allocate_lock
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final, Generic, Protocol, TypeVar

from .errors import LoadTimeout, RecursiveLoad, caused, handed_on
from .locks import Lock
from .tier import MISSING


class LeaderGone(Exception):
    """The caller leading a flight was interrupted (its asyncio task cancelled, a
    ``KeyboardInterrupt``) before the flight had an outcome. The interruption is the leader's
    own: its waiters get this instead, and start over (one of them leads)."""


class WaitExpired(Exception):
    """A wait for a flight ran out (:meth:`Flight.wait`, :meth:`Flight.settle`): told apart
    from the flight's own outcome, which may be a ``TimeoutError`` too (a source's). Taken
    for the wait's expiry, a source's timeout reached the flight's waiters as a bare
    ``AssertionError`` (no join timeout) or a ``LoadTimeout`` naming a wait that never
    happened."""


class RefreshFailed(LeaderGone):
    """The background refresh leading a flight failed. Its failure is the refresh's (the read
    that started it was served the stale value; a failed refresh leaves the stale value, or
    rests the source): the flight's waiters, reads that missed meanwhile, start over as after a
    :class:`LeaderGone`, one of them loading with its own fail-safe."""


def refresh_failed(error: BaseException) -> RefreshFailed:
    """What the waiters of a refresh's flight are given when the refresh ends with ``error``."""
    return RefreshFailed(f"the background refresh loading this key failed ({type(error).__name__})")


def _for_waiters(error: BaseException | None) -> BaseException | None:
    """What the waiters of a flight that ended with ``error`` are given."""
    if error is None or isinstance(error, Exception):
        return error
    return LeaderGone(f"the caller leading this flight was interrupted ({type(error).__name__})")


def recursive_load(key: str) -> RecursiveLoad:
    """The error of a caller that would join the flight it leads itself (its loader read the
    key it loads): it would wait for its own result for ever."""
    return RecursiveLoad(
        f"the load of {key!r} read {key!r} again (its loader, or something it calls, reads "
        "the key it loads): it would wait for itself for ever"
    )


class Behalf:
    """Work a caller handed to a worker, and the callers waiting for it now. A timed load
    runs its loader on a thread (the threaded chain) or a task (asyncio) of its own, not on
    the caller that leads the key's flight. While a caller waits for the work, a flight it
    leads is the worker's own: joining it, the worker would wait for the caller, which waits
    for the worker. The caller that handed the work over stops waiting when it serves the
    stale value, times out or is interrupted; the work goes on, and the key's next miss may
    join it and wait for it in turn (:meth:`waited_by`): the worker then works for that miss.
    Between the two it works for nobody, and a flight its first caller leads later is another
    load, to join as any caller would."""

    __slots__ = ("_lock", "waits")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The callers waiting for the work now (replaced whole, read without the lock).
        self.waits: tuple[Wait, ...] = ()

    def waited_by(self, caller: object) -> Wait:
        """``caller`` (the running thread's id, or task) waits for this work until it calls
        :meth:`Wait.ended`."""
        wait = Wait(self, caller, _BEHALF.get())
        with self._lock:
            self.waits = (*self.waits, wait)
        return wait

    def _drop(self, wait: Wait) -> None:
        with self._lock:
            self.waits = tuple(other for other in self.waits if other is not wait)


class Wait:
    """One caller waiting for a :class:`Behalf`'s work."""

    __slots__ = ("caller", "parent", "work")

    def __init__(self, work: Behalf, caller: object, parent: Behalf | None) -> None:
        self.work = work
        #: The caller's thread id (threads) or task (asyncio): what its flights' leader is.
        self.caller = caller
        #: What the caller itself works for, if it is a worker too (a timed load's loader
        #: reading another key that is loaded timed in turn).
        self.parent = parent

    def ended(self) -> None:
        """The caller stopped waiting for the work (once or more: the same)."""
        self.work._drop(self)


#: The work the running code does for waiting callers (:func:`act_for`); None: its own.
_BEHALF: ContextVar[Behalf | None] = ContextVar("tiered_cache_behalf", default=None)


def hand_over(caller: object) -> Wait:
    """New work that ``caller`` (the running thread's id, or task) hands to a worker and
    waits for: the worker calls :func:`act_for` with the wait's ``work``, the caller
    :meth:`Wait.ended` when it stops waiting."""
    return Behalf().waited_by(caller)


def act_for(work: Behalf) -> None:
    """The running worker (a thread or task of its own: its context is its own) does
    ``work``."""
    _BEHALF.set(work)


def _works_here() -> list[Behalf]:
    """The work the running code does, and, at any depth, the work of each caller waiting
    for it (a worker's caller may be a worker too): every work that waits for this code."""
    mine = _BEHALF.get()
    if mine is None:
        return []
    works = [mine]
    walked = 0
    while walked < len(works):  # grows as it goes; a work met twice is not walked twice
        for wait in works[walked].waits:
            parent = wait.parent
            if parent is not None and not any(parent is seen for seen in works):
                works.append(parent)
        walked += 1
    return works


def own_flight(leader: object, here: object) -> bool:
    """Whether a flight led by ``leader`` is the caller's own, which it may not join (it
    would wait for itself for ever): the caller ``here`` (its thread's id, or its task;
    None outside a task) leads it, or works for a caller that leads it and waits for the
    work (a timed load's worker, at any depth: :class:`Behalf`). The one rule of both
    flights (threads and asyncio)."""
    if here is not None and leader == here:
        return True
    return any(wait.caller == leader for work in _works_here() for wait in work.waits)


def own_work(work: Behalf) -> bool:
    """Whether ``work`` (a timed load its caller left, which a miss of its key would join)
    is the running code's own, or the work of a caller waiting for it: joining it, the code
    would wait for itself (its loader read its own key)."""
    return any(mine is work for mine in _works_here())


def waited_too_long(key: str, wait: float) -> str:
    """The message of a reader that stopped waiting for another caller's load of ``key``."""
    return (
        f"waited {wait}s for another caller's load of {key!r} (the hard timeout, and the "
        "lease wait with leases); that load goes on"
    )


class Flight:
    """One execution in progress; waiters block on it and get its outcome."""

    __slots__ = ("_latches", "_leader", "error", "landed", "refresh", "result", "tag", "waiters")

    def __init__(self, tag: int = 0) -> None:
        # One latch per wait, made by the waiter: a raw lock it holds, and the landing lets go
        # of (Condition.wait's own shape, without the Condition). The list is made by the
        # first caller that joins (under the table's lock): most flights, one per miss, have
        # none. Not an Event: its set() is Python code taking the Condition's lock, and a stop
        # raised there (KeyboardInterrupt, a task queue's time limit) left that lock held or
        # the event unset: every waiter waited for ever. Not one lock each waiter takes and
        # passes on: a waiter stopped as its acquire returned kept it, and the others waited
        # for ever. A latch is its waiter's alone, and letting go of it is one C call.
        self._latches: list[LockType] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        #: The outcome is published (:attr:`result`, :attr:`error`): a landing again keeps it.
        self.landed = False
        self.waiters = 0
        #: What the leader passed in (the chain: its fence mark, taken before the flight).
        self.tag = tag
        #: Led by a background refresh (:meth:`FlightTable.lead_after`, under the table's lock).
        self.refresh = False
        # Made by the caller that leads it (SingleFlight.run, FlightTable.claim).
        self._leader = threading.get_ident()

    def led_here(self) -> bool:
        """Whether this flight is the calling thread's own (:func:`own_flight`): joining
        it, it would wait for itself."""
        return own_flight(self._leader, threading.get_ident())

    def join(self) -> None:
        """A caller will :meth:`wait` for this flight. Called under the table's lock while the
        flight is in the table: the leader takes it out under the same lock before it lands,
        so it sees the latches of every waiter."""
        if self._latches is None:
            self._latches = []
        self.waiters += 1

    def land(self, result: Any, error: BaseException | None) -> None:
        """Deliver the outcome: every waiter wakes up. Called once the flight is out of the
        table (no caller can join it any more), by the construct that claimed it, and again
        by it if a stop (an exception raised into its thread) broke the first landing: the
        outcome published first stays, and every latch not let go yet is let go. No Python
        code runs from the outcome's publication to the last waiter's wake-up (a stop can
        land only as a call returns, or a frame is entered), and a landing again finishes
        what a stop cut short."""
        if not self.landed:
            if error is not None:
                # A copy as the error stands now: the leader's raise goes on adding its
                # caller's frames to the error's traceback, which are not the waiters'.
                error = handed_on(error)
            self.result = result
            self.error = error
            self.landed = True
        latches = self._latches
        if latches is not None:
            # Each waiter's own latch, let go of once: held, it is not let go of yet (or its
            # waiter took it again, woken: letting go of it again wakes nobody).
            for latch in latches:
                if latch.locked():
                    latch.release()

    def _latched(self, timeout: float | None) -> bool:
        """Wait until the flight lands (after :meth:`join`); False if it has not within
        ``timeout`` seconds (None: no limit)."""
        latches = self._latches
        assert latches is not None, "wait() without join()"
        if self.landed:
            return True
        latch = allocate_lock()
        latch.acquire()
        # Put where the landing lets go of it, then the outcome looked at again: a landing
        # that ran before the append found it landed already (its flag is set before it
        # walks the latches).
        latches.append(latch)
        if self.landed:
            return True
        return latch.acquire(True, -1 if timeout is None else timeout)

    def settle(self, timeout: float | None = None) -> None:
        """Wait until the flight lands, whatever its outcome (after :meth:`join`): a caller
        that may not take it (an invalidation came since it read) waits for it to end before
        loading the key itself. :class:`WaitExpired` if it has not landed in ``timeout``."""
        if not self._latched(timeout):
            raise WaitExpired

    def wait(self, timeout: float | None = None) -> Any:
        """The outcome, once the flight lands (after :meth:`join`); :class:`WaitExpired`
        if it has not landed within ``timeout`` seconds (None: no limit)."""
        if not self._latched(timeout):
            raise WaitExpired
        if self.error is not None:
            raise handed_on(self.error)  # a copy: the others raise theirs (see handed_on)
        return self.result


class Landing(Protocol):
    """A flight as the table needs it (:class:`Flight`, or the asyncio chain's)."""

    tag: int
    waiters: int
    #: Led by a background refresh: a reader reads beside it before it joins it
    #: (:data:`BESIDE`).
    refresh: bool

    def join(self) -> None:
        """A caller will wait for this flight (called under the table's lock)."""
        ...

    def led_here(self) -> bool:
        """Whether this flight is the caller's own (:func:`own_flight`): its thread or
        asyncio task leads it, or works for the caller that does."""
        ...

    def land(self, result: Any, error: BaseException | None) -> None: ...


F = TypeVar("F", bound=Landing)

#: How many times :meth:`FlightTable.land` lands its flights while a stop (an exception raised
#: into the landing thread: a second Ctrl-C as the leader lands after its first, a task
#: queue's time limit) breaks the landing: landed again at once, told the stop, which is then
#: raised. The leader's own handler of a first stop lands again too, but a stop inside that
#: landing left the flight unlanded (its waiters waited for ever); here only the loop's own
#: steps are left to a stop on the pure core, and nothing on the compiled one. Bounded: a
#: landing that failed by itself (it never does) would fail for ever.
LANDINGS: Final = 3

#: ``may_join(key, tag)``: whether a caller may take the outcome of the key's flight in
#: progress, led with ``tag`` (the chain: :meth:`~tiered_cache.fence.Fence.may_join`, no
#: invalidation of the key since that flight's fence mark); if not, it waits behind it.
MayJoin = Callable[[str, int], bool]

#: What :meth:`FlightTable.join_or_lead` and :meth:`FlightTable.lead_after` tell their caller
#: to do with the flight they return.
LEAD = 0
JOIN = 1
BEHIND = 2
#: :meth:`FlightTable.lead_after`: the caller leads the key's flight already.
OWN = 3
#: :meth:`FlightTable.join_or_lead` asked ``beside``: the key's flight is a background
#: refresh's, not joined. The reader reads the tiers without loading (it may hold a copy it can
#: serve: a stale one within ``max_stale``, or a fresh one in a slower tier, which a reader
#: waiting for the refresh would not be served until its load ended); only if it finds nothing
#: to serve does it ask again, not ``beside``, and join the refresh's flight or wait behind it
#: (one load of a key at a time still holds).
BESIDE = 4


class FlightTable(Generic[F]):
    """The flights in progress, by key: claiming, landing and looking them up (shared by the
    threaded :class:`SingleFlight` and the asyncio chain's)."""

    def __init__(self, flight_type: Callable[[int], F]) -> None:
        self._lock = Lock()  # librt's, taken with ``with``: see MemoryCore.__init__
        self._flights: dict[str, F] = {}
        self._new = flight_type

    def claim(
        self,
        keys: Sequence[str],
        *,
        tag: int = 0,
        may_join: MayJoin | None = None,
        into: dict[str, F] | None = None,
    ) -> tuple[dict[str, F], dict[str, F], dict[str, F]]:
        """For a batch: ``(led, joined, behind)``. The caller now leads a new flight for each
        key in ``led`` (``into``, if given: each is put there before the table, for
        :class:`Leading`) and must :meth:`land` every one of them; ``joined`` are flights that
        others run, to wait on and take the outcome of; ``behind`` are flights in progress that
        ``may_join`` (as :meth:`join_or_lead`'s) says may not be joined: the caller waits for
        each to land, not taking its outcome, and claims its key again (one load of a key at a
        time). A background refresh's flight is joined as any other (never :data:`BESIDE`): a
        batch claims only keys it read the tiers for and found nothing it serves (a stale copy
        is served without a batch loader; with one, it is loaded, and the refresh's load is
        that load)."""
        led: dict[str, F] = into if into is not None else {}
        joined: dict[str, F] = {}
        behind: dict[str, F] = {}
        with self._lock:
            for key in keys:
                flight, role = self._take(key, tag, False, may_join, into=led)
                if role == OWN:
                    for mine in led:  # nothing of this claim stays in the table
                        del self._flights[mine]
                    led.clear()
                    raise recursive_load(key)
                if role == JOIN:
                    joined[key] = flight
                elif role == BEHIND:
                    behind[key] = flight
                # LEAD: in ``led`` already (_take put it there before the table)
        return led, joined, behind

    def join_or_lead(
        self,
        key: str,
        *,
        tag: int,
        may_join: MayJoin | None = None,
        beside: bool = False,
        lead: F | None = None,
    ) -> tuple[F, int]:
        """``(flight, role)`` for one key (either face's miss): :data:`LEAD` (a new flight
        this caller leads: ``lead``, if given, made by the caller before it asked, so that
        whatever stops it from this step on knows which flight to land, :meth:`land_one`),
        :data:`JOIN` (the key's flight in progress, which
        ``may_join(key, its tag)`` allows), :data:`BEHIND` (the key's flight in progress that
        may not be joined: wait for it to land, not taking its outcome, and ask again) or,
        asked ``beside``, :data:`BESIDE` (the key's flight is a background refresh's, not
        joined: see :data:`BESIDE`)."""
        with self._lock:
            flight, role = self._take(key, tag, beside, may_join, lead=lead)
            if role == OWN:
                raise recursive_load(key)
            return flight, role

    def lead_after(self, key: str, *, tag: int, lead: F | None = None) -> tuple[F, int]:
        """``(flight, role)`` for a load of ``key`` that takes no other caller's outcome (a
        background refresh: a reader's flight may end with the stale value it served, and the
        refresh is what renews it), yet runs beside no other load of the key:
        :data:`LEAD` (a new flight, which the caller lands, marked :attr:`Landing.refresh`:
        readers that find it read beside it first, and those that find nothing to serve join
        it if the fence lets them, or wait behind it), :data:`BEHIND` (the key's flight in
        progress: wait for it to land, then ask again) or :data:`OWN` (the caller leads the
        key's flight already: a refresh run inline by the read that started it loads inside
        that read's flight). ``lead``: as :meth:`join_or_lead`'s."""
        with self._lock:
            flight, role = self._take(key, tag, False, None, lead=lead)
            if role == LEAD:
                flight.refresh = True
            return flight, BEHIND if role == JOIN else role

    def _take(
        self,
        key: str,
        tag: int,
        beside: bool,
        may_join: MayJoin | None,
        *,
        lead: F | None = None,
        into: dict[str, F] | None = None,
    ) -> tuple[F, int]:
        """Under the lock: a new flight of ``key`` (:data:`LEAD`: ``lead`` if given; put in
        ``into``, if given, before the table), the caller's own
        (:data:`OWN`), a refresh's that a reader asking ``beside`` reads beside
        (:data:`BESIDE`, not joined), or another's, joined: to take its outcome
        (:data:`JOIN`), or, if ``may_join(key, its tag)`` says no, to wait behind
        (:data:`BEHIND`). The one place that decides whether a caller joins a flight."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._new(tag) if lead is None else lead
            if into is not None:
                into[key] = flight  # the caller's first: nothing claimed is unknown to it
            self._flights[key] = flight
            return flight, LEAD
        if flight.led_here():
            return flight, OWN
        if beside and flight.refresh:
            return flight, BESIDE
        flight.join()
        if may_join is not None and not may_join(key, flight.tag):
            return flight, BEHIND
        return flight, JOIN

    def land(
        self, flights: Mapping[str, F], results: Mapping[str, Any], error: BaseException | None
    ) -> None:
        """End flights taken with :meth:`claim`: each gets its result, or ``error`` (a
        :class:`LeaderGone` if that is the leader's interruption). A flight its caller made to
        lead its key and was stopped before it had it, or before it landed it, lands with the
        stop too: one the table never held has nobody waiting; one whose landing the stop
        broke (out of the table, its waiters not woken) is landed again, and its waiters,
        told the stop, start over. A stop inside this landing lands them again here
        (:data:`LANDINGS`), then is raised."""
        try:
            self._land_all(flights, results, error)
        except BaseException as stop:
            self._land_stopped(flights, stop)
            raise

    def land_one(self, key: str, flight: F, result: Any, error: BaseException | None) -> None:
        """:meth:`land` for one flight (a miss's path: no dicts to build)."""
        try:
            if error is not None:
                error = _for_waiters(error)
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.land(result, error)
        except BaseException as stop:
            self._land_stopped({key: flight}, stop)
            raise

    def _land_stopped(self, flights: Mapping[str, F], stop: BaseException) -> None:
        """Land ``flights`` again, told ``stop``, which broke their landing: again as long as
        a stop breaks it, :data:`LANDINGS` landings in all (the outcome a flight published
        first stays: :meth:`Landing.land`)."""
        for _ in range(LANDINGS - 1):
            try:
                self._land_all(flights, {}, stop)
                return
            except BaseException as again:
                stop = again

    def _land_all(
        self, flights: Mapping[str, F], results: Mapping[str, Any], error: BaseException | None
    ) -> None:
        """One landing of ``flights`` (:meth:`land`'s, and each of :meth:`_land_stopped`'s):
        out of the table, each still there (a newer flight may have replaced it), then each
        landed with its result, or all with ``error``."""
        error = _for_waiters(error)
        with self._lock:
            for key, flight in flights.items():
                if self._flights.get(key) is flight:
                    del self._flights[key]
        for key, flight in flights.items():
            flight.land(None if error is not None else results.get(key), error)

    def leading(self) -> Leading[F]:
        """An empty :class:`Leading`: the flights of a batch this caller will lead."""
        return Leading(self)

    def in_flight(self, key: str) -> F | None:
        """The flight running for ``key``, if any."""
        with self._lock:
            return self._flights.get(key)


class Leading(Generic[F]):
    """The flights of a batch one caller leads, from the step the table gives each to it until
    it lands: the one owner of their landing. :meth:`claim` puts each new flight here before
    the table's lock is let go, so whatever stops the caller after that step (an interrupt as
    the claim returns, before the batch's load began or during it, a cancellation, its steps
    closed) finds it here: leaving the ``with`` block lands every flight not landed yet, with
    what stopped the caller (its waiters are told :class:`LeaderGone` for an interrupt, and
    start over). Claimed before a ``try`` that landed them, a flight a stop left in the table
    made every later read of its key by that thread a :class:`RecursiveLoad`, and every other
    thread's read of it waited for ever."""

    __slots__ = ("_table", "flights")

    def __init__(self, table: FlightTable[F]) -> None:
        self._table = table
        #: The flights claimed and not landed yet, by key.
        self.flights: dict[str, F] = {}

    def claim(
        self, keys: Sequence[str], *, tag: int = 0, may_join: MayJoin | None = None
    ) -> tuple[dict[str, F], dict[str, F]]:
        """:meth:`FlightTable.claim` into :attr:`flights`: ``(joined, behind)``."""
        _, joined, behind = self._table.claim(keys, tag=tag, may_join=may_join, into=self.flights)
        return joined, behind

    def land(self, results: Mapping[str, Any], errors: Mapping[str, BaseException]) -> None:
        """Land the flights of the keys of ``results``, each with its value, and of
        ``errors``, each with its error."""
        flights = self.flights
        if results:
            self._table.land({key: flights[key] for key in results}, results, None)
        for key, error in errors.items():
            self._table.land_one(key, flights[key], None, error)
        # Forgotten once landed: a stop before lands them again (see FlightTable.land).
        for key in results:
            del flights[key]
        for key in errors:
            del flights[key]

    def __enter__(self) -> Leading[F]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: object,
    ) -> None:
        if self.flights:
            if error is None:  # every flight is landed by its load: a safety net, not a path
                error = LeaderGone("the batch leading this key ended without its outcome")
            self._table.land(self.flights, {}, error)
            self.flights = {}


class SingleFlight(FlightTable[Flight]):
    """Runs ``fn`` once per key at a time; other callers for that key wait for its outcome.

    If ``fn`` raises, every waiter gets the same exception, and nothing is kept: the next call
    runs ``fn`` again. If its caller is interrupted, the waiters start over instead.
    """

    def __init__(self) -> None:
        super().__init__(Flight)

    def run(
        self,
        key: str,
        fn: Callable[..., Any],
        *args: Any,
        tag: int = 0,
        may_join: MayJoin | None = None,
        wait: float | None = None,
        beside: Callable[..., Any] | None = None,
        joined: Callable[..., object] | None = None,
    ) -> tuple[Any, bool]:
        """``(result, shared)``: ``fn(flight, *args)`` run once for every caller that comes
        while it runs; shared is True when this caller waited for another's call. (Arguments,
        not a closure: the chain runs one flight per miss.) ``joined(*args)`` is called as this
        caller joins another's call, whatever its outcome (the chain counts the wait: counted
        from ``shared``, the waiters of a load that failed were not).

        ``may_join(key, tag)``: whether a flight in progress, led with ``tag``, may still be
        joined (the chain: no invalidation of the key since it started); if not, this caller
        waits for it to land without taking its outcome, then leads a new flight or joins the
        one another such caller leads: one call of ``fn`` per key at a time, always. ``wait``:
        the longest a caller waits for another's call (to join it, or for it to end), then
        :class:`~tiered_cache.LoadTimeout` (None: no limit). ``beside(flight, *args)``: what
        a caller that finds a background refresh's flight does first, instead of joining it
        (:data:`BESIDE`; ``flight`` is this caller's own, not in the table: its ``tag``): its
        result is this caller's (not shared), unless it is ``MISSING`` (nothing to serve):
        then the caller joins the refresh's flight, or waits behind it, as any other.
        """
        # The flight this caller leads if the key has none: made before the claim, and the
        # claim and the landing inside one try, so that whatever stops the caller from the
        # step the table holds it (an interrupt as setdefault or join_or_lead returns, or as
        # the landing is called, or inside it) lands it (:meth:`land_one`).
        flight = Flight(tag)
        try:
            # Leading takes no lock (a miss leads its flight, nearly always): setdefault is one
            # step under the GIL for a str key (its hash and compare run no Python code).
            # Joining, and waiting behind a flight that may not be joined, start under the
            # lock, as landing does (join_or_lead, the asyncio chain's too).
            current = self._flights.setdefault(key, flight) if type(key) is str else None
            while current is not flight:
                current, role = self.join_or_lead(
                    key, tag=tag, may_join=may_join, beside=beside is not None, lead=flight
                )
                if role == LEAD:
                    break  # this caller leads the key's flight now: its own
                if role == BESIDE:
                    assert beside is not None
                    served = beside(flight, *args)
                    if served is not MISSING:
                        return served, False
                    beside = None  # nothing to serve: join the refresh, or wait behind it
                    current = None
                    continue
                try:
                    if role == BEHIND:
                        # Its outcome may be what an invalidation since removed: not ours to
                        # take, but a second load beside it would be a second read of the key.
                        current.settle(wait)
                        current = None
                        continue
                    if joined is not None:
                        joined(*args)
                    return current.wait(wait), True
                except LeaderGone:
                    current = None  # its leader was interrupted: lead, or join the next leader
                except WaitExpired:
                    assert wait is not None
                    raise caused(LoadTimeout(waited_too_long(key, wait)), None) from None
            result = fn(flight, *args)
            self.land_one(key, flight, result, None)
        except BaseException as exc:
            self.land_one(key, flight, None, exc)
            raise
        return result, False
