"""``close()`` from a SIGTERM handler while the main thread is in the middle of a call: rounds
that hang (docs/testing.md, "close() from a signal handler").

Each round is a forked child holding one chain: memory (8 entries, so that misses and fills
keep taking its lock) -> Redis (a private ``redis-server``) with the Redis bus, loads of 0-2 ms
with a soft timeout (timed loads on workers). The child's main thread calls ``get``,
``get_many``, ``set`` and ``invalidate`` on 20 keys in a tight loop; a timer thread sends it
SIGTERM 50-300 ms in, and the handler calls ``close()``. The child reports once the handler
returned, and again once the loop has met ``ChainClosedError`` and a second ``close()`` (in
the ``finally`` of a service's main) returned. A round that reports nothing within
``--timeout`` seconds hung (the child is killed). After each round the parent counts the
leases left in Redis.

Prints one JSON line: rounds, hung (which report was missing), leases left, the calls made
and the most time a handler's close took; exits 1 if a round hung or left a lease.

Run: ``.venv/bin/python tools/signal_close.py [--rounds 200] [--timeout 10]``
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

import redis

from tiered_cache import ChainClosedError, TieredCache
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.servers import RedisServer

KEYS = [f"k{i}" for i in range(20)]


def chain(url: str, namespace: str, memory_only: bool, soft_timeout: str | None) -> TieredCache:
    memory = {"kind": "memory", "admission": "always", "max_entries": 8}
    redis_tier = {"kind": "redis", "url": url, "timeout": "1s"}
    return TieredCache.from_config(
        namespace=namespace,
        bus={"kind": "off"} if memory_only else {"kind": "redis", "url": url},
        tiers=[memory] if memory_only else [memory, redis_tier],
        protection={"lease_ttl": "30s", "lease_wait": "2s", "soft_timeout": soft_timeout},
    )


def child(url: str, namespace: str, seed: int, options: argparse.Namespace, report: Any) -> None:
    rng = random.Random(seed)
    cache = chain(url, namespace, options.memory_only, options.soft_timeout)
    calls = [0]

    def load() -> str:
        if rng.random() < options.slow_loads:
            time.sleep(rng.random() * 0.002)
        return "v"

    def on_sigterm(signum: int, frame: Any) -> None:
        started = time.perf_counter()
        cache.close()
        report({"handler": time.perf_counter() - started})

    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Timer(rng.uniform(0.05, 0.3), os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        while True:
            key = rng.choice(KEYS)
            op = rng.random()
            if op < 0.5:
                cache.get(key, load)
            elif op < 0.7:
                cache.get_many(rng.sample(KEYS, 3), lambda keys: dict.fromkeys(keys, "v"))
            elif op < 0.9:
                cache.set(key, rng.random())
            else:
                cache.invalidate(key)
            calls[0] += 1
    except ChainClosedError:
        pass
    finally:
        cache.close()
    report({"calls": calls[0]})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--slow-loads", type=float, default=0.3, help="share of 0-2 ms loads")
    parser.add_argument("--memory-only", action="store_true", help="no Redis tier, no bus")
    parser.add_argument("--soft-timeout", default="1ms", help="'none': loads on the caller")
    args = parser.parse_args()
    if args.soft_timeout == "none":
        args.soft_timeout = None
    logging.basicConfig(level=logging.CRITICAL)
    hung: Counter[str] = Counter()
    leases = calls = 0
    slowest = 0.0
    with RedisServer() as server:
        watch = redis.Redis.from_url(server.url)
        for round_ in range(args.rounds):
            namespace = f"sig{round_}"
            forked = ForkedChild(functools.partial(child, server.url, namespace, round_, args))
            try:
                handler = forked.read(timeout=args.timeout)
                if handler is None:
                    hung["child exited"] += 1
                    continue
                slowest = max(slowest, handler["handler"])
                try:
                    ended = forked.read(timeout=args.timeout)
                except TimeoutError:
                    hung["after the handler"] += 1
                    continue
                calls += ended["calls"] if ended else 0
                forked.wait()
            except TimeoutError:
                hung["in the handler"] += 1
                continue
            finally:
                forked.kill()
            leases += sum(1 for _ in watch.scan_iter(f"{{{namespace}:*}}:lease"))
        watch.close()
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "memory_only": args.memory_only,
                "soft_timeout": args.soft_timeout,
                "slow_loads": args.slow_loads,
                "hung": sum(hung.values()),
                "where": dict(hung),
                "leases_left": leases,
                "calls": calls,
                "slowest_handler_s": round(slowest, 3),
            }
        )
    )
    return 1 if hung or leases else 0


if __name__ == "__main__":
    sys.exit(main())
