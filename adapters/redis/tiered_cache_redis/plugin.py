"""Registers the Redis tier as kind ``redis`` (entry point ``tiered_cache.tiers``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import redis
from pydantic import ConfigDict, Field, field_validator
from redis.backoff import NoBackoff
from redis.retry import Retry

from tiered_cache.bus import Bus
from tiered_cache.errors import ConfigError
from tiered_cache.redaction import redacted_repr_args
from tiered_cache.registry import BuildContext, Plugin
from tiered_cache.settings import BusSettings
from tiered_cache.tier import Tier
from tiered_cache.units import Duration

from .bus import RedisBus
from .client import RedisClient, make_client, parse_url
from .listening import Health
from .settings import RedisTierSettings, check_url
from .tier import RedisTier

B = TypeVar("B")

#: Key of the chain's first Redis tier in ``BuildContext.shared``: leases and the invalidation
#: bus use its ``.client`` rather than opening another pool.
SHARED_TIER_KEY = "redis.tier"
#: Key of that tier's settings in ``BuildContext.shared`` (the bus takes its URL from them).
SHARED_SETTINGS_KEY = "redis.settings"


def client_options_of(settings: RedisTierSettings) -> dict[str, Any]:
    """The client arguments of a ``redis`` tier's settings (sync and asyncio clients alike)."""
    return {
        "cluster": settings.cluster,
        "timeout": settings.timeout,
        "connect_timeout": settings.connect_timeout,
        "pool_size": settings.pool_size,
    }


def tier_options_of(settings: RedisTierSettings, context: BuildContext) -> dict[str, Any]:
    """The tier arguments of a ``redis`` tier's settings (sync and asyncio tiers alike)."""
    return {
        "name": settings.name or "redis",
        "namespace": settings.namespace or context.namespace,
        "ttl": settings.ttl,
        "ttl_jitter": settings.ttl_jitter,
        "codec": settings.codec,
        "clock": context.clock,
        "keys_per_call": settings.keys_per_call,
        "max_value_size": settings.max_value_size,
    }


def build_redis_tier(settings: RedisTierSettings, context: BuildContext) -> Tier:
    """A :class:`RedisTier` from its settings; the chain wraps it in its circuit breaker."""
    target = parse_url(settings.url, cluster=settings.cluster)

    def connect() -> RedisClient:
        return make_client(settings.url, **client_options_of(settings))

    # A single server's client connects lazily by itself; a cluster client connects when made,
    # so it is made on first use: a cluster that is down at start-up fails calls, not the start.
    tier = RedisTier(
        None if target.cluster else connect(),
        connect=connect if target.cluster else None,
        **tier_options_of(settings, context),
    )
    context.shared.setdefault(SHARED_TIER_KEY, tier)
    context.shared.setdefault(SHARED_SETTINGS_KEY, settings)
    return tier


PLUGIN: Plugin[Tier] = Plugin("redis", RedisTierSettings, build_redis_tier)


class RedisBusSettings(BusSettings):
    """The invalidation bus on Redis pub/sub."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: Literal["redis"] = "redis"
    url: str | None = Field(
        default=None,
        description="Redis to publish and subscribe on; none: the chain's first Redis tier's.",
    )
    channel: str | None = Field(
        default=None, description="Channel name; none: '<namespace>:invalidations'."
    )
    timeout: Duration = Field(
        default=1.0,
        gt=0,
        description="Socket timeout of the bus connections, and how long a PING on the "
        "subscription may go unanswered before the bus counts as down ('1s').",
    )
    health_check_interval: Duration = Field(
        default=1.0,
        gt=0,
        description="How often the subscription is checked with a PING. A silent network or "
        "a stalled server is noticed (and in-process tiers bypassed) within "
        "health_check_interval + timeout.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        return redacted_repr_args(super().__repr_args__(), ["url"])


def bus_url(settings: RedisBusSettings, context: BuildContext) -> str:
    """The bus's Redis URL (its own, or the chain's first Redis tier's); sync and asyncio
    buses alike."""
    url = settings.url
    if url is None:
        tier_settings = context.shared.get(SHARED_SETTINGS_KEY)
        if tier_settings is None:
            raise ConfigError(
                "tiered_cache.bus.url: no Redis tier in the chain to take the URL from; "
                "set bus.url, or bus.kind = 'off'"
            )
        url = tier_settings.url
    if parse_url(url).cluster:
        raise ConfigError(
            "tiered_cache.bus.url: the bus needs a plain redis:// URL (pub/sub on a cluster "
            "reaches every node from any node: give one node's URL)"
        )
    return str(url)


def build_bus_with(
    make_bus: Callable[..., B],
    from_url: Callable[..., Any],
    retry: Callable[..., Any],
    settings: RedisBusSettings,
    context: BuildContext,
    **listening: Any,
) -> B:
    """A bus (``RedisBus`` or ``AsyncRedisBus``) from its settings, with clients of its own
    made by ``from_url`` (``redis.Redis.from_url`` or ``redis.asyncio``'s) and ``retry``
    (the ``Retry`` class of the same module); a subscription holds a connection.
    ``listening``: further arguments of ``make_bus`` (the asyncio bus's ``listen_with``)."""
    connect = bus_clients(from_url, retry, settings, context)
    return make_bus(
        connect,
        settings.channel or f"{context.namespace}:invalidations",
        publisher=connect(retries=1),
        health=Health(interval=settings.health_check_interval, timeout=settings.timeout),
        **listening,
    )


def bus_clients(
    from_url: Callable[..., Any],
    retry: Callable[..., Any],
    settings: RedisBusSettings,
    context: BuildContext,
) -> Callable[..., Any]:
    """What makes a bus's clients: ``connect()`` for the listener, ``connect(retries=1)`` for
    the publisher, by ``from_url`` with ``retry`` (of one redis-py module)."""
    url = bus_url(settings, context)

    def connect(retries: int = 0) -> Any:
        # The listener does its own health check and reconnects itself, telling the chain; a
        # silent reconnection inside redis-py would hide the messages lost meanwhile. The
        # publisher retries once, at once, for a pooled socket the server closed.
        return from_url(
            url,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
        )

    return connect


def build_redis_bus(settings: RedisBusSettings, context: BuildContext) -> Bus:
    """A :class:`RedisBus` with connections of its own."""
    return build_bus_with(RedisBus, redis.Redis.from_url, Retry, settings, context)


BUS_PLUGIN: Plugin[Bus] = Plugin("redis", RedisBusSettings, build_redis_bus)
