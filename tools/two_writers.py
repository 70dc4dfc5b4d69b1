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

Timeline: ``--warm`` s, Redis ``SIGSTOP`` for ``--stopped`` s (with ``--resumed``: then
``SIGCONT`` for that many s, the server running what its sockets queued meanwhile),
``SIGKILL``, ``--down`` s, started again empty, ``--after`` s; then the writers stop
(quiescence), the readers go on for ``--settle`` s, and each process reads every key on both
faces and compares it with the source:
a value other than the source's is a stale copy that survived (expected: none). Prints, per
round, the fault's times (seconds from the round's start), then one JSON line per process and
face: calls, writes, errors by type, the slowest call (seconds, when it began, read or write),
stale survivors with what that face's memory and Redis hold of them, the Redis tier's errors,
skips and breaker openings, and the bus's state and counters as the chain reports them. The
asyncio face's line also says how its bus state changed over the round, when its event loop
stopped ticking for over a second (a watchdog thread; the first stall's stacks of every thread
by ``faulthandler``), where every task waited when its writer completed nothing for 1.5 s
while writing (each task's await chain), and where the bus listener task waits at the end.
Exits 1 on any survivor or any caller error other than ``CodecError`` (and
``PartialBatchError`` carrying it) and the outage's ``LoadTimeout``.

``--writers sync`` or ``asyncio`` leaves the writes to one face; ``--no-fault`` runs without
the outage. ``--keys-per-call 2`` sends every batch of more than two keys in calls of two
(reads, writes, deletes, lease batches: a call failing part way); ``--max-value-size 100KB``
makes the 1 MB values too large for Redis (written and filled as deletes) among the small
ones written to the same keys.

Run: ``.venv/bin/python tools/two_writers.py [--rounds 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import multiprocessing
import os
import pickle
import random
import signal
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, cast

import redis

from tiered_cache import AsyncTier, AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.registry import SOURCES_GROUP, BuildContext, Plugin, register
from tiered_cache.settings import SourceSettings
from tiered_cache.testing.servers import RedisServer
from tiered_cache.tier import MISSING, Entry, MissingType

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


def settings(url: str, redis_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chain of both faces; ``redis_options``: further fields of the Redis tier."""
    return {
        "namespace": "two-writers",
        "ttl": "10m",
        "tiers": [
            {"kind": "memory", "max_entries": 50},
            {"kind": "redis", "url": url, "timeout": "200ms", **(redis_options or {})},
        ],
        "protection": {"lease_wait": "500ms", "hard_timeout": "2s"},
        "bus": {"kind": "redis"},
    }


class Face:
    """One face's counts in one process, and its slowest call (seconds from the round's
    start: the parent's fault times are on the same clock)."""

    def __init__(self, started: float) -> None:
        self.lock = threading.Lock()
        self.started = started
        self.calls = 0
        self.writes = 0
        self.errors: Counter[str] = Counter()
        self.slowest: list[Any] = [0.0, None, ""]
        self.first_call: float | None = None
        self.last_write = time.monotonic()
        #: Every write: its keys, what it wrote (a version, or None for an invalidation),
        #: when it began and ended, and its error's type if it raised.
        self.history: list[tuple[list[str], str | None, float, float, str | None]] = []

    def wrote(
        self, keys: list[str], version: str | None, began: float, exc: BaseException | None
    ) -> None:
        """A write ended (``version`` None: an invalidation)."""
        self.outcome(exc, began, "write", write=True)
        error = None if exc is None else type(exc).__name__
        ended = time.monotonic()
        with self.lock:
            self.history.append(
                (
                    keys,
                    version,
                    round(began - self.started, 3),
                    round(ended - self.started, 3),
                    error,
                )
            )

    def writes_of(self, key: str) -> list[list[Any]]:
        """The writes of ``key``: what, when it began and ended, its error."""
        with self.lock:
            return [
                [what, began, ended, error]
                for keys, what, began, ended, error in self.history
                if key in keys
            ]

    def outcome(
        self, exc: BaseException | None, began: float, op: str, *, write: bool = False
    ) -> None:
        now = time.monotonic()
        with self.lock:
            if self.first_call is None:
                self.first_call = round(began - self.started, 3)
            self.calls += 1
            self.writes += write
            if write:
                self.last_write = now
            if exc is not None:
                self.errors[type(exc).__name__] += 1
            if now - began > self.slowest[0]:
                self.slowest = [round(now - began, 3), round(began - self.started, 3), op]


def sync_face(
    cache: TieredCache, face: Face, writing: threading.Event, stop: threading.Event, tag: str
) -> list[threading.Thread]:
    def writer(n: int) -> None:
        rng = random.Random()
        count = 0
        while writing.is_set():
            count += 1
            version = f"{tag}-s{n}-{count}"
            draw = rng.random()
            keys = rng.sample(
                KEYS, 1 if draw < 0.5 or 0.65 <= draw < 0.85 else 2 if draw < 0.65 else 3
            )
            what: str | None = version if draw < 0.65 else None
            began = time.monotonic()
            try:
                if draw < 0.5:
                    cache.set(keys[0], value_for(rng, version))
                elif draw < 0.65:
                    cache.set_many({k: value_for(rng, version) for k in keys})
                elif draw < 0.85:
                    cache.invalidate(keys[0])
                else:
                    cache.invalidate_many(keys)
                face.wrote(keys, what, began, None)
            except Exception as exc:
                face.wrote(keys, what, began, exc)
            time.sleep(rng.uniform(0, 0.005))

    def reader() -> None:
        rng = random.Random()
        while not stop.is_set():
            began = time.monotonic()
            try:
                if rng.random() < 0.7:
                    cache.get(rng.choice(KEYS))
                else:
                    cache.get_many(rng.sample(KEYS, 3))
                face.outcome(None, began, "read")
            except Exception as exc:
                face.outcome(exc, began, "read")

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
            draw = rng.random()
            keys = rng.sample(KEYS, 3 if draw >= 0.8 else 1)
            what: str | None = version if draw < 0.6 else None
            began = time.monotonic()
            try:
                if draw < 0.6:
                    await cache.set(keys[0], value_for(rng, version))
                elif draw < 0.8:
                    await cache.invalidate(keys[0])
                else:
                    await cache.invalidate_many(keys)
                face.wrote(keys, what, began, None)
            except Exception as exc:
                face.wrote(keys, what, began, exc)
            await asyncio.sleep(rng.uniform(0, 0.005))

    async def reader() -> None:
        rng = random.Random()
        while not stop.is_set():
            began = time.monotonic()
            try:
                if rng.random() < 0.7:
                    await cache.get(rng.choice(KEYS))
                else:
                    await cache.get_many(rng.sample(KEYS, 3))
                face.outcome(None, began, "read")
            except Exception as exc:
                face.outcome(exc, began, "read")
            await asyncio.sleep(0)

    await asyncio.gather(writer(), *(reader() for _ in range(10)))


def unencodable(value: Any) -> bool:
    return isinstance(value, str) and "\ud800" in value


def survivors(read: dict[str, Any], truth: RedisSource) -> dict[str, str]:
    """The keys whose value read differs from the source's, each with what was read."""
    wrong = {}
    for key in KEYS:
        held = truth.load(key)
        expected = None if held is MISSING else held
        got = read.get(key, "<error>")
        if got != expected and not (got == "<CodecError>" and unencodable(expected)):
            wrong[key] = f"{key!r:.20}: read {str(got)[:40]!r} source {str(expected)[:40]!r}"
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


def bus_counts(stats: dict[str, Any]) -> dict[str, Any]:
    """What a chain's ``stats()`` says of its bus: its state and its counters."""
    return {key: value for key, value in stats.items() if key.startswith("bus")}


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where ``task`` waits: each coroutine (or generator) of its await chain, innermost last,
    and what the innermost awaits (a future, a sleep)."""
    out: list[str] = []
    link: Any = task.get_coro()
    for _ in range(50):
        if isinstance(link, types.CoroutineType):
            frame, following = link.cr_frame, link.cr_await
        elif isinstance(link, types.GeneratorType):
            frame, following = link.gi_frame, link.gi_yieldfrom
        else:
            if link is not None:
                out.append(repr(link)[:160])
            break
        if frame is not None:
            where = "/".join(frame.f_code.co_filename.split("/")[-2:])
            out.append(f"{where}:{frame.f_lineno} {frame.f_code.co_name}")
        link = following
    return out


def task_dump() -> dict[str, list[str]]:
    """Every task of the running loop and where it waits (the readers' alike kept once)."""
    dump: dict[str, list[str]] = {}
    seen: set[tuple[str, ...]] = set()
    for task in asyncio.all_tasks():
        chain = await_chain(task)
        if tuple(chain) not in seen:
            seen.add(tuple(chain))
            dump[task.get_name()] = chain
    return dump


class LoopProbe:
    """Watches the asyncio face: the loop's ticks (a thread notes a loop that stops ticking,
    and dumps every thread's stack with faulthandler), the bus's state and the Redis tier's
    breaker's as the chain reports them, and a writer that completes nothing for a while
    (every task's await chain, dumped from the loop). Times are seconds from the round's
    start."""

    #: A loop that has not ticked for this long is stalled; a writer that completed nothing
    #: for ``writer_stall`` seconds while writing is stuck.
    stall = 1.0
    writer_stall = 1.5

    def __init__(self, face: Face, writing: threading.Event) -> None:
        self.face = face
        self.writing = writing
        #: None until the loop first ticks (building the chain under load takes seconds).
        self.last_tick: float | None = None
        self.first_tick: float | None = None
        self.bus_states: list[list[Any]] = []
        self.loop_stalls: list[list[float]] = []
        self.writer_dumps: list[dict[str, Any]] = []
        self.thread_dump = ""
        self.done = threading.Event()

    def at(self, when: float) -> float:
        return round(when - self.face.started, 3)

    async def tick(self, cache: AsyncTieredCache) -> None:
        while not self.done.is_set():
            now = self.last_tick = time.monotonic()
            if self.first_tick is None:
                self.first_tick = self.at(now)
                self.face.last_write = now  # the writer's quiet counts from here
            stats = cache.stats()
            state = f"{stats['bus']}, redis {stats['tiers'][1].get('breaker')}"
            if not self.bus_states or self.bus_states[-1][1] != state:
                self.bus_states.append([self.at(now), state])
            quiet = now - self.face.last_write
            dumped = self.writer_dumps[-1]["at"] if self.writer_dumps else -10.0
            stuck = self.writing.is_set() and quiet > self.writer_stall
            if stuck and len(self.writer_dumps) < 3 and dumped < self.at(now) - 2:
                self.writer_dumps.append({"at": self.at(now), "tasks": task_dump()})
            await asyncio.sleep(0.05)

    def watch(self) -> None:
        """A thread's loop: a stall of the event loop noted, and the first one dumped."""
        stalled_since: float | None = None
        while not self.done.wait(0.1):
            now, last = time.monotonic(), self.last_tick
            if last is None:
                continue
            if now - last <= self.stall:
                if stalled_since is not None:
                    self.loop_stalls.append([self.at(stalled_since), round(now - stalled_since, 3)])
                stalled_since = None
                continue
            if stalled_since is None:
                stalled_since = last
                if not self.thread_dump:
                    with tempfile.TemporaryFile("w+") as out:
                        faulthandler.dump_traceback(out, all_threads=True)
                        out.seek(0)
                        self.thread_dump = out.read()[-6000:]

    def report(self) -> dict[str, Any]:
        return {
            "first_tick": self.first_tick,
            "bus_states": self.bus_states,
            "loop_stalls": self.loop_stalls,
            "writer_stuck": self.writer_dumps,
            "thread_dump": self.thread_dump,
        }


def shown(entry: Entry | MissingType) -> str:
    return "-" if entry is MISSING else str(entry.value)[:14]


def held_sync(cache: TieredCache) -> dict[str, list[str]]:
    """What the threaded face's memory and Redis hold of every key (Redis's error's type if
    it raised: its breaker open)."""
    memory, redis_tier = cache.tiers[0], cache.tiers[1]
    assert isinstance(memory, MemoryTier)
    held = {}
    for key in KEYS:
        try:
            in_redis = shown(redis_tier.get(key))
        except Exception as exc:
            in_redis = f"<{type(exc).__name__}>"
        held[key] = [shown(memory.peek(key)), in_redis]
    return held


async def held_async(cache: AsyncTieredCache) -> dict[str, list[str]]:
    """:func:`held_sync` for the asyncio face."""
    memory, redis_tier = cache.tiers[0], cache.tiers[1]
    assert isinstance(memory, MemoryTier) and isinstance(redis_tier, AsyncTier)
    held = {}
    for key in KEYS:
        try:
            in_redis = shown(await redis_tier.get(key))
        except Exception as exc:
            in_redis = f"<{type(exc).__name__}>"
        held[key] = [shown(memory.peek(key)), in_redis]
    return held


class FaceEnd:
    """What one face read and held at the end, and what its chain's stats said."""

    def __init__(self) -> None:
        self.read: dict[str, Any] = {}
        self.held: dict[str, list[str]] = {}
        self.redis: dict[str, Any] = {}
        self.bus: dict[str, Any] = {}
        self.listener: dict[str, list[str]] = {}

    def stats(self, stats: dict[str, Any]) -> None:
        tier = stats["tiers"][1]
        counted = ("errors", "skips", "breaker_opened", "breaker", "too_large")
        self.redis = {k: tier.get(k) for k in counted}
        self.redis.update({k: v for k, v in stats.items() if k.startswith("deletes_owed")})
        self.bus = bus_counts(stats)


def run_async_face(
    config: dict[str, Any], probe: LoopProbe, stop: threading.Event, tag: str, end: FaceEnd
) -> None:
    """The asyncio face on a loop of its own (this thread's), watched by ``probe`` (whose
    face and writing event are the face's)."""

    async def main() -> None:
        acache = AsyncTieredCache.from_config(**config)
        ticking = asyncio.create_task(probe.tick(acache))
        await async_face(acache, probe.face, probe.writing, stop, tag)
        end.read = await read_all_async(acache)
        end.stats(acache.stats())
        end.held = await held_async(acache)
        # Where the tasks left wait: the bus listener (one stuck on an await hears nothing),
        # and any call of the chain's still in flight after its callers ended.
        end.listener = {
            name: chain for name, chain in task_dump().items() if "tick" not in " ".join(chain)
        }
        probe.done.set()
        await ticking
        await acache.aclose()

    asyncio.run(main())


def worker(
    cache_url: str,
    truth_url: str,
    *,
    writing: Any,
    stop: Any,
    results: Any,
    tag: str,
    writers: str,
    started: float,
    redis_options: dict[str, Any],
) -> None:
    """One process: both faces until ``stop`` (writing while ``writing``), then the check."""
    logging.disable(logging.WARNING)
    register_truth()
    config = {**settings(cache_url, redis_options), "source": {"kind": "truth", "url": truth_url}}
    truth = RedisSource(truth_url)
    cache = TieredCache.from_config(**config)
    faces = {"sync": Face(started), "asyncio": Face(started)}
    ends = {"sync": FaceEnd(), "asyncio": FaceEnd()}
    # The rig's events live in the parent; these mirror them for this process's threads.
    local_writing, local_stop = threading.Event(), threading.Event()
    local_writing.set()
    silent = threading.Event()  # never set: the writers of a face that does not write
    sync_writing = local_writing if writers in ("both", "sync") else silent
    async_writing = local_writing if writers in ("both", "asyncio") else silent
    threads = sync_face(cache, faces["sync"], sync_writing, local_stop, tag)
    probe = LoopProbe(faces["asyncio"], async_writing)
    arguments = (config, probe, local_stop, f"{tag}a", ends["asyncio"])
    threads.append(threading.Thread(target=run_async_face, args=arguments))
    threads[-1].start()
    threading.Thread(target=probe.watch, daemon=True).start()
    writing.wait()  # cleared by the parent: wait() on a cleared event would return at once
    while writing.is_set():
        time.sleep(0.05)
    local_writing.clear()
    stop.wait()
    local_stop.set()
    for thread in threads:
        thread.join(60)
    probe.done.set()
    ends["sync"].read = read_all_sync(cache)
    ends["sync"].stats(cache.stats())
    ends["sync"].held = held_sync(cache)
    cache.close()
    # What both faces hold of every key either face read wrong.
    wrong = {name: survivors(end.read, truth) for name, end in ends.items()}
    held = {
        f"{key!r:.12}": {name: end.held.get(key) for name, end in ends.items()}
        for key in KEYS
        if key in wrong["sync"] or key in wrong["asyncio"]
    }
    for name, end in ends.items():
        face = faces[name]
        row = {
            "process": tag,
            "face": name,
            "calls": face.calls,
            "writes": face.writes,
            "errors": dict(face.errors),
            "survivors": list(wrong[name].values()),
            "hung": any(thread.is_alive() for thread in threads),
            "held": held if wrong[name] else {},
            # This face's writes of the keys either face of this process read wrong.
            "writes_of": {
                f"{key!r:.12}": face.writes_of(key)
                for key in KEYS
                if key in wrong["sync"] or key in wrong["asyncio"]
            },
            "redis": end.redis,
            "bus": end.bus,
            "first_call": face.first_call,
            "slowest": face.slowest,
        }
        if name == "asyncio":
            row.update(probe.report(), listener=end.listener)
        results.put(row)
    truth.close()


def count_subscribers(url: str, started: float, done: threading.Event) -> list[list[Any]]:
    """How many clients the cache's Redis counts on the bus channel (both faces of both
    processes: 4), each change with its time from the round's start; ``None`` while Redis
    does not answer. Filled by a thread until ``done``."""
    channel = f"{settings(url)['namespace']}:invalidations"
    seen: list[list[Any]] = []

    def poll() -> None:
        while not done.wait(0.1):
            client = redis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
            try:
                count: int | None = cast(list[Any], client.pubsub_numsub(channel))[0][1]
            except redis.RedisError:
                count = None
            finally:
                client.close()
            if not seen or seen[-1][1] != count:
                seen.append([round(time.monotonic() - started, 3), count])

    threading.Thread(target=poll, daemon=True).start()
    return seen


def one_round(args: argparse.Namespace) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("fork")
    with RedisServer() as truth_server, RedisServer() as server:
        started = time.monotonic()
        timeline: dict[str, Any] = {}
        polled = threading.Event()
        subscribers = count_subscribers(server.url, started, polled)
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
                    "started": started,
                    "redis_options": redis_options(args),
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
            timeline["sigstop"] = time.monotonic() - started
            os.kill(pid, signal.SIGSTOP)
            time.sleep(args.stopped)
            if args.resumed:
                # Resumed under load: the server runs what its sockets queued while it was
                # stopped, the calls their clients gave up on among it, in any order across
                # connections.
                timeline["sigcont"] = time.monotonic() - started
                os.kill(pid, signal.SIGCONT)
                time.sleep(args.resumed)
            timeline["sigkill"] = time.monotonic() - started
            server.kill()
            time.sleep(args.down)
            timeline["restart"] = time.monotonic() - started
            server.start()
        time.sleep(args.after)
        timeline["writes_stop"] = time.monotonic() - started
        writing.clear()
        time.sleep(args.settle)
        timeline["stop"] = time.monotonic() - started
        stop.set()
        polled.set()
        timeline = {k: round(v, 3) for k, v in timeline.items()}
        rows: list[dict[str, Any]] = [{"timeline": timeline, "subscribers": subscribers}]
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


def redis_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Redis tier's fields the command line sets (the tier's defaults otherwise)."""
    options: dict[str, Any] = {}
    if args.keys_per_call is not None:
        options["keys_per_call"] = args.keys_per_call
    if args.max_value_size is not None:
        options["max_value_size"] = args.max_value_size
    return options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", type=float, default=1.5)
    parser.add_argument("--stopped", type=float, default=2.0, help="SIGSTOP, s")
    parser.add_argument(
        "--resumed", type=float, default=0.0, help="SIGCONT this long before the SIGKILL, s"
    )
    parser.add_argument("--down", type=float, default=1.0, help="killed, s")
    parser.add_argument("--after", type=float, default=3.0, help="after the restart, s")
    parser.add_argument("--settle", type=float, default=5.0, help="readers only, s")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--writers", choices=["both", "sync", "asyncio"], default="both")
    parser.add_argument("--no-fault", dest="fault", action="store_false")
    parser.add_argument("--keys-per-call", type=int, help="the Redis tier's, for batches in calls")
    parser.add_argument("--max-value-size", help="the Redis tier's ('100KB': the 1 MB values over)")
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
