"""A chain's bus attacked while it starts: rounds in which a copy the chain's memory took before
its first subscription outlives a write made meanwhile (docs/testing.md, "The bus's start").

Each round builds a reader chain (memory, 10 minutes -> Redis) whose bus has a redis-server of
its own, fills ``k`` into the reader's memory while that bus server cannot confirm the
subscription, changes ``k`` in the data server around the cache (no announcement: only the
subscription's confirmation can drop the copy), lets the bus server go and reads ``k`` once
subscribed. ``max_stale_when_disconnected`` is 60 s, so what drops the copy is the
confirmation, not the bound. Attacks:

- ``stop``: the bus server SIGSTOPped for ``--hold`` seconds (shorter than ``bus.timeout``, 1 s:
  a slow start; longer: a first subscription that fails), then SIGCONTed.
- ``kill``: the bus server SIGSTOPped, then SIGKILLed mid-handshake and restarted.
- ``fork``: the bus server SIGSTOPped, the process forked right after the chain was built and
  filled; the child fills its own copy, the parent changes ``k``, SIGCONT; both read.

Prints one JSON line per attack (the fork's parent and child apart): rounds, stale reads (the
old value read once subscribed), the states ``stats()["bus"]`` showed just after the build, and
``bus_disconnects`` counted; exits 1 if any read was stale.

Run: ``.venv/bin/python tools/bus_start.py [--rounds 5] [--hold 0.3]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from typing import Any

from tiered_cache import TieredCache
from tiered_cache.testing.servers import RedisServer

#: Long enough that a subscription confirmed within it is waited for, not retried.
SUBSCRIBED_WITHIN = 15.0


def reader(data: RedisServer, bus: RedisServer, namespace: str) -> TieredCache:
    return TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "admission": "always", "ttl": "10m"},
            {"kind": "redis", "url": data.url, "timeout": "1s"},
        ],
        ttl="10m",
        bus={
            "kind": "redis",
            "url": bus.url,
            "health_check_interval": "1s",
            "timeout": "1s",
            "max_stale_when_disconnected": "60s",
        },
    )


def write_around(data: RedisServer, namespace: str) -> None:
    """``k`` changed in Redis by a chain without a bus: nothing is announced."""
    writer = TieredCache.from_config(
        namespace=namespace,
        tiers=[{"kind": "redis", "url": data.url, "timeout": "1s"}],
        ttl="10m",
        bus={"kind": "off"},
    )
    writer.set("k", "new")
    writer.close()


def subscribed(cache: TieredCache) -> bool:
    link = cache._bus_link
    assert link is not None
    return bool(link.bus.wait_subscribed(SUBSCRIBED_WITHIN))  # type: ignore[union-attr]


def outcome(cache: TieredCache, first: str) -> dict[str, Any]:
    """What the reader reads once subscribed, and what it showed and counted."""
    ok = subscribed(cache)
    stats = cache.stats()
    return {
        "subscribed": ok,
        "read": cache.get("k", lambda: "never"),
        "first": first,
        "disconnects": stats["bus_disconnects"],
    }


def stopped_start(data: RedisServer, bus: RedisServer) -> tuple[TieredCache, str, str, int]:
    """The bus server SIGSTOPped, a reader built (its state then) with ``k`` in its memory:
    the reader, that state, its namespace and the bus server's pid."""
    namespace = f"bus-start-{uuid.uuid4().hex[:8]}"
    pid = bus.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    cache = reader(data, bus, namespace)
    first = cache.stats()["bus"]
    cache.get("k", lambda: "old")
    return cache, first, namespace, pid


def stop_round(data: RedisServer, bus: RedisServer, hold: float) -> list[dict[str, Any]]:
    cache, first, namespace, pid = stopped_start(data, bus)
    try:
        write_around(data, namespace)
        time.sleep(hold)
    finally:
        os.kill(pid, signal.SIGCONT)
    result = outcome(cache, first)
    cache.close()
    return [result]


def kill_round(data: RedisServer, bus: RedisServer) -> list[dict[str, Any]]:
    cache, first, namespace, _ = stopped_start(data, bus)
    write_around(data, namespace)
    bus.kill()
    bus.start()
    result = outcome(cache, first)
    cache.close()
    return [result]


def fork_round(data: RedisServer, bus: RedisServer) -> tuple[dict[str, Any], dict[str, Any]]:
    cache, first, namespace, pid = stopped_start(data, bus)
    filled_read, filled_write = os.pipe()
    go_read, go_write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            child_first = cache.stats()["bus"]
            cache.get("k", lambda: "old")
            os.write(filled_write, b"x")
            os.read(go_read, 1)
            report = outcome(cache, child_first)
            os.write(filled_write, json.dumps(report).encode())
        except BaseException:
            code = 1
        os._exit(code)
    try:
        os.read(filled_read, 1)
        write_around(data, namespace)
    finally:
        os.kill(pid, signal.SIGCONT)
        os.write(go_write, b"x")
    parent = outcome(cache, first)
    _, status = os.waitpid(child, 0)
    line = os.read(filled_read, 65536)
    for fd in (filled_read, filled_write, go_read, go_write):
        os.close(fd)
    cache.close()
    if status != 0:
        failed = {"subscribed": False, "read": "child failed", "first": "", "disconnects": 0}
        return parent, failed
    return parent, json.loads(line)


def summary(attack: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "attack": attack,
        "reads": len(results),
        "stale": sum(1 for result in results if result["read"] != "new"),
        "not_subscribed": sum(1 for result in results if not result["subscribed"]),
        "first_state": dict(Counter(result["first"] for result in results)),
        "disconnects": dict(Counter(str(result["disconnects"]) for result in results)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hold", type=float, default=0.3, help="seconds SIGSTOPped (stop)")
    args = parser.parse_args(argv)
    # The listener's and the chain's warnings of a failed first subscription are expected.
    logging.basicConfig(level=logging.CRITICAL)
    stale = 0
    with RedisServer() as data, RedisServer() as bus:
        rows: dict[str, list[dict[str, Any]]] = {
            f"stop {args.hold}s": [],
            "stop 3s": [],
            "kill": [],
            "fork: parent": [],
            "fork: child": [],
        }
        for _ in range(args.rounds):  # the attacks in turns
            rows[f"stop {args.hold}s"] += stop_round(data, bus, args.hold)
            rows["stop 3s"] += stop_round(data, bus, 3.0)
            rows["kill"] += kill_round(data, bus)
            parent, child = fork_round(data, bus)
            rows["fork: parent"].append(parent)
            rows["fork: child"].append(child)
        for attack, results in rows.items():
            line = summary(attack, results)
            stale += line["stale"] + line["not_subscribed"]
            print(json.dumps(line))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
