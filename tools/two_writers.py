"""Two processes writing the same keys at once while their Redis is stopped, then killed.

Two worker processes (forked before either builds anything) each run a :class:`TieredCache`
(threads) and an :class:`AsyncTieredCache` (coroutines, in a thread of their own): memory then
a private Redis (``timeout`` 200 ms), the Redis bus, and one source of truth for both, a second
private Redis that no fault touches (values pickled: any Python value). In each process, on
both faces, writers ``set``, ``set_many``, ``invalidate`` and ``invalidate_many`` random keys
(the same keys in both processes) while readers ``get`` and ``get_many`` them. Keys are
hostile: very long, unicode, control characters, and the characters the key layout escapes or
Redis matches (``: \\ { } * ? [ ]``, a ``:lease`` suffix); values are version strings, some
1 MB long, some nested 300 lists deep, and a few hold a lone surrogate (the codec cannot
encode it: ``CodecError`` to its writer, and to its readers until the key is written again).

Timeline: ``--warm`` s, Redis ``SIGSTOP`` for ``--stopped`` s, ``SIGKILL``, ``--down`` s, started
again empty, ``--after`` s; then the writers stop (quiescence), the readers go on for
``--settle`` s, and each process reads every key on both faces and compares it with the source:
a value other than the source's is a stale copy that survived (expected: none). Prints one JSON
line per process and face (calls, writes, errors by type, stale survivors with, for the
threaded chain, what its memory and Redis hold of them, and the Redis tier's errors, skips and
breaker openings) and exits 1 on any survivor or any caller error other than ``CodecError``
(and ``PartialBatchError`` carrying it) and the outage's ``LoadTimeout``.

``--writers sync`` or ``asyncio`` leaves the writes to one face; ``--no-fault`` runs without
the outage.

Run: ``.venv/bin/python tools/two_writers.py [--rounds 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import pickle
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, cast

import redis

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.registry import SOURCES_GROUP, BuildContext, Plugin, register
from tiered_cache.settings import SourceSettings
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING, MissingType

#: The keys both processes write and read.
KEYS = [
    "plain",
    "k:" + "x" * 3000,
    "ключ-é-🔑",
    "ctl\x01\x7f\t\nend",
    "a:b:c",
    "back\\slash\\",
    "{tag}",
    "open{",
    "close}",
    "plain:lease",
    "{plain}:lease",
    "glob*?[]",
    "sp ace",
    "nul\x00byte",
]


class RedisSource:
    """The source of truth of both processes: a Redis no fault touches, values pickled."""

    name = "truth"

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)

    def load(self, key: str) -> Any | MissingType:
        raw = self._client.get(key.encode("utf-8", "surrogatepass"))
        return MISSING if raw is None else pickle.loads(cast(bytes, raw))

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        raws = self._client.mget([key.encode("utf-8", "surrogatepass") for key in keys])
        return {
            key: pickle.loads(cast(bytes, raw))
            for key, raw in zip(keys, raws, strict=True)
            if raw is not None
        }

    def store(self, key: str, value: Any) -> None:
        self._client.set(key.encode("utf-8", "surrogatepass"), pickle.dumps(value))

    def remove(self, key: str) -> None:
        self._client.delete(key.encode("utf-8", "surrogatepass"))

    def close(self) -> None:
        self._client.close()


def value_for(rng: random.Random, version: str) -> Any:
    draw = rng.random()
    if draw < 0.03:
        return version + "\ud800"  # a lone surrogate: the codec cannot encode it
    if draw < 0.1:
        return version + "." * 1_000_000
    if draw < 0.2:
        nested: Any = version
        for _ in range(300):
            nested = [nested]
        return nested
    return version


def settings(url: str) -> dict[str, Any]:
    return {
        "namespace": "two-writers",
        "ttl": "10m",
        "tiers": [
            {"kind": "memory", "max_entries": 50},
            {"kind": "redis", "url": url, "timeout": "200ms"},
        ],
        "protection": {"lease_wait": "500ms", "hard_timeout": "2s"},
        "bus": {"kind": "redis"},
    }


class Face:
    """One face's counts in one process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.writes = 0
        self.errors: Counter[str] = Counter()

    def outcome(self, exc: BaseException | None, *, write: bool = False) -> None:
        with self.lock:
            self.calls += 1
            self.writes += write
            if exc is not None:
                self.errors[type(exc).__name__] += 1


def sync_face(
    cache: TieredCache, face: Face, writing: threading.Event, stop: threading.Event, tag: str
) -> list[threading.Thread]:
    def writer(n: int) -> None:
        rng = random.Random()
        count = 0
        while writing.is_set():
            count += 1
            version = f"{tag}-s{n}-{count}"
            key = rng.choice(KEYS)
            draw = rng.random()
            try:
                if draw < 0.5:
                    cache.set(key, value_for(rng, version))
                elif draw < 0.65:
                    cache.set_many({k: value_for(rng, version) for k in rng.sample(KEYS, 2)})
                elif draw < 0.85:
                    cache.invalidate(key)
                else:
                    cache.invalidate_many(rng.sample(KEYS, 3))
                face.outcome(None, write=True)
            except Exception as exc:
                face.outcome(exc, write=True)
            time.sleep(rng.uniform(0, 0.005))

    def reader() -> None:
        rng = random.Random()
        while not stop.is_set():
            try:
                if rng.random() < 0.7:
                    cache.get(rng.choice(KEYS))
                else:
                    cache.get_many(rng.sample(KEYS, 3))
                face.outcome(None)
            except Exception as exc:
                face.outcome(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    return threads


async def async_face(
    cache: AsyncTieredCache, face: Face, writing: threading.Event, stop: threading.Event, tag: str
) -> None:
    async def writer() -> None:
        rng = random.Random()
        count = 0
        while writing.is_set():
            count += 1
            version = f"{tag}-a-{count}"
            key = rng.choice(KEYS)
            draw = rng.random()
            try:
                if draw < 0.6:
                    await cache.set(key, value_for(rng, version))
                elif draw < 0.8:
                    await cache.invalidate(key)
                else:
                    await cache.invalidate_many(rng.sample(KEYS, 3))
                face.outcome(None, write=True)
            except Exception as exc:
                face.outcome(exc, write=True)
            await asyncio.sleep(rng.uniform(0, 0.005))

    async def reader() -> None:
        rng = random.Random()
        while not stop.is_set():
            try:
                if rng.random() < 0.7:
                    await cache.get(rng.choice(KEYS))
                else:
                    await cache.get_many(rng.sample(KEYS, 3))
                face.outcome(None)
            except Exception as exc:
                face.outcome(exc)
            await asyncio.sleep(0)

    await asyncio.gather(writer(), *(reader() for _ in range(10)))


def unencodable(value: Any) -> bool:
    return isinstance(value, str) and "\ud800" in value


def survivors(read: dict[str, Any], truth: RedisSource) -> list[str]:
    """The keys whose value read differs from the source's."""
    wrong = []
    for key in KEYS:
        held = truth.load(key)
        expected = None if held is MISSING else held
        got = read.get(key, "<error>")
        if got != expected and not (got == "<CodecError>" and unencodable(expected)):
            wrong.append(f"{key!r:.20}: read {str(got)[:40]!r} source {str(expected)[:40]!r}")
    return wrong


def read_all_sync(cache: TieredCache) -> dict[str, Any]:
    read: dict[str, Any] = {}
    for key in KEYS:
        try:
            read[key] = cache.get(key)
        except Exception as exc:
            read[key] = f"<{type(exc).__name__}>"
    return read


class TruthSettings(SourceSettings):
    """Source kind ``truth``: the rig's source Redis."""

    kind: Literal["truth"] = "truth"
    url: str = ""


def register_truth() -> None:
    def build(settings: TruthSettings, context: BuildContext) -> RedisSource:
        return RedisSource(settings.url)

    register(Plugin("truth", TruthSettings, build), group=SOURCES_GROUP)


async def read_all_async(cache: AsyncTieredCache) -> dict[str, Any]:
    read: dict[str, Any] = {}
    for key in KEYS:
        try:
            read[key] = await cache.get(key)
        except Exception as exc:
            read[key] = f"<{type(exc).__name__}>"
    return read


def worker(
    cache_url: str,
    truth_url: str,
    *,
    writing: Any,
    stop: Any,
    results: Any,
    tag: str,
    writers: str,
) -> None:
    """One process: both faces until ``stop`` (writing while ``writing``), then the check."""
    logging.disable(logging.WARNING)
    register_truth()
    config = {**settings(cache_url), "source": {"kind": "truth", "url": truth_url}}
    truth = RedisSource(truth_url)
    cache = TieredCache.from_config(**config)
    faces = {"sync": Face(), "asyncio": Face()}
    # The rig's events live in the parent; these mirror them for this process's threads.
    local_writing, local_stop = threading.Event(), threading.Event()
    local_writing.set()
    silent = threading.Event()  # never set: the writers of a face that does not write
    sync_writing = local_writing if writers in ("both", "sync") else silent
    async_writing = local_writing if writers in ("both", "asyncio") else silent
    threads = sync_face(cache, faces["sync"], sync_writing, local_stop, tag)
    async_read: dict[str, Any] = {}
    tier_stats: dict[str, dict[str, Any]] = {}

    def async_side() -> None:
        async def main() -> None:
            acache = AsyncTieredCache.from_config(**config)
            await async_face(acache, faces["asyncio"], async_writing, local_stop, f"{tag}a")
            async_read.update(await read_all_async(acache))
            tier_stats["asyncio"] = acache.stats()["tiers"][1]
            await acache.aclose()

        asyncio.run(main())

    threads.append(threading.Thread(target=async_side))
    threads[-1].start()
    writing.wait()  # cleared by the parent: wait() on a cleared event would return at once
    while writing.is_set():
        time.sleep(0.05)
    local_writing.clear()
    stop.wait()
    local_stop.set()
    for thread in threads:
        thread.join(60)
    sync_read = read_all_sync(cache)
    tier_stats["sync"] = cache.stats()["tiers"][1]
    probes = {}
    for key in KEYS:
        held = truth.load(key)
        if sync_read.get(key) != (None if held is MISSING else held):
            mem = cast(MemoryTier, cache.tiers[0]).peek(key)
            red = cache.tiers[1].get(key)
            probes[f"{key!r:.12}"] = [
                "-" if mem is MISSING else str(mem.value)[:14],
                "-" if red is MISSING else str(red.value)[:14],
            ]
    cache.close()
    for name, read in (("sync", sync_read), ("asyncio", async_read)):
        face = faces[name]
        results.put(
            {
                "process": tag,
                "face": name,
                "calls": face.calls,
                "writes": face.writes,
                "errors": dict(face.errors),
                "survivors": survivors(read, truth),
                "hung": any(thread.is_alive() for thread in threads),
                "probes": probes if name == "sync" else {},
                "redis": {
                    k: tier_stats.get(name, {}).get(k)
                    for k in ("errors", "skips", "breaker_opened")
                },
            }
        )
    truth.close()


def one_round(args: argparse.Namespace) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("fork")
    with RedisServer() as truth_server, RedisServer() as server:
        writing, stop = context.Event(), context.Event()
        writing.set()
        results = context.Queue()
        workers = [
            context.Process(
                target=worker,
                args=(server.url, truth_server.url),
                kwargs={
                    "writing": writing,
                    "stop": stop,
                    "results": results,
                    "tag": tag,
                    "writers": args.writers,
                },
            )
            for tag in ("p1", "p2")
        ]
        for process in workers:
            process.start()
        time.sleep(args.warm)
        if args.fault:
            pid = server.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            time.sleep(args.stopped)
            server.kill()
            time.sleep(args.down)
            server.start()
        time.sleep(args.after)
        writing.clear()
        time.sleep(args.settle)
        stop.set()
        rows = []
        for _ in range(4):
            try:
                rows.append(results.get(timeout=120))
            except Exception:
                rows.append({"missing": "a worker reported nothing (hung)"})
        for process in workers:
            process.join(30)
            if process.is_alive():
                process.kill()
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", type=float, default=1.5)
    parser.add_argument("--stopped", type=float, default=2.0, help="SIGSTOP, s")
    parser.add_argument("--down", type=float, default=1.0, help="killed, s")
    parser.add_argument("--after", type=float, default=3.0, help="after the restart, s")
    parser.add_argument("--settle", type=float, default=5.0, help="readers only, s")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--writers", choices=["both", "sync", "asyncio"], default="both")
    parser.add_argument("--no-fault", dest="fault", action="store_false")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    allowed = {"CodecError", "PartialBatchError", "LoadTimeout"}
    bad = False
    for _ in range(args.rounds):
        for row in one_round(args):
            print(json.dumps(row), flush=True)
            bad = bad or bool(
                row.get("missing")
                or row.get("survivors")
                or row.get("hung")
                or set(row.get("errors", {})) - allowed
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
