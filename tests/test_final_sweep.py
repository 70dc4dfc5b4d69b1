"""``in_final_sweep``: told from the stack of a task that ``asyncio.run``'s end cancelled, and
safe on a Python whose sweep it does not know."""

from __future__ import annotations

import asyncio

import pytest

from tiered_cache import loop_end
from tiered_cache.loop_end import in_final_sweep


async def asks_while_running_and_when_cancelled(seen: list[bool]) -> None:
    """Records ``in_final_sweep()`` as it starts and again when it is cancelled."""
    seen.append(in_final_sweep())
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        seen.append(in_final_sweep())
        raise


def seen_by_a_task_left_to_the_sweep() -> tuple[bool, bool]:
    """What a task asks while running and again when ``asyncio.run``'s sweep cancels it."""
    seen: list[bool] = []

    async def service() -> None:
        asyncio.get_running_loop().create_task(asks_while_running_and_when_cancelled(seen))
        await asyncio.sleep(0)  # the task starts, then the service returns and leaves it

    asyncio.run(service())
    assert len(seen) == 2, seen
    return seen[0], seen[1]


def test_the_sweep_is_known_on_this_python() -> None:
    assert loop_end._sweep_code() is not None


def test_a_task_cancelled_by_the_sweep_is_told_apart_from_a_running_one() -> None:
    assert seen_by_a_task_left_to_the_sweep() == (False, True)


def test_a_task_cancelled_by_its_caller_is_not_in_the_sweep() -> None:
    seen: list[bool] = []

    async def service() -> None:
        task = asyncio.get_running_loop().create_task(asks_while_running_and_when_cancelled(seen))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(service())
    assert seen == [False, False]


def test_a_python_without_the_known_sweep_takes_every_cancellation_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing is begun again then (as before loads were begun again for cancelled callers).
    monkeypatch.setattr(loop_end, "_SWEEP", None)
    assert in_final_sweep() is True
    assert seen_by_a_task_left_to_the_sweep() == (True, True)
