"""The connections a test opened on its redis-server, counted with ``CLIENT LIST``, for the
tests of what a close leaves open."""

from __future__ import annotations

import asyncio

import redis


def opened_since(watch: redis.Redis, before: set[int]) -> list[str]:
    """The commands last run by the connections opened since ``before`` (the ids then)."""
    return sorted(
        str(client["cmd"]) for client in watch.client_list() if int(client["id"]) not in before
    )


async def no_connection_opened_since(watch: redis.Redis, before: set[int]) -> list[str]:
    """The connections opened since ``before`` still open once the server had time to see the
    last ones close (it reads a closed socket on its next pass: polled, 10 s at most)."""
    for _ in range(1000):
        left = opened_since(watch, before)
        if not left:
            break
        await asyncio.sleep(0.01)
    return left
