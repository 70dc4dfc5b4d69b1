"""Forks of a process whose chain is busy: loads, refreshes and invalidations in other threads.

The parent builds a :class:`TieredCache` (memory then a private Redis, the Redis bus; entries
stale after ``--ttl`` seconds, served stale while a refresh runs, early refresh on) and keeps
``--threads`` threads reading ``--keys`` keys (``get`` and ``get_many``, loads of 0-30 ms) and
one thread invalidating a random key every 5 ms, so that at any instant some keys have a load
in flight, some a refresh, some a miss waiting behind an older load. Each round the main
thread forks while they run. The child (never more than ``--hang`` seconds: else counted
hung, and killed):

- reads every key (a read that joined a flight of the parent's threads would never end; the
  slowest read is shown);
- counts the clients subscribed on the server (its bus must have a connection of its own:
  the parent's and the child's, 2);
- waits for the parent's write of ``gen:<round>`` made just after the fork (``old`` before
  it, inherited in the child's memory) to reach it: counts the child's reads of ``old`` more
  than ``--bound`` seconds after the fork (stale: a bus that never told the child);
- writes ``child:<round>`` and closes its chain (a close that waited for a flight of the
  parent's would hang).

The parent then reads ``child:<round>`` (the child's write must have dropped its copy).
Prints one JSON line per round and a summary; exits 1 on any hang, error or stale read.

Run: ``.venv/bin/python tools/fork_flights.py [--rounds 10]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from tiered_cache import TieredCache
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.servers import RedisServer


def settings(url: str, ttl: float) -> dict[str, Any]:
    return {
        "namespace": f"fork-{os.getpid()}",
        "ttl": f"{int(ttl * 1000)}ms",
        "tiers": [
            {"kind": "memory", "max_entries": 20, "admission": "always"},
            {"kind": "redis", "url": url, "timeout": "1s"},
        ],
        "protection": {"max_stale": "5s", "early_refresh_beta": 2.0},
        "bus": {"kind": "redis"},
    }


def slow(key: str) -> Callable[[], str]:
    def load() -> str:
        time.sleep(random.uniform(0, 0.03))
        return f"v:{key}"

    return load


def slow_many(keys: Sequence[str]) -> dict[str, str]:
    time.sleep(random.uniform(0, 0.03))
    return {key: f"v:{key}" for key in keys}


def busy(cache: TieredCache, keys: list[str], stop: threading.Event, errors: list[str]) -> None:
    rng = random.Random()
    while not stop.is_set():
        try:
            if rng.random() < 0.7:
                key = rng.choice(keys)
                cache.get(key, slow(key))
            else:
                cache.get_many(rng.sample(keys, 3), slow_many)
        except Exception as exc:
            errors.append(type(exc).__name__)


def invalidating(cache: TieredCache, keys: list[str], stop: threading.Event) -> None:
    rng = random.Random()
    while not stop.wait(0.005):
        cache.invalidate(rng.choice(keys))


def child_body(
    cache: TieredCache, url: str, keys: list[str], round_: int, bound: float
) -> Callable[[Callable[[Any], None]], None]:
    def body(report: Callable[[Any], None]) -> None:
        forked_at = time.monotonic()
        wrong = 0
        slowest = 0.0
        for key in keys:
            started = time.monotonic()
            wrong += cache.get(key, slow(key)) != f"v:{key}"
            slowest = max(slowest, time.monotonic() - started)
        client = redis.Redis.from_url(url)
        subscribed = sum(1 for entry in client.client_list() if int(entry.get("sub", 0) or 0) > 0)
        stale = 0
        seen = None
        while time.monotonic() - forked_at < bound + 1.0:
            seen = cache.get(f"gen:{round_}", lambda: "missing")
            if seen == "old" and time.monotonic() - forked_at > bound:
                stale += 1
            if seen == "new":
                break
            time.sleep(0.01)
        cache.set(f"child:{round_}", "child")
        cache.close()
        client.close()
        report(
            {
                "wrong": wrong,
                "slowest_read_s": round(slowest, 3),
                "subscribed": subscribed,
                "stale": stale,
                "last": seen,
                "new_after_s": round(time.monotonic() - forked_at, 2),
            }
        )

    return body


def one_round(
    cache: TieredCache, url: str, keys: list[str], round_: int, args: Any
) -> dict[str, Any]:
    cache.set(f"gen:{round_}", "old")
    assert cache.get(f"gen:{round_}") == "old"  # in memory: the child inherits it
    cache.set(f"child:{round_}", "parent")
    assert cache.get(f"child:{round_}") == "parent"
    forked = ForkedChild(child_body(cache, url, keys, round_, args.bound))
    cache.set(f"gen:{round_}", "new")
    row: dict[str, Any] = {"round": round_}
    try:
        row.update(forked.read(timeout=args.hang) or {"error": "no report"})
        status = forked.wait()
        if status:
            row["error"] = f"exit {status}"
    except TimeoutError:
        row["hung"] = True
    deadline = time.monotonic() + args.bound
    parent_saw = cache.get(f"child:{round_}")
    while parent_saw != "child" and time.monotonic() < deadline:
        time.sleep(0.01)
        parent_saw = cache.get(f"child:{round_}")
    row["parent_saw_child_write"] = parent_saw == "child"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--keys", type=int, default=30)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--ttl", type=float, default=0.2, help="freshness, s")
    parser.add_argument("--bound", type=float, default=3.0, help="bus + disconnected bound, s")
    parser.add_argument("--hang", type=float, default=30.0, help="a child silent this long, s")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    bad = 0
    with RedisServer() as server:
        cache = TieredCache.from_config(**settings(server.url, args.ttl))
        keys = [f"k{n}" for n in range(args.keys)]
        stop = threading.Event()
        errors: list[str] = []
        threads = [
            threading.Thread(target=busy, args=(cache, keys, stop, errors))
            for _ in range(args.threads)
        ]
        threads.append(threading.Thread(target=invalidating, args=(cache, keys, stop)))
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        for round_ in range(args.rounds):
            row = one_round(cache, server.url, keys, round_, args)
            print(json.dumps(row), flush=True)
            bad += bool(
                row.get("hung")
                or row.get("error")
                or row.get("wrong")
                or row.get("stale")
                or row.get("last") != "new"
                or row.get("subscribed") != 2
                or not row["parent_saw_child_write"]
            )
        stop.set()
        for thread in threads:
            thread.join(30)
        cache.close()
        print(json.dumps({"rounds": args.rounds, "bad_rounds": bad, "parent_errors": errors[:5]}))
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
