"""The settings of a ``redis`` tier, as a config file or the environment states them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from tiered_cache.codecs import get_codec
from tiered_cache.errors import ConfigError
from tiered_cache.redaction import redacted_repr_args
from tiered_cache.settings import Namespace, TierSettings
from tiered_cache.units import ByteSize, Duration, Ttl

from .chunks import KEYS_PER_CALL
from .client import parse_url
from .stored import MAX_VALUE_SIZE


class RedisTierSettings(TierSettings):
    """A shared tier in Redis or Redis Cluster."""

    # hide_input_in_errors: a ValidationError must not echo a URL with its password.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: Literal["redis"] = Field(default="redis", description="Always 'redis'.")
    url: str = Field(
        default="redis://localhost:6379/0",
        description="Where Redis is: 'redis://host:6379/0'; 'rediss://' for TLS; credentials in "
        "the URL ('redis://user:password@host:6379/0'); 'redis+cluster://host:6379' (or "
        "cluster = true) for Redis Cluster, any node being enough to find the others.",
    )
    cluster: bool = Field(
        default=False,
        description="Use the Redis Cluster client even though the URL is a plain redis:// one.",
    )
    namespace: Namespace | None = Field(
        default=None,
        description="Key prefix in Redis ('<namespace>:<key>'); defaults to the cache's namespace.",
    )
    ttl: Ttl | None = Field(
        default=3600.0,
        description="Longest time Redis keeps an entry ('1h'); never beyond the entry's own hard "
        "expiry. None: only the entry's hard expiry bounds it.",
    )
    timeout: Duration = Field(
        default=0.05,
        gt=0,
        description="Socket timeout of each Redis operation ('50ms'); also the connect timeout "
        "unless connect_timeout is set. Keep it small: a cache that waits is worse than a miss.",
    )
    connect_timeout: Duration | None = Field(
        default=None,
        gt=0,
        description="Timeout to open a connection (TLS handshakes may need more than "
        "'timeout'); none: the same as timeout.",
    )
    pool_size: int = Field(
        default=50,
        ge=1,
        # A Redis server accepts 10,000 clients by default (maxclients); and redis-py's
        # blocking pool queues a placeholder per connection when it is made, so a pool of
        # 10**12 hung the build rather than failing it.
        le=10_000,
        description="Most connections kept open to Redis (per node for a cluster); a call "
        "waits up to 'timeout' for a free one.",
    )
    keys_per_call: int = Field(
        default=KEYS_PER_CALL,
        ge=1,
        description="Most keys one call to Redis carries: a get_many, set_many, delete or "
        "batch of leases of more keys is sent as several calls, each answered within "
        "'timeout' (which bounds a whole reply). Lower it for large values or a slow link; "
        "a read whose call fails keeps what the calls before it read.",
    )
    codec: str = Field(
        default="json",
        description="How values are turned into bytes: 'json' (default, readable), 'msgpack' "
        "(smaller, needs the msgpack extra) or 'pickle' (any Python value; trusted Redis only).",
    )

    max_value_size: ByteSize | None = Field(
        default=MAX_VALUE_SIZE,
        ge=1,
        description="Largest value the tier keeps, its codec's bytes ('1MiB', the default; "
        "none: any). A larger one is not kept (the key's older copy is deleted), counted in "
        "the tier's too_large and logged; reads of it go to the source, whose write stands. "
        "Redis itself takes up to 512 MB, but no value that size is written or read within "
        "'timeout'.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return check_url(url)

    @field_validator("codec")
    @classmethod
    def _check_codec(cls, name: str) -> str:
        try:
            get_codec(name)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return name

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        return redacted_repr_args(super().__repr_args__(), ["url"])


def check_url(url: str) -> str:
    """``url`` if it is a Redis URL the tier can use; a ``ValueError`` (without the password)
    otherwise, to which pydantic adds the field's path."""
    try:
        parse_url(url)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return url
