"""A worker process of a history run: one chain, built like the product's, running the ops.

The driver starts each worker (``multiprocessing`` spawn) and talks to it over a pipe. Every op
runs on a thread of its own at its instant and is recorded with its interval on
``time.monotonic`` (one clock for every process of a Linux host). Only the chain's public API is
used, so the worker keeps working whatever the chain looks like inside.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .. import TieredCache
from .history_schedule import Op
from .history_source import StoreClient, connect_store, register_history_source


@dataclass
class Record:
    """What one call did: its interval, the values it read, or its error."""

    op: str
    process: str
    kind: str
    start: float
    end: float
    reads: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Worker:
    """Runs ops against one chain and one store client."""

    def __init__(self, index: int, cache: TieredCache, store: StoreClient) -> None:
        self.name = f"p{index}"
        self.cache = cache
        self.store = store

    def run(self, ops: Sequence[Op], t0: float) -> list[dict[str, Any]]:
        """Run each op at ``t0 + op.at`` on a thread of its own; every record, as dicts."""
        records: list[Record] = []
        lock = threading.Lock()

        def runner(op: Op) -> None:
            pause = t0 + op.at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            done = self.run_op(op)
            with lock:
                records.extend(done)

        threads = [threading.Thread(target=runner, args=(op,), daemon=True) for op in ops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [asdict(record) for record in records]

    def run_op(self, op: Op) -> list[Record]:
        """One op (a set with ``repeat`` n is n records: n writes)."""
        if op.kind == "set":
            return [self._call(f"{op.id}#{n}", op, self._set(f"{op.id}#{n}", op.keys[0]))
                    for n in range(op.repeat)]  # fmt: skip
        return [self._call(op.id, op, lambda: self._dispatch(op))]

    def _call(self, op_id: str, op: Op, call: Callable[[], dict[str, Any] | None]) -> Record:
        start = time.monotonic()
        try:
            reads = call()
        except Exception as exc:
            end = time.monotonic()
            return Record(op_id, self.name, op.kind, start, end, error=_describe(exc))
        end = time.monotonic()
        return Record(op_id, self.name, op.kind, start, end, reads or {})

    def _set(self, op_id: str, key: str) -> Callable[[], None]:
        # The value is the op's id: a read of it names the write it saw.
        return lambda: self.cache.set(key, op_id)

    def _dispatch(self, op: Op) -> dict[str, Any] | None:
        cache = self.cache
        if op.kind == "get":
            key = op.keys[0]
            if op.delay is None:
                return {key: cache.get(key)}
            return {key: cache.get(key, self._slow_loader(key, op.delay))}
        if op.kind == "get_many":
            if op.delay is None:
                return dict(cache.get_many(op.keys))
            return dict(cache.get_many(op.keys, self._slow_batch_loader(op.delay)))
        if op.kind == "write":
            self.store.store(op.keys[0], None if op.remove else op.id, op.id)
            self._follow(op)
            return None
        if op.kind == "invalidate":
            cache.invalidate(op.keys[0])
        elif op.kind == "invalidate_many":
            cache.invalidate_many(op.keys)
        elif op.kind == "invalidate_prefix":
            assert op.prefix is not None
            cache.invalidate_prefix(op.prefix)
        elif op.kind == "clear":
            cache.clear()
        else:
            raise ValueError(f"unknown op kind {op.kind!r}")
        return None

    def _follow(self, op: Op) -> None:
        """After a direct write, invalidate through the cache as the stream follower would."""
        if op.follow == "invalidate":
            self.cache.invalidate(op.keys[0])
        elif op.follow == "invalidate_many":
            self.cache.invalidate_many(op.keys)
        elif op.follow == "invalidate_prefix":
            assert op.prefix is not None
            self.cache.invalidate_prefix(op.prefix)
        elif op.follow == "clear":
            self.cache.clear()
        else:
            raise ValueError(f"a direct write needs a follow-up invalidation, not {op.follow!r}")

    def _slow_loader(self, key: str, delay: float) -> Callable[[], Any]:
        def load() -> Any:
            value = self.store.load(key)
            time.sleep(delay)  # the value was read before this wait: a write may overtake it
            return value

        return load

    def _slow_batch_loader(self, delay: float) -> Callable[[Sequence[str]], dict[str, Any]]:
        def load(keys: Sequence[str]) -> dict[str, Any]:
            found = self.store.load_many(list(keys))
            time.sleep(delay)
            return {key: found.get(key) for key in keys}

        return load


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def worker_main(
    conn: Connection,
    index: int,
    store_address: tuple[str, int],
    authkey: bytes,
    config: dict[str, Any],
) -> None:
    """The worker process: build the chain, then answer the driver's commands until "close".

    Commands: ``("run", (ops, t0))`` -> records; ``("stats", None)`` -> ``cache.stats()``;
    ``("probe", key)`` -> invalidates ``key`` (the driver checks the others heard it).
    """
    # The chains' warnings (failed publishes, bus gaps) are what the faults are meant to cause;
    # the driver counts them from stats() instead.
    logging.disable(logging.WARNING)
    store = connect_store(store_address, authkey)
    register_history_source(store)
    cache = TieredCache.from_config(**config)
    worker = Worker(index, cache, store)
    try:
        conn.send("ready")
        while True:
            command, payload = conn.recv()
            if command == "run":
                ops, t0 = payload
                conn.send(worker.run([Op(**op) for op in ops], t0))
            elif command == "stats":
                conn.send(cache.stats())
            elif command == "probe":
                cache.invalidate(payload)
                conn.send(None)
            elif command == "close":
                break
            else:
                conn.send(ValueError(f"unknown command {command!r}"))
    finally:
        cache.close()
        conn.close()
