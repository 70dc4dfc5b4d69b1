"""One source of truth for the processes of a history run: a small server that logs versions.

The store runs in a process of its own (a :mod:`multiprocessing` manager) and applies each call
under one lock, so it is linearizable; it keeps, per key, every write it applied, in order, with
the id of the operation that made it. Every worker's chain reads and writes it through
:class:`HistorySource` (source kind ``history``), or directly, for a write that bypasses the
cache. Values are strings naming the operation that wrote them, so a read says which write it saw.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from multiprocessing import get_context
from multiprocessing.managers import BaseManager
from typing import Any, Literal, Protocol

from ..registry import SOURCES_GROUP, BuildContext, Plugin, register
from ..settings import SourceSettings
from ..tier import MISSING, MissingType

#: A log entry: (operation id, value written or None for a removal).
LogEntry = tuple[str, str | None]


class VersionedStore:
    """The store itself (lives in the server process): values and the log of their writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, str] = {}
        self._log: dict[str, list[LogEntry]] = {}

    def load(self, key: str) -> str | None:
        """The value of ``key``, ``None`` when absent."""
        with self._lock:
            return self._items.get(key)

    def load_many(self, keys: Sequence[str]) -> dict[str, str]:
        """The values of the keys that are present."""
        with self._lock:
            return {key: self._items[key] for key in keys if key in self._items}

    def store(self, key: str, value: str | None, op: str) -> None:
        """Write ``value`` (``None``: remove) for ``key`` as operation ``op``, and log it."""
        with self._lock:
            if value is None:
                self._items.pop(key, None)
            else:
                self._items[key] = value
            self._log.setdefault(key, []).append((op, value))

    def log(self, keys: Sequence[str]) -> dict[str, list[LogEntry]]:
        """Per key, every write applied, in order."""
        with self._lock:
            return {key: list(self._log.get(key, [])) for key in keys}

    def forget(self, keys: Sequence[str]) -> None:
        """Drop the values and logs of ``keys`` (a finished schedule's), to keep memory flat."""
        with self._lock:
            for key in keys:
                self._items.pop(key, None)
                self._log.pop(key, None)


class StoreClient(Protocol):
    """What a worker sees of the store (a manager proxy of :class:`VersionedStore`)."""

    def load(self, key: str) -> str | None: ...
    def load_many(self, keys: Sequence[str]) -> dict[str, str]: ...
    def store(self, key: str, value: str | None, op: str) -> None: ...
    def log(self, keys: Sequence[str]) -> dict[str, list[LogEntry]]: ...
    def forget(self, keys: Sequence[str]) -> None: ...


#: The server process's one store; created on import there (a client process never uses it).
_THE_STORE = VersionedStore()


def _store() -> VersionedStore:
    # Called in the server process for every client that asks: one store for all of them.
    return _THE_STORE


class _StoreManager(BaseManager):
    pass


_StoreManager.register("store", callable=_store)


class StoreServer:
    """The store's server process; ``with`` starts and stops it.

    :attr:`address` and :attr:`authkey` are what a worker passes to :func:`connect_store`.
    """

    def __init__(self) -> None:
        self.authkey = secrets.token_bytes(16)
        self._manager = _StoreManager(
            address=("127.0.0.1", 0), authkey=self.authkey, ctx=get_context("spawn")
        )
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    def start(self) -> StoreServer:
        """Start the server process."""
        self._manager.start()
        address = self._manager.address
        assert isinstance(address, tuple)
        self.address = (str(address[0]), int(address[1]))
        return self

    def client(self) -> StoreClient:
        """A client for this process."""
        return connect_store(self.address, self.authkey)

    def close(self) -> None:
        """Stop the server process."""
        self._manager.shutdown()

    def __enter__(self) -> StoreServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect_store(address: tuple[str, int], authkey: bytes) -> StoreClient:
    """A client of the store at ``address`` (thread-safe: each thread gets a connection)."""
    manager = _StoreManager(address=address, authkey=authkey)
    manager.connect()
    client: StoreClient = manager.store()  # type: ignore[attr-defined]
    return client


class HistorySource:
    """The chain's :class:`~tiered_cache.Source` on the store: what ``set`` writes through to.

    A value written by the chain is its own operation id (see the module docstring).
    """

    name = "history"

    def __init__(self, store: StoreClient) -> None:
        self._store = store

    def load(self, key: str) -> Any | MissingType:
        value = self._store.load(key)
        return MISSING if value is None else value

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        return dict(self._store.load_many(list(keys)))

    def store(self, key: str, value: Any) -> None:
        self._store.store(key, str(value), str(value))

    def remove(self, key: str) -> None:
        self._store.store(key, None, f"remove@{time.monotonic():.6f}")

    def close(self) -> None:
        pass


class HistorySourceSettings(SourceSettings):
    """Source kind ``history``: the store of the running history check."""

    kind: Literal["history"] = "history"


def register_history_source(store: StoreClient) -> None:
    """Make source kind ``history`` build a :class:`HistorySource` on ``store`` (per process)."""

    def build(settings: HistorySourceSettings, context: BuildContext) -> HistorySource:
        return HistorySource(store)

    register(Plugin("history", HistorySourceSettings, build), group=SOURCES_GROUP)
