"""An announcement too large for the bus goes as a clear, not as a message that cuts every
subscriber off.

Redis cuts a subscriber off once the replies queued for it pass its output buffer's limit
(``client-output-buffer-limit pubsub``, 32 MB by default). An ``invalidate_many`` of 200,000
keys of 200 characters (41 MB), or a ``set`` of one 40 MB key, was published whole: every
process on the bus, the writer's own included, was cut off (its memory dropped, counted as an
outage), none heard the message, and the publish itself could time out. A message longer than
the Redis buses' ``MAX_MESSAGE_BYTES`` is now sent as a clear of the same sender and number
(``Invalidation.encode``): every other process drops its in-process copies, as for a message it
missed, and stays subscribed. The server here has a limit of 4 MB, so a 5 MB announcement shows
what 41 MB does on a default server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from tiered_cache_redis.bus import MAX_MESSAGE_BYTES

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.bus import Invalidation
from tiered_cache.testing.polling import async_eventually, until
from tiered_cache.testing.servers import RedisServer

#: 50,000 keys of 100 characters: a message of about 5.2 MB, past the server's 4 MB.
MANY = [f"big:{n:096d}" for n in range(50_000)]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--client-output-buffer-limit", "pubsub 4mb 2mb 60"]) as small:
        yield small


def settings(url: str, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always", "ttl": "10m"},
            {"kind": "redis", "url": url, "timeout": "5s"},
        ],
        "ttl": "10m",
        "bus": {"kind": "redis", "timeout": "5s"},
    }


def bus_counts(stats: dict[str, Any]) -> list[Any]:
    return [stats["bus"], stats["bus_disconnects"], stats["bus_received"]]


def test_an_invalidation_too_large_for_one_message_is_heard_as_a_clear(
    server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = TieredCache.from_config(**settings(server.url, namespace))
    reader = TieredCache.from_config(**settings(server.url, namespace))
    try:
        until(lambda: writer.stats()["bus"] == reader.stats()["bus"] == "connected", "both up")
        assert reader.get(MANY[0], lambda: "old") == "old"
        assert reader.get("unrelated", lambda: "kept?") == "kept?"
        caplog.set_level(logging.WARNING, logger="tiered_cache.bus")
        writer.invalidate_many(MANY)
        until(
            lambda: reader.stats()["bus_received"] or reader.stats()["bus_disconnects"],
            "the reader hears the invalidation, or is cut off",
        )
        assert [bus_counts(reader.stats()), bus_counts(writer.stats())] == [
            ["connected", 0, 1],
            ["connected", 0, 0],
        ]
        assert writer.stats()["bus_sent"] == 1
        # The reader's memory went whole: the key of the batch and the other one alike.
        assert reader.stats()["tiers"][0]["entries"] == 0
        assert reader.get(MANY[0], lambda: "new") == "new"
        said = [record for record in caplog.records if record.event == "bus_sent_as_clear"]
        assert len(said) == 1 and "50000 key(s)" in said[0].getMessage()
        assert MANY[0] not in said[0].getMessage()  # keys are never logged raw
    finally:
        writer.close()
        reader.close()


def test_the_asyncio_chain_announces_a_large_invalidation_as_a_clear(
    server: RedisServer, namespace: str
) -> None:
    async def main() -> None:
        writer = AsyncTieredCache.from_config(**settings(server.url, namespace))
        reader = AsyncTieredCache.from_config(**settings(server.url, namespace))

        async def old() -> str:
            return "old"

        async def new() -> str:
            return "new"

        try:
            await reader.get("unrelated", old)  # starts the reader's bus
            await writer.get("unrelated", old)
            assert await async_eventually(
                lambda: writer.stats()["bus"] == reader.stats()["bus"] == "connected"
            )
            reader.tiers[0].clear()  # type: ignore[union-attr]
            assert await reader.get(MANY[0], old) == "old"
            await writer.invalidate_many(MANY)
            assert await async_eventually(
                lambda: reader.stats()["bus_received"] or reader.stats()["bus_disconnects"]
            )
            assert [bus_counts(reader.stats()), bus_counts(writer.stats())] == [
                ["connected", 0, 1],
                ["connected", 0, 0],
            ]
            assert await reader.get(MANY[0], new) == "new"
        finally:
            await writer.aclose()
            await reader.aclose()

    asyncio.run(main())


def test_a_message_within_the_bound_is_sent_as_it_is() -> None:
    fits = Invalidation("me", 7, tuple(MANY[:100]), ("p:",), at=1.5)
    assert Invalidation.decode(fits.encode(MAX_MESSAGE_BYTES)) == fits
    over = Invalidation("me", 8, tuple(MANY), ("p:",), at=1.5)
    assert Invalidation.decode(over.encode(MAX_MESSAGE_BYTES)) == Invalidation("me", 8, clear=True)
    assert Invalidation.decode(over.encode()) == over  # no bound: the transport takes any
