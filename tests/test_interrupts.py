"""The tests' interrupt (tiered_cache.testing.interrupts) lands when it is sent."""

from __future__ import annotations

import _thread
import signal
import threading
import weakref

import pytest

from tiered_cache.testing.frames import current_frames
from tiered_cache.testing.interrupts import Interrupted, interrupting
from tiered_cache.testing.polling import until


def test_an_interrupt_sent_as_the_main_thread_blocks_is_raised_in_its_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGUSR1 that reaches the main thread after its last check for signals and before it
    blocks in a lock's wait breaks nothing: CPython runs the handler only when the wait ends.
    test_a_reader_waiting_on_an_interrupted_caller_gets_the_handed_over_load failed so, about
    1 run in 8 on a loaded machine: the caller, blocked in its timed load's Future.result,
    raised the interrupt only at its hard timeout (30 s), after the reader's own 30 s wait
    for its flight had ended (LoadTimeout, got == []). The first signal here is sent that
    way (``_thread.interrupt_main`` trips it as the signal handler does, with nothing to
    break the wait); seen failing: raised only once the releaser gave the lock, 5 s later."""
    real_kill = signal.pthread_kill
    sends: list[int] = []

    def first_one_lost(thread_id: int, signum: signal.Signals) -> None:
        sends.append(signum)
        if len(sends) == 1:
            _thread.interrupt_main(signum)  # pending, but the wait goes on
        else:
            real_kill(thread_id, signum)

    # Only the interrupt or the releaser (5 s after the start, or once the interrupt was
    # caught) ends the wait: if the interrupt did not break it, the main thread takes the
    # lock when the releaser gives it, and holds it.
    held = threading.Lock()
    held.acquire()
    caught = threading.Event()

    def releaser() -> None:
        caught.wait(5.0)
        held.release()

    def blocked() -> None:
        held.acquire()

    main = threading.main_thread().ident
    assert main is not None
    with interrupting() as interrupt:
        monkeypatch.setattr(signal, "pthread_kill", first_one_lost)

        def interrupter() -> None:
            # The main thread runs blocked() without the GIL only inside the acquire.
            until(
                lambda: current_frames()[main].f_code is blocked.__code__,
                "the main thread inside blocked()",
            )
            interrupt()

        threads = [threading.Thread(target=interrupter), threading.Thread(target=releaser)]
        for thread in threads:
            thread.start()
        try:
            with pytest.raises(Interrupted):
                blocked()
        finally:
            caught.set()
            for thread in threads:
                thread.join(10)
    assert not held.locked(), "raised only when the wait ended (the lock came)"
    assert len(sends) >= 2


def test_each_interrupt_is_raised_once() -> None:
    """The signal sent again (the first may not have broken the wait) raises nothing once
    the interrupt was raised: two interrupts, two Interrupted, and a wait after them that is
    not broken."""
    main = threading.main_thread().ident
    assert main is not None
    raised = 0
    with interrupting() as interrupt:
        for _ in range(2):
            thread = threading.Thread(target=interrupt)
            try:
                thread.start()
                threading.Event().wait(5.0)
            except Interrupted:
                raised += 1
            thread.join(10)
            # Resends that land now do nothing.
            signal.pthread_kill(main, signal.SIGUSR1)
            threading.Event().wait(0.05)
    assert raised == 2


def test_an_interrupt_landing_in_a_finalizer_is_raised_after_it() -> None:
    """CPython ignores what a finalizer raises (a weak reference's callback, a ``__del__``:
    "Exception ignored in ..."); an interrupt whose handler ran inside one was lost: counted
    raised, ``interrupt()`` returned, and the main thread went on as if never interrupted. The
    main thread runs finalizers wherever the garbage collector starts (the caches of earlier
    tests, through tiered_cache.forking's weak references):
    test_a_left_load_that_reads_its_own_key_raises_recursive_load so failed, its caller not
    interrupted (a LoadTimeout 10 s later), in 1 of 3 runs of 200 with a switch interval of
    1 microsecond. Here the main thread is in a weak reference's callback when interrupted;
    seen failing: "DID NOT RAISE", after the 5 s wait."""
    inside = threading.Event()

    class Collected:
        pass

    def finalizer(_: object) -> None:
        inside.set()
        threading.Event().wait(5.0)  # the interrupt breaks this wait, and is ignored

    with interrupting() as interrupt:
        collected = Collected()
        ref = weakref.ref(collected, finalizer)
        interrupter = threading.Thread(target=lambda: (inside.wait(5.0), interrupt()))
        interrupter.start()
        try:
            with pytest.raises(Interrupted):
                del collected  # the callback runs here, in the main thread
                threading.Event().wait(5.0)
        finally:
            interrupter.join(10)
    assert ref() is None
