"""Settings of a chain of memory -> Redis with the Redis bus, for the code that watches the bus
over a real redis-server: the Redis adapter's tests and ``tools/loop_edges.py`` (a tool does
not import from tests). Plain settings: nothing here imports redis."""

from __future__ import annotations

from typing import Any

from ..chain import TieredCache

__all__ = ["bus_chain_settings", "subscribed_chain"]


def bus_chain_settings(
    url: str,
    namespace: str,
    *,
    bus: dict[str, Any] | None = None,
    timeout: str = "1s",
    **extra: Any,
) -> dict[str, Any]:
    """``TieredCache.from_config`` keywords: a memory tier that admits every key, the Redis
    tier at ``url`` (its ``timeout``), a TTL of 10 minutes, and the Redis bus (``bus``: its
    options; its URL is the tier's unless given); ``extra`` are further fields."""
    return {
        "namespace": namespace,
        "tiers": [
            {"kind": "memory", "admission": "always", "ttl": "10m"},
            {"kind": "redis", "url": url, "timeout": timeout},
        ],
        "ttl": "10m",
        "bus": {"kind": "redis", **(bus or {})},
        **extra,
    }


def subscribed_chain(settings: dict[str, Any]) -> TieredCache:
    """A threaded chain built from ``settings`` whose bus is subscribed (it hears the
    others' writes from now on)."""
    cache = TieredCache.from_config(**settings)
    link = cache._bus_link
    assert link is not None, "the settings have no bus"
    # The Redis bus's (sync: it subscribes on a thread), not a capability of every Bus.
    assert link.bus.wait_subscribed(10)  # type: ignore[union-attr]
    return cache
