"""Type-checked by ``make check`` (``mypy tests/typing``), never imported by pytest.

A duration given in code takes what a config file's does (seconds, text such as ``"5m"``, a
timedelta: :data:`tiered_cache.units.DurationLike`), and the hints say so: the chains' own
``ttl`` was hinted ``float`` (mypy refused ``ttl="5m"``, which runs), a call's ``ttl``
``float | str`` (a timedelta runs too). Each ``type: ignore[...]`` marks a call mypy must
still refuse.
"""

from __future__ import annotations

from datetime import timedelta

from tiered_cache_redis import RedisTier, make_client

from tiered_cache import AsyncTieredCache, MemoryTier, TieredCache
from tiered_cache.breaker import CircuitBreaker

cache = TieredCache(
    [MemoryTier(ttl="5m", max_bytes="64MiB")],
    ttl="1h30m",
    negative_ttl=timedelta(seconds=30),
    max_stale_when_disconnected="1s",
)
AsyncTieredCache([MemoryTier(ttl=timedelta(minutes=5))], ttl=300, negative_ttl="30s")
cache.get("tweet:42", lambda: None, ttl=timedelta(minutes=1))
cache.set("tweet:42", {}, ttl="1h")
cache.set_many({"tweet:42": {}}, ttl=timedelta(hours=1))
CircuitBreaker("redis", cool_down="5s")
RedisTier(connect=lambda: make_client("redis://localhost:6379/0", timeout="50ms"), ttl="1h")

TieredCache([MemoryTier()], ttl=[300])  # type: ignore[arg-type]
cache.get("tweet:42", ttl=object())  # type: ignore[arg-type]
MemoryTier(ttl={"seconds": 5})  # type: ignore[arg-type]
