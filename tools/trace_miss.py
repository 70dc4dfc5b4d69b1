"""The functions one ``get`` enters when it misses every tier, in order (docs/consistency.md).

Builds memory -> Redis (a private ``redis-server``) -> a dict source, leases on (the default
protection), warms every path with other keys, then traces one ``get`` of a cold key with
``sys.setprofile`` and prints each function of the library it enters, first entry only, as
``file: Qualified.name``. Functions entered again later (the step driver resuming a decision)
are not repeated; the first entries are the order the read takes.

Run: ``.venv/bin/python tools/trace_miss.py``
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import redis
from tiered_cache_redis import RedisTier
from timing import run_line

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.testing.servers import RedisServer
from tiered_cache.testing.sources import DictSource

PACKAGES = ("tiered_cache", "tiered_cache_redis")
#: Plumbing that says nothing about the read's way: generated and dunder helpers.
SKIPPED = ("<genexpr>", "<listcomp>", "<dictcomp>", "<lambda>", "__init__", "__post_init__")


def _where(frame: FrameType) -> str | None:
    path = Path(frame.f_code.co_filename)
    parts = path.parts
    for package in PACKAGES:
        if package in parts and "testing" not in parts:
            if frame.f_code.co_name in SKIPPED:
                return None
            return f"{path.name}: {frame.f_code.co_qualname}"
    return None


def trace(cache: TieredCache, key: str) -> list[str]:
    """The library's functions ``cache.get(key)`` enters, in order of their first entry."""
    seen: dict[str, None] = {}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            where = _where(frame)
            if where is not None:
                seen.setdefault(where, None)

    sys.setprofile(profile)
    try:
        cache.get(key)
    finally:
        sys.setprofile(None)
    return list(seen)


def main() -> None:
    # The run line says which core ran: compiled functions enter no profile hook, so the
    # trace of a compiled core leaves them out.
    print(run_line())
    source = DictSource({f"k{i}": {"n": i} for i in range(100)})
    with RedisServer() as server:
        tier = RedisTier(redis.Redis.from_url(server.url), namespace="trace")
        with TieredCache([MemoryTier(max_entries=1000), tier], source, ttl=60) as cache:
            for i in range(50):  # warm: imports, scripts loaded, connections made
                cache.get(f"k{i}")
                cache.get(f"k{i}")
            for number, where in enumerate(trace(cache, "k99"), 1):
                print(f"{number:3d}. {where}")
            assert source.loads.count("k99") == 1, "the traced get did not reach the source"


if __name__ == "__main__":
    main()
