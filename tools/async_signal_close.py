"""``aclose()`` of the asyncio chain from a signal handler while calls are in flight, and
cancellations around it: rounds that hang or leave something behind (docs/testing.md,
"Adversarial pass: the asyncio face's close").

Each round is a forked child running ``asyncio.run`` over one chain: memory (8 entries) ->
Redis (a private ``redis-server``, through the fault proxy of ``tiered_cache.testing``)
with the Redis bus, leases on, loads of 0-2 ms. 16 coroutines call ``get``, ``get_many``,
``set``, ``invalidate`` and a decorated function on 20 keys, each call under
``asyncio.timeout`` of 0-20 ms or in a ``TaskGroup`` with a sibling that fails at once; a
few loaders cancel themselves or raise ``KeyboardInterrupt``. A timer thread sends SIGTERM
50-300 ms in; the handler (``--how``):

- ``loop``: installed with ``loop.add_signal_handler``, starts ``cache.aclose()`` in a task
  and tells the service to stop; the service's ``async with`` closes too.
- ``signal``: installed with ``signal.signal`` (Python runs it between two steps of the
  loop's thread), the same.
- ``cancel``: ``signal.signal``, cancels the service's main task (as ``asyncio.run`` does on
  Ctrl-C), which cancels its workers; its ``async with`` closes.
- ``twice``: as ``loop``, and a second SIGTERM 0-20 ms later starts a second ``aclose()``.

With ``--stall``, the proxy holds every reply (``delay``) from 20 ms before the signal,
Redis is SIGSTOPped at the signal, and the parent SIGKILLs and restarts it 0.3 s later
(the connections then counted are those opened since; none if the server did not answer).

After the service's coroutine returned, the child reports: calls by outcome, errors that are
neither ``ChainClosedError`` nor a cancellation nor the hostile loaders' own, the chain's
connections still open on the server (``CLIENT LIST``, by client name), tasks left besides
the main one, unraisable exceptions and warnings seen, and whether a ``get`` of a key after
the close was refused. The parent counts the leases left in Redis. A round that reports
nothing within ``--timeout`` seconds hung (the child is killed).

Prints one JSON line per round kind and a total; exits 1 if a round hung or left anything.

Run: ``.venv/bin/python tools/async_signal_close.py [--rounds 50] [--how loop] [--stall]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from typing import Any

import redis

from tiered_cache import AsyncTieredCache, ChainClosedError
from tiered_cache.testing.forked import ForkedChild
from tiered_cache.testing.servers import FaultProxy, RedisServer

KEYS = [f"k{i}" for i in range(20)]


def chain(url: str, namespace: str) -> AsyncTieredCache:
    return AsyncTieredCache.from_config(
        namespace=namespace,
        bus={"kind": "redis", "url": url},
        tiers=[
            {"kind": "memory", "admission": "always", "max_entries": 8},
            {"kind": "redis", "url": url, "timeout": "200ms"},
        ],
        protection={"lease_ttl": "30s", "lease_wait": "1s"},
    )


def server_connections(url: str) -> list[str] | None:
    """The commands last run by the connections open on the server but this one (the
    round's child is the only other client), once the server had time to see the closed ones
    go (polled, 2 s at most); None if the server did not answer (down or restarting)."""
    watch = redis.Redis.from_url(url, socket_timeout=2)
    try:
        mine = watch.client_id()
        for _ in range(200):
            left = [str(c["cmd"]) for c in watch.client_list() if int(c["id"]) != mine]
            if not left:
                break
            time.sleep(0.01)
        return left
    except redis.RedisError:
        return None
    finally:
        watch.close()


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` (a TaskGroup's groups flattened)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


class Round:
    """One round's service, in the child: the chain, its callers, the signal handler."""

    def __init__(self, url: str, namespace: str, seed: int, options: argparse.Namespace) -> None:
        self.url, self.namespace, self.options = url, namespace, options
        self.rng = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.refused_after = False
        #: The last call of each worker, for the cancellations a call lost.
        self.last: dict[asyncio.Task[Any] | None, str] = {}

    async def load(self) -> str:
        draw = self.rng.random()
        if draw < self.options.hostile / 2:
            raise asyncio.CancelledError  # a loader that cancels itself
        if draw < self.options.hostile:
            raise KeyboardInterrupt  # a loader that raises a BaseException
        if draw < 0.3:
            await asyncio.sleep(self.rng.random() * 0.002)
        return "v"

    async def load_many(self, keys: list[str]) -> dict[str, str]:
        return dict.fromkeys(keys, "v")

    async def one_call(self, cache: AsyncTieredCache, decorated: Any) -> None:
        rng, key, op = self.rng, self.rng.choice(KEYS), self.rng.random()
        name = (
            "get" if op < 0.4 else "get_many" if op < 0.55 else "set" if op < 0.75 else
            "invalidate" if op < 0.85 else "decorated"
        )  # fmt: skip
        self.last[asyncio.current_task()] = name
        if name == "get":
            await cache.get(key, self.load)
        elif name == "get_many":
            await cache.get_many(rng.sample(KEYS, 3), self.load_many)
        elif name == "set":
            await cache.set(key, rng.random())
        elif name == "invalidate":
            await cache.invalidate(key)
        else:
            await decorated(rng.randrange(5))

    async def beside_a_failing_sibling(self, cache: AsyncTieredCache, decorated: Any) -> None:
        async def sibling_fails() -> None:
            raise ValueError("a sibling failed")

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.one_call(cache, decorated))
                group.create_task(sibling_fails())
        except* ValueError:
            self.outcomes["sibling failed"] += 1

    async def worker(self, cache: AsyncTieredCache, decorated: Any, stop: asyncio.Event) -> None:
        here = asyncio.current_task()
        assert here is not None
        rng, outcomes = self.rng, self.outcomes
        while not stop.is_set():
            grouped = rng.random() < 0.2
            # Python 3.11's TaskGroup leaves its parent's count of cancellations up by one
            # when a child failed: a call is checked against the count before it.
            before = here.cancelling()
            try:
                if grouped:
                    await self.beside_a_failing_sibling(cache, decorated)
                else:
                    async with asyncio.timeout(rng.random() * 0.02):
                        await self.one_call(cache, decorated)
                outcomes["served"] += 1
                if not grouped and here.cancelling() > before:
                    # Cancelled (the timeout, or the "cancel" handler's) and nothing raised:
                    # the call lost its cancellation.
                    outcomes[f"error: cancel lost in {self.last.get(here)}"] += 1
                    return
            except BaseException as caught:
                if isinstance(caught, asyncio.CancelledError) and here.cancelling():
                    raise  # the service's own (the "cancel" handler)
                if self.count(caught):
                    return
            await asyncio.sleep(0)

    def count(self, caught: BaseException) -> bool:
        """Count what a call raised; True if the chain refused it (closed)."""
        refused = False
        for exc in leaves(caught):
            if isinstance(exc, ChainClosedError):
                refused = True
            elif isinstance(exc, TimeoutError):
                self.outcomes["timed out"] += 1
            elif isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                self.outcomes["hostile"] += 1  # the loaders' own
            else:
                self.outcomes[f"error {type(exc).__name__}: {exc}"[:120]] += 1
        if refused:
            self.outcomes["refused"] += 1
        return refused

    def install(self, cache: AsyncTieredCache, stop: asyncio.Event) -> set[asyncio.Task[None]]:
        """The SIGTERM handler (``--how``); the tasks of the closes it starts."""
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        closes: set[asyncio.Task[None]] = set()

        def close_aside() -> None:
            task = loop.create_task(cache.aclose())
            closes.add(task)
            task.add_done_callback(closes.discard)
            stop.set()

        if self.options.how in ("loop", "twice"):
            loop.add_signal_handler(signal.SIGTERM, close_aside)
        elif self.options.how == "signal":
            signal.signal(signal.SIGTERM, lambda *_: close_aside())
        else:

            def cancel_main() -> None:
                main.cancel()
                # And the workers stop at their next call: on Python 3.11 a TaskGroup whose
                # child failed takes a cancellation of its parent for its own (the worker
                # went on calling for good, the round hung), which is not the chain's.
                stop.set()

            signal.signal(signal.SIGTERM, lambda *_: cancel_main())
        return closes

    async def service(self, report: Any) -> None:
        cache = chain(self.url, self.namespace)
        stop = asyncio.Event()
        closes = self.install(cache, stop)

        @cache.cached(key="d:{n}")
        async def decorated(n: int) -> str:
            return await self.load()

        # The signals, once the handler is in place (and the parent told when, for --stall).
        when = self.rng.uniform(0.05, 0.3)
        threading.Timer(when, os.kill, (os.getpid(), signal.SIGTERM)).start()
        if self.options.how == "twice":
            again = when + self.rng.uniform(0, 0.02)
            threading.Timer(again, os.kill, (os.getpid(), signal.SIGTERM)).start()
        report({"signal_in": when})
        try:
            async with cache:
                workers = [
                    asyncio.create_task(self.worker(cache, decorated, stop)) for _ in range(16)
                ]
                try:
                    await stop.wait()
                finally:
                    if self.options.how == "cancel":
                        for task in workers:
                            task.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
        except asyncio.CancelledError:
            self.outcomes["main cancelled"] += 1
        try:
            await cache.get("k0")
        except ChainClosedError:
            self.refused_after = True
        await asyncio.gather(*closes, return_exceptions=True)
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        connections = await asyncio.to_thread(server_connections, self.url)
        report({"tasks_left": [task.get_name() for task in left], "connections": connections})


def child(url: str, namespace: str, seed: int, options: argparse.Namespace, report: Any) -> None:
    unraisable: list[str] = []
    sys.unraisablehook = lambda hook: unraisable.append(
        f"{hook.exc_type.__name__}: {hook.exc_value} ({hook.object!r:.80})"
    )
    seen_warnings: list[str] = []
    warnings.simplefilter("always")
    warnings.showwarning = lambda message, category, *_args, **_kw: seen_warnings.append(
        f"{category.__name__}: {message}"
    )
    round_ = Round(url, namespace, seed, options)
    try:
        asyncio.run(round_.service(report))
    except BaseException as exc:
        round_.outcomes[f"run raised {type(exc).__name__}: {exc}"[:120]] += 1
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal after the loop's end
    gc.collect()
    report(
        {
            "outcomes": dict(round_.outcomes),
            "unraisable": unraisable,
            "warnings": seen_warnings,
            "refused_after": round_.refused_after,
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--how", choices=["loop", "signal", "cancel", "twice"], default="loop")
    parser.add_argument("--stall", action="store_true", help="Redis held, stopped, killed")
    parser.add_argument("--hostile", type=float, default=0.02, help="share of hostile loads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    totals: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    examples: dict[str, Any] = {}
    with RedisServer() as server:
        for round_ in range(args.rounds):
            namespace = f"as{round_}"
            with FaultProxy("127.0.0.1", server.port) as proxy:
                url = proxy.url()
                forked = ForkedChild(functools.partial(child, url, namespace, round_, args))
                try:
                    first = forked.read(timeout=args.timeout)
                    if args.stall and first is not None:
                        time.sleep(max(0.0, first["signal_in"] - 0.02))
                        proxy.delay(0.5)
                        time.sleep(0.02)
                        os.kill(server.pid, signal.SIGSTOP)
                        time.sleep(0.3)
                        server.kill()
                        server.start()
                        proxy.restore()
                    closed = forked.read(timeout=args.timeout)
                    ended = forked.read(timeout=args.timeout)
                except TimeoutError:
                    problems["hung"] += 1
                    continue
                finally:
                    forked.kill()
            watch = redis.Redis.from_url(server.url)
            leases = sum(1 for _ in watch.scan_iter(f"{{{namespace}:*}}:lease"))
            watch.close()
            if closed is None or ended is None:
                problems["child died"] += 1
                continue
            totals.update(ended["outcomes"])
            found = {
                "leases left": leases,
                "connections left": len(closed["connections"] or []),
                "tasks left": len(closed["tasks_left"]),
                "unraisable": len(ended["unraisable"]),
                "warnings": len(ended["warnings"]),
                "not refused after close": 0 if ended["refused_after"] else 1,
                "caller errors": sum(
                    n for what, n in ended["outcomes"].items() if what.startswith(("error", "run"))
                ),
            }
            for what, count in found.items():
                if count:
                    problems[what] += 1  # rounds with it
                    examples.setdefault(
                        what,
                        {
                            "round": round_,
                            "tasks": closed["tasks_left"],
                            "connections": closed["connections"],
                            "unraisable": ended["unraisable"][:3],
                            "warnings": ended["warnings"][:3],
                            "outcomes": ended["outcomes"],
                        },
                    )
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "how": args.how,
                "stall": args.stall,
                "rounds_with": dict(problems),
                "calls": dict(totals),
                "examples": examples,
            }
        )
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
