"""A chain whose bus alone goes through a FaultProxy, for the tests of the bus's start (its
first subscription held back, cut, or let through)."""

from __future__ import annotations

from typing import Any

from tiered_cache.testing.bus_chains import bus_chain_settings
from tiered_cache.testing.servers import FaultProxy

#: Longer than any test here: the held subscription is not taken for a stall (that would
#: tell the chain the bus is down, and its memory cleared, for another reason). Copies taken
#: while the bus is not heard are kept as long: what drops them is the subscription.
PATIENT = {"health_check_interval": "1s", "timeout": "60s", "max_stale_when_disconnected": "60s"}


def held_settings(url: str, namespace: str, proxy: FaultProxy) -> dict[str, Any]:
    """A chain whose bus (only) goes through ``proxy``."""
    return bus_chain_settings(url, namespace, bus={**PATIENT, "url": proxy.url("redis")})
