"""``loops.CancellationKept``: a cancellation lost inside the block (as Python 3.11's
``asyncio.wait_for`` loses one, in redis-py's send) is raised as the block ends, whether the
block then returned or failed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tiered_cache.loops import CancellationKept


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def lose_a_cancellation() -> None:
    """Cancel the running task and swallow it, as ``wait_for`` does for an awaitable that
    ended in the same tick."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)


@pytest.mark.anyio
@pytest.mark.parametrize("then", ["returned", "failed"])
async def test_a_cancellation_lost_in_the_block_is_raised_as_it_ends(then: str) -> None:
    """Seen failing for ``failed``: the block's ``ConnectionError`` came out (Redis stalled
    after the lost cancellation: the chain took it for a tier failure, read the source and
    returned the value to a cancelled caller)."""

    async def block() -> None:
        with CancellationKept():
            await lose_a_cancellation()
            if then == "failed":
                raise ConnectionError("Redis stalled")

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(block())


@pytest.mark.anyio
async def test_a_block_not_cancelled_ends_as_it_would() -> None:
    async def block() -> str:
        with CancellationKept():
            await asyncio.sleep(0)
        return "v"

    assert await asyncio.create_task(block()) == "v"
