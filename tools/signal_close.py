"""``close()`` from a SIGTERM handler while the main thread is in the middle of a call, and
closes beside it or interrupted: rounds that hang or leave the chain half closed
(docs/testing.md, "close() from a signal handler" and "the threaded face's close").

Each round is a forked child holding one chain: memory (8 entries, so that misses and fills
keep taking its lock) -> Redis (a private ``redis-server``) with the Redis bus, loads of 0-2 ms
with a soft timeout (timed loads on workers). The child's main thread calls ``get``,
``get_many``, ``set`` and ``invalidate`` on 20 keys in a tight loop; a timer thread sends it
SIGTERM 50-300 ms in, and then (``--how``):

- ``signal``: the handler calls ``close()``; the loop meets ``ChainClosedError`` and a second
  ``close()`` (in the ``finally`` of a service's main) follows.
- ``twice``: the same, and the timer thread, as a shutdown hook, calls ``close()`` too, right
  after the signal.
- ``ctrl-c``: the handler only asks the loop to stop (a graceful shutdown); the loop's
  ``finally`` closes; the timer thread sends SIGINT 0-20 ms after SIGTERM (Ctrl-C's
  ``KeyboardInterrupt``, landing in the close or around it). The child then ends as the
  interpreter does: it waits for its threads that are not daemons, then runs its ``atexit``
  hooks (the parent's servers' left out).

The child reports once the handler returned (not with ``ctrl-c``), and again at its end,
with what was still open (the memory tier holding entries, the Redis tier answering, the
bus's listener thread alive) when the main thread's ``close()`` returned, and, with
``twice``, when the hook's did. A round that reports nothing within ``--timeout`` seconds
hung (the child is killed). After each round the parent counts the leases left in Redis.

Prints one JSON line: rounds, hung (which report was missing), leases left, rounds that
left something open (by what, and where), the calls made and the most time a handler's close
took; exits 1 if a round hung or left a lease or anything open.

Run: ``.venv/bin/python tools/signal_close.py [--rounds 200] [--timeout 10] [--how signal]``
"""

from __future__ import annotations

import argparse
import atexit
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
from collections.abc import Callable
from typing import Any

import redis

from tiered_cache import ChainClosedError, MemoryTier, TieredCache
from tiered_cache.breaker import GuardedTier
from tiered_cache.testing import servers
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


def left_open(cache: TieredCache) -> list[str]:
    """What of the chain is still open: a memory tier holding entries (a close empties it),
    a tier answering a read (a closed one refuses it), the bus's listener thread alive. A
    tier behind its circuit breaker is read past the breaker: calls failing on the closed
    tier (a write in flight as the chain closed, this probe) open it, and its
    ``CircuitOpen`` says nothing of the tier (it was counted open, in 3 rounds of 300)."""
    left = []
    for tier in cache.tiers:
        if isinstance(tier, MemoryTier):
            if len(tier):
                left.append(tier.name)
            continue
        inner = tier.tier if isinstance(tier, GuardedTier) else tier
        try:
            inner.get("probe")
        except Exception as exc:
            if "is closed" in str(exc):
                continue
        left.append(tier.name)
    if any(thread.name.startswith("tiered-cache-bus") for thread in threading.enumerate()):
        left.append("bus")
    return left


def child(url: str, namespace: str, seed: int, options: argparse.Namespace, report: Any) -> None:
    rng = random.Random(seed)
    cache = chain(url, namespace, options.memory_only, options.soft_timeout)
    calls = [0]
    stop = threading.Event()
    hook_left: list[str] = []

    def load() -> str:
        if rng.random() < options.slow_loads:
            time.sleep(rng.random() * 0.002)
        return "v"

    def on_sigterm(signum: int, frame: Any) -> None:
        if options.how == "ctrl-c":
            stop.set()
            return
        started = time.perf_counter()
        cache.close()
        report({"handler": time.perf_counter() - started})

    def terminate() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        if options.how == "twice":
            cache.close()
            hook_left.extend(left_open(cache))
        elif options.how == "ctrl-c":
            time.sleep(rng.uniform(0, 0.02))
            os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Timer(rng.uniform(0.05, 0.3), terminate).start()
    left: list[str] = []  # when the main thread's close() returned (not interrupted)
    try:
        ends(cache, rng, load, stop, calls)
        left = left_open(cache)
    except KeyboardInterrupt:
        pass
    while True:
        try:
            # What the interpreter's exit does first: wait for the threads that are not
            # daemons, after the exit hooks of concurrent.futures' pools; then the atexit
            # hooks (a close stopped as it started its thread finishes there). Not the
            # parent's: its servers are the parent's to stop.
            threading._shutdown()  # type: ignore[attr-defined]
            atexit.unregister(servers._stop_all_at_exit)
            atexit._run_exitfuncs()
            break
        except KeyboardInterrupt:  # landed here: once only (one SIGINT)
            continue
    report(
        {
            "calls": calls[0],
            "left_open": left,
            "left_at_exit": left_open(cache),
            "hook_left_open": hook_left,
        }
    )


def ends(
    cache: TieredCache,
    rng: random.Random,
    load: Callable[[], str],
    stop: threading.Event,
    calls: list[int],
) -> None:
    """The service's main: calls until the chain is closed or it is told to stop, then
    ``close()``."""
    try:
        while not stop.is_set():
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--slow-loads", type=float, default=0.3, help="share of 0-2 ms loads")
    parser.add_argument("--memory-only", action="store_true", help="no Redis tier, no bus")
    parser.add_argument("--soft-timeout", default="1ms", help="'none': loads on the caller")
    parser.add_argument("--how", choices=["signal", "twice", "ctrl-c"], default="signal")
    args = parser.parse_args()
    if args.soft_timeout == "none":
        args.soft_timeout = None
    logging.basicConfig(level=logging.CRITICAL)
    hung: Counter[str] = Counter()
    left: Counter[str] = Counter()
    leases = calls = left_rounds = 0
    slowest = 0.0
    with RedisServer() as server:
        watch = redis.Redis.from_url(server.url)
        for round_ in range(args.rounds):
            namespace = f"sig{round_}"
            forked = ForkedChild(functools.partial(child, server.url, namespace, round_, args))
            try:
                if args.how != "ctrl-c":
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
                if ended is None:
                    hung["child exited"] += 1
                    continue
                calls += ended["calls"]
                found = {
                    f"{where}: {part}"
                    for where in ("left_open", "left_at_exit", "hook_left_open")
                    for part in ended[where]
                }
                left.update(found)
                left_rounds += bool(found)
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
                "how": args.how,
                "memory_only": args.memory_only,
                "soft_timeout": args.soft_timeout,
                "slow_loads": args.slow_loads,
                "hung": sum(hung.values()),
                "where": dict(hung),
                "leases_left": leases,
                "rounds_left_open": left_rounds,
                "left_open": dict(left),
                "calls": calls,
                "slowest_handler_s": round(slowest, 3),
            }
        )
    )
    return 1 if hung or leases or left_rounds else 0


if __name__ == "__main__":
    sys.exit(main())
