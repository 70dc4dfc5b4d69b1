"""A write takes each key's lease once: the commands Redis saw, counted with ``MONITOR``.

A write-through ``set`` steals the key's lease (one ``SET ... PX``), then fills under it (one
script call that writes the value and drops the lease while the token holds); on these chains,
which have no source, the write is a plain ``SET`` whose ``UNLINK`` drops the lease (the value
is the only copy: Redis orders such writes by their own ``SET``). Whether it takes
the lease is decided once (``ChainPaths.write_leased``, ``set_many``'s ``leased``); a second
steal would hand the key a new token between the first and the fill, and a steal left over
would hold every other process's read of the key for ``lease_wait``.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.testing.servers import RedisServer


class Commands:
    """What clients sent Redis naming a lease key of ``namespace``: per key, by command name
    (a script's call counts once, not the commands it runs)."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self.by_key: dict[str, Counter[str]] = {}

    def saw(self, command: str) -> None:
        words = command.split()
        for word in words[1:]:
            if word.startswith("{" + self._namespace) and word.endswith(":lease"):
                key = word[1:].split("}", 1)[0].rsplit(":", 1)[-1]
                self.by_key.setdefault(key, Counter())[words[0].upper()] += 1

    def steals(self) -> dict[str, int]:
        return {key: seen["SET"] for key, seen in self.by_key.items()}


@contextmanager
def monitored(server: RedisServer, namespace: str) -> Iterator[Commands]:
    """The commands naming lease keys of ``namespace`` sent to ``server`` within the block."""
    seen = Commands(namespace)
    stop = f"end-of-monitor-{uuid.uuid4().hex}"
    ready = threading.Event()
    client = redis.Redis(host=server.host, port=server.port, decode_responses=True)

    def listen() -> None:
        with client.monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                if stop in entry["command"]:
                    return
                if entry.get("client_type") != "lua":  # not the commands a script runs
                    seen.saw(entry["command"])

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield seen
    finally:
        other = redis.Redis(host=server.host, port=server.port)
        other.echo(stop)
        other.close()
        thread.join(10)
        client.close()
    assert not thread.is_alive(), "MONITOR never saw the end of the block"


def settings(server: RedisServer, namespace: str) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": server.url, "timeout": "5s"},
        ],
        "bus": {"kind": "off"},
    }


async def warm() -> int:
    return 0


def no_lease_left(server: RedisServer, namespace: str) -> bool:
    client = redis.Redis(host=server.host, port=server.port)
    try:
        return not any(b":lease" in name for name in client.scan_iter("{" + namespace + "*"))
    finally:
        client.close()


WRITES: dict[str, Callable[[TieredCache], None]] = {
    "set": lambda cache: cache.set("a", 1),
    "set_many": lambda cache: cache.set_many({"a": 1, "b": 2, "c": 3}),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_steals_each_keys_lease_once_and_fills_under_it(
    redis_server: RedisServer, namespace: str, write: str
) -> None:
    with TieredCache.from_config(**settings(redis_server, namespace)) as cache:
        cache.get(
            "warm", lambda: 0
        )  # connected, scripts loaded: the block sees the write's commands alone
        with monitored(redis_server, namespace) as commands:
            WRITES[write](cache)
        keys = ["a"] if write == "set" else ["a", "b", "c"]
        assert commands.steals() == dict.fromkeys(keys, 1)
        # Each key: the steal, then the write that drops the lease (this chain has no source:
        # its write is a plain SET with the lease's UNLINK, see Fence._write_sole).
        assert {key: sum(seen.values()) for key, seen in commands.by_key.items()} == dict.fromkeys(
            keys, 2
        )
        assert cache.stats()["lease_lost"] == 0
    assert no_lease_left(redis_server, namespace)


@pytest.mark.anyio
@pytest.mark.parametrize("write", list(WRITES))
async def test_an_async_write_steals_each_keys_lease_once_and_fills_under_it(
    redis_server: RedisServer, namespace: str, write: str
) -> None:
    cache = AsyncTieredCache.from_config(**settings(redis_server, namespace))
    try:
        await cache.get("warm", warm)
        with monitored(redis_server, namespace) as commands:
            if write == "set":
                await cache.set("a", 1)
            else:
                await cache.set_many({"a": 1, "b": 2, "c": 3})
        keys = ["a"] if write == "set" else ["a", "b", "c"]
        assert commands.steals() == dict.fromkeys(keys, 1)
        assert {key: sum(seen.values()) for key, seen in commands.by_key.items()} == dict.fromkeys(
            keys, 2
        )
        assert cache.stats()["lease_lost"] == 0
    finally:
        await cache.aclose()
    assert no_lease_left(redis_server, namespace)
