"""The embedded default environment of the tweet example: everything ``make demo`` needs.

With nothing configured, :func:`environment` runs

- DynamoDB in-process: moto's server on a free loopback port, with the table ``tweet`` (hash key
  ``tweet_id``, 1 read and 1 write unit). moto does not enforce provisioned capacity, so a
  :class:`~tiered_cache_dynamodb.testing.ThrottleInjector` answers reads beyond 2 per item per
  second with ``ProvisionedThroughputExceededException`` (one read unit is two eventually
  consistent reads a second), and botocore's own retries run as they would against AWS;
- Redis from the configuration if it answers, otherwise a private ``redis-server`` on a free
  port when the binary is installed, otherwise no Redis tier (and a line saying how to add one);
- the chain of ``tweets.toml`` next to this file (memory, then Redis), whose values the
  ``TIERED_CACHE_*`` environment variables override.

A configured source (a ``[tiered_cache.source]`` table in ``--config FILE``) replaces moto: the
example then creates the table there if it is missing and emulates no throttling. Everything the
context manager started, it stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered_cache_dynamodb import DynamoDBSourceSettings, create_table, make_client
from tiered_cache_dynamodb.testing import MotoDynamoDB, ThrottleInjector
from tiered_cache_redis import RedisTierSettings
from tiered_cache_redis import make_client as make_redis_client

from tiered_cache import CacheSettings, ConfigError, TieredCache, load_settings
from tiered_cache.redaction import redact_url
from tiered_cache.testing.servers import RedisServer, redis_server_binary

from .round_trips import RoundTrips

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: The chain used when no ``--config`` is given.
DEFAULT_CONFIG = Path(__file__).with_name("tweets.toml")
TABLE = "tweet"
HASH_KEY = "tweet_id"
#: Cache key of a tweet; the decorator and the source's ``key_template`` must agree on it.
KEY_TEMPLATE = "tweet:{tweet_id}"
#: Eventually consistent reads per second that one read capacity unit buys (items <= 4 KB).
READS_PER_RCU = 2.0

INSTALL_REDIS_HINT = (
    "No Redis: running with process memory and DynamoDB only. To add the Redis tier, install "
    "redis-server (apt-get install redis-server) or point at one with "
    "TIERED_CACHE_TIERS__1__URL=redis://host:6379/0"
)


@dataclass
class Environment:
    """What :func:`environment` chose and built."""

    cache: TieredCache
    #: The settings the chain was built from (the async HTTP app builds its own chain from
    #: them: examples/tweets/app.py).
    settings: CacheSettings
    #: The DynamoDB client of the cache's source (the repository reads and writes with it).
    client: DynamoDBClient
    table: str
    #: One line per choice: where DynamoDB and Redis are, and why.
    description: list[str]
    #: The URL of the Redis tier, or ``None`` when the chain has none.
    redis_url: str | None
    #: True when DynamoDB is moto in this process (and throttling is emulated).
    embedded_dynamodb: bool
    #: The hook emulating provisioned capacity on :attr:`client`, when DynamoDB is embedded.
    throttle: ThrottleInjector | None
    #: Reads per item key per second the emulation allows (``None``: not emulated).
    emulated_read_rate: float | None
    _new_client: Callable[[], DynamoDBClient] = field(repr=False)
    #: Requests the chain sent to Redis, counted from its first (the demo's round trips).
    round_trips: RoundTrips = field(default_factory=RoundTrips)

    def new_client(self) -> tuple[DynamoDBClient, ThrottleInjector | None]:
        """Another client for the same table, with its own capacity emulation when embedded.

        The classic baseline of the load generator reads with it, so that the two patterns do
        not share (and drain) one set of token buckets.
        """
        client = self._new_client()
        if self.emulated_read_rate is None:
            return client, None
        return client, ThrottleInjector(per_key_rate=self.emulated_read_rate).register(client)

    def describe(self) -> str:
        """The description as printable lines."""
        return "\n".join(self.description)


def _redis_answers(url: str) -> bool:
    try:
        client = make_redis_client(url, timeout=0.5)
    except Exception:  # a cluster client connects when made
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _redis_configured(config: str | Path | None) -> bool:
    """Whether the user named a Redis, as opposed to the placeholder of ``tweets.toml``."""
    if config is not None:
        return True
    return any(name.upper().startswith("TIERED_CACHE_TIERS") for name in os.environ)


@contextlib.contextmanager
def _quiet_moto() -> Iterator[None]:
    # moto's server logs one werkzeug line per request; the demo makes thousands.
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    try:
        yield
    finally:
        werkzeug.setLevel(level)


@contextlib.contextmanager
def environment(
    config: str | Path | None = None,
    *,
    redis_url: str | None = None,
    read_capacity: int = 1,
    write_capacity: int = 1,
    emulate_throttling: bool = True,
    **overrides: Any,
) -> Iterator[Environment]:
    """A ready chain for the tweet example; stops what it started on exit.

    Args:
        config: a TOML file with a ``[tiered_cache]`` table; ``tweets.toml`` by default.
        redis_url: use this Redis (tests pass their own server's); skips the discovery.
        read_capacity, write_capacity: provisioned units of a table this creates.
        emulate_throttling: on embedded DynamoDB, throttle reads beyond the read capacity.
        overrides: fields of the chain's settings, above the file and the environment.

    Raises ``ConfigError`` for a bad configuration.
    """
    settings = load_settings(config if config is not None else DEFAULT_CONFIG, **overrides)
    description: list[str] = []
    with contextlib.ExitStack() as stack:
        # -- Redis
        settings, chosen_redis = _choose_redis(settings, config, redis_url, description, stack)
        # -- DynamoDB
        moto: MotoDynamoDB | None = None
        source = settings.source
        if source is None:
            stack.enter_context(_quiet_moto())
            moto = stack.enter_context(MotoDynamoDB())
            source = moto.settings(table=TABLE, key=HASH_KEY)
            description.append(
                f"DynamoDB: embedded (moto on {moto.endpoint_url}), table {TABLE!r} with "
                f"{read_capacity} read / {write_capacity} write unit(s)"
            )
        elif not isinstance(source, DynamoDBSourceSettings):
            raise ConfigError(f"the tweet example needs a 'dynamodb' source, not {source.kind!r}")
        elif source.key != HASH_KEY:
            raise ConfigError(
                f"the tweet example's table is keyed by {HASH_KEY!r}, not {source.key!r}"
            )
        else:
            where = source.endpoint_url or f"AWS region {source.region}"
            description.append(f"DynamoDB: configured, table {source.table!r} at {where}")
        # The repository exchanges items in DynamoDB's typed form under "tweet:{tweet_id}".
        source = source.model_copy(update={"key_template": KEY_TEMPLATE, "typed_items": True})
        settings = settings.model_copy(update={"source": source})
        setup_client = make_client(source)
        try:
            create_table(
                setup_client,
                source.table,
                source.key,
                read_capacity=read_capacity,
                write_capacity=write_capacity,
                exist_ok=True,
            )
        finally:
            setup_client.close()

        cache = stack.enter_context(TieredCache.from_settings(settings))
        round_trips = RoundTrips()
        round_trips.attach_chain(cache)  # before any read: every connection is seen
        client: DynamoDBClient = cache.source.client  # type: ignore[union-attr]
        throttle: ThrottleInjector | None = None
        rate: float | None = None
        if moto is not None and emulate_throttling:
            rate = READS_PER_RCU * read_capacity
            throttle = ThrottleInjector(per_key_rate=rate).register(client)
            description.append(
                f"Throttling: emulated, {rate:g} reads per item per second "
                "(moto itself does not enforce capacity)"
            )
        description.append(f"Chain: {cache!r}")
        new_client: Callable[[], DynamoDBClient] = (
            moto.client if moto is not None else lambda: make_client(source)
        )
        yield Environment(
            cache=cache,
            settings=settings,
            client=client,
            table=source.table,
            description=description,
            redis_url=chosen_redis,
            embedded_dynamodb=moto is not None,
            throttle=throttle,
            emulated_read_rate=rate,
            round_trips=round_trips,
            _new_client=new_client,
        )


def _choose_redis(
    settings: CacheSettings,
    config: str | Path | None,
    redis_url: str | None,
    description: list[str],
    stack: contextlib.ExitStack,
) -> tuple[CacheSettings, str | None]:
    """Settings whose Redis tier (if any) points at a Redis that answers, and its URL."""
    index = next(
        (i for i, tier in enumerate(settings.tiers) if isinstance(tier, RedisTierSettings)), None
    )
    if index is None:
        description.append("Redis: none in the configuration")
        return settings, None
    tier = settings.tiers[index]
    assert isinstance(tier, RedisTierSettings)
    url: str | None
    if redis_url is not None:
        url = redis_url
        description.append(f"Redis: {redact_url(url)} (given)")
    elif _redis_configured(config) and _redis_answers(tier.url):
        url = tier.url
        description.append(f"Redis: configured, {redact_url(url)}")
    else:
        reason = (
            f"the configured {redact_url(tier.url)} does not answer"
            if _redis_configured(config)
            else "none configured"
        )
        if redis_server_binary() is not None:
            server = stack.enter_context(RedisServer())
            url = server.url
            description.append(f"Redis: private redis-server on {redact_url(url)} ({reason})")
        else:
            url = None
            description.append(f"Redis: none ({reason}, and redis-server is not installed)")
            print(INSTALL_REDIS_HINT)
    tiers = list(settings.tiers)
    if url is None:
        del tiers[index]
    else:
        tiers[index] = tier.model_copy(update={"url": url})
    return settings.model_copy(update={"tiers": tiers}), url
