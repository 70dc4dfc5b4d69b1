"""Tests read other threads' frames without deadlocking the interpreter
(tiered_cache.testing.frames)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: A child whose garbage collector runs while it reads the threads' frames (a cycle is
#: collected as the frame objects are made), with a finalizer that lets another thread take
#: the GIL and start a thread meanwhile.
CHILD = textwrap.dedent(
    """
    import gc, threading
    from tiered_cache.testing.frames import current_frames

    inside, go, parked = threading.Event(), threading.Event(), threading.Event()

    class Cycle:
        def __del__(self):
            inside.set()  # run by the collector, inside current_frames()
            go.wait(5)  # the GIL is let go while this waits

    def starter():
        inside.wait(30)
        threading.Thread(target=lambda: None).start()  # a thread state: the head lock
        go.set()

    waiters = [threading.Thread(target=parked.wait, args=(30,)) for _ in range(20)]
    for waiter in waiters:
        waiter.start()  # frames that current_frames() makes objects of
    threading.Thread(target=starter, daemon=True).start()
    gc.collect()
    cycle = Cycle()
    cycle.me = cycle
    del cycle
    gc.set_threshold(8)  # a collection within the first frame objects made
    frames = current_frames()
    parked.set()
    inside.set()
    go.set()
    print(len(frames) >= 21, gc.isenabled())
    """
)


def test_reading_the_frames_as_the_collector_would_run_returns() -> None:
    """CPython 3.11 before 3.11.9 (gh-106883): ``sys._current_frames()`` ran the collector
    while holding the runtime's head lock; a finalizer let the GIL go, another thread took it
    and started a thread (the head lock), and every thread waited for the GIL for ever. A
    test that polled the frames hung so, pytest's timeout included (it needs the GIL):
    test_a_left_load_that_reads_its_own_key_raises_recursive_load, 50 minutes under a
    mutation run. Seen failing with ``sys._current_frames()`` in the child: the child never
    printed, killed after the 60 s guard."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.split()) == (0, ["True", "True"]), done.stderr
