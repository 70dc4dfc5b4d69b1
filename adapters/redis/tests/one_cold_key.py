"""Four worker processes missing one cold key together, for the fleet tests of the threaded
chain (``redis_workers.py``, threads) and the asyncio chain (``async_workers.py``,
coroutines): each worker counts the reads that reach its source at
``<namespace>:source-reads``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from tiered_cache.testing.fleet import run_fleet


def four_processes_read_one_cold_key(
    worker: str, url: str, namespace: str, readers: int
) -> tuple[list[Any], int]:
    """What each of 4 ``worker`` processes of ``readers`` readers read of ``tweet:1``, and
    the reads of the source the fleet made."""
    results = run_fleet(
        Path(__file__).with_name(worker),
        [url, namespace, "tweet:1", str(readers)],
        processes=4,
        url=url,
        namespace=namespace,
    )
    counter = redis.Redis.from_url(url)
    try:
        return results, int(counter.get(f"{namespace}:source-reads") or 0)
    finally:
        counter.close()
