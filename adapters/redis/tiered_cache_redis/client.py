"""Redis clients from URLs, configured to fail fast as a cache tier must."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from tiered_cache.errors import ConfigError
from tiered_cache.redaction import redact_url
from tiered_cache.settings import checked
from tiered_cache.units import DurationLike

#: A client the Redis tier can use.
RedisClient: TypeAlias = "redis.Redis | RedisCluster"

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_PLAIN_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed tier URL: the URL as redis-py understands it, and whether it is a cluster."""

    url: str
    cluster: bool
    tls: bool


def parse_url(url: str, *, cluster: bool = False) -> RedisTarget:
    """Split a tier URL into redis-py's URL and the cluster flag.

    ``redis+cluster://`` and ``rediss+cluster://`` select the cluster client (redis-py itself
    knows only ``redis://``, ``rediss://`` and ``unix://``). The port must be a TCP port and the
    database a number: redis-py would silently use database 0 for ``redis://host/abc``. Errors
    show the URL with its password hidden.
    """
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    shown = repr(redact_url(url))
    if not separator:
        # Not shown, even redacted: text that is no URL may be a password put in its place.
        raise ConfigError(
            "the value is not a URL (no scheme such as 'redis://'); "
            "expected e.g. 'redis://localhost:6379/0'"
        )
    if scheme in _CLUSTER_SCHEMES:
        plain = _CLUSTER_SCHEMES[scheme]
        target = RedisTarget(f"{plain}://{rest}", cluster=True, tls=plain == "rediss")
    elif scheme in _PLAIN_SCHEMES:
        if cluster and scheme == "unix":
            raise ConfigError("Redis Cluster cannot be reached through a unix:// socket")
        target = RedisTarget(url, cluster=cluster, tls=scheme == "rediss")
    else:
        schemes = ", ".join(f"'{s}://'" for s in (*_PLAIN_SCHEMES, *_CLUSTER_SCHEMES))
        raise ConfigError(f"unsupported URL scheme {scheme!r} in {shown}; use one of {schemes}")
    if scheme != "unix":
        _check_address(target.url, shown)
    if not target.cluster:
        _check_options(target.url, shown)
    return target


def _check_options(url: str, shown: str) -> None:
    """The options in the query of a single-server URL are ones redis-py's connection takes;
    :class:`ConfigError` if not. redis-py keeps any option it does not know and passes it to
    every connection it makes: a misspelt one failed each command (and each bus subscription)
    with ``TypeError`` for the life of the process. Making a connection opens no socket."""
    try:
        redis.ConnectionPool.from_url(url).make_connection()
    except (TypeError, ValueError, redis.RedisError) as exc:
        # Texts such as "unexpected keyword argument 'x'" or "Invalid value for 'x' in
        # connection URL.": option names, never their values (redis-py raises its own
        # RedisError for a TLS option it cannot read: "Invalid SSL Certificate Requirements
        # Flag: <value>", a flag, not a secret).
        raise ConfigError(f"{shown}: an option of its query cannot be used ({exc})") from None


#: The highest database index a server can have (its ``databases`` setting is a C int).
_LAST_DATABASE = 2**31 - 2


def _check_address(url: str, shown: str) -> None:
    """The port and database of a ``redis://`` URL make sense; :class:`ConfigError` if not."""
    parts = urlsplit(url)
    query_before_at, at, _ = parts.query.partition("@")
    if "@" in parts.path + parts.fragment or (at and "=" not in query_before_at):
        # A password holding '/', '?' or '#' unencoded ends the authority early; the rest of it
        # would be read (and shown, in the messages below) as the port or the database.
        raise ConfigError(
            f"{shown}: the credentials hold '/', '?' or '#', which end a URL's host part; "
            "percent-encode them ('%2F', '%3F', '%23')"
        )
    try:
        parts.port  # noqa: B018 -- urllib checks the range when the port is read
    except ValueError:
        raise ConfigError(f"{shown}: the port must be a number from 1 to 65535") from None
    if parts.port == 0:
        raise ConfigError(f"{shown}: the port must be a number from 1 to 65535")
    host = parts.hostname or ""
    if not host.isprintable() or " " in host:
        # A NUL, a space or a control character reached the resolver only at the first connect.
        raise ConfigError(f"{shown}: the host holds a space or a control character")
    database = parts.path.strip("/")
    queried = parse_qs(parts.query).get("db")
    for given in ([database] if database else []) + (queried or []):
        # ASCII digits only (str.isdigit() also takes '\u0663' and '\u00b2'), and a number the
        # server's SELECT takes: its `databases` setting is at most 2**31 - 1.
        if not (given.isascii() and given.isdigit()) or int(given) > _LAST_DATABASE:
            raise ConfigError(
                f"{shown}: the database must be a number from 0 to {_LAST_DATABASE} "
                f"such as /0, not {given!r}"
            )


def client_options(
    *, timeout: DurationLike, connect_timeout: DurationLike | None = None, pool_size: int = 50
) -> dict[str, Any]:
    """Keyword arguments for redis-py's ``from_url``: short timeouts and almost no retrying.

    redis-py retries 10 times with backoff by default, which turns one dead server into seconds
    of waiting per call. A tier retries once, at once, and only on a broken connection (a pooled
    socket the server closed, e.g. after a restart); never on a timeout, since the circuit
    breaker and the chain's fail-safe handle a slow server better than waiting twice.

    ``timeout``, ``connect_timeout`` and ``pool_size`` are checked by the rules of a config
    file's Redis tier: one they refuse raises :class:`~tiered_cache.ConfigError` naming it.
    A ``timeout`` of 0, taken, made redis-py's sockets non-blocking: every call failed.
    """
    # Here, not at the top: the settings import this module (parse_url).
    from .settings import RedisTierSettings

    timeout = checked(RedisTierSettings, "timeout", timeout)
    connect_timeout = checked(RedisTierSettings, "connect_timeout", connect_timeout)
    pool_size = checked(RedisTierSettings, "pool_size", pool_size)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout if connect_timeout is not None else timeout,
        "max_connections": pool_size,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "decode_responses": False,
    }


def make_client(
    url: str,
    *,
    cluster: bool = False,
    timeout: DurationLike = 0.05,
    connect_timeout: DurationLike | None = None,
    pool_size: int = 50,
) -> RedisClient:
    """A redis-py client for ``url``: ``Redis`` on a blocking pool, or ``RedisCluster``.

    The single-server client does not connect until first used. The cluster client connects to
    discover the slots at once, so it raises here when no node answers.
    """
    target = parse_url(url, cluster=cluster)
    options = client_options(timeout=timeout, connect_timeout=connect_timeout, pool_size=pool_size)
    if target.cluster:
        # The cluster client retries whole commands (refreshing the slot map in between); the
        # same fail-fast policy applies at that level.
        return RedisCluster.from_url(target.url, **options)
    # A blocking pool waits (up to the timeout) for a free connection when all are busy instead
    # of raising "Too many connections" at once under a burst of threads.
    pool = redis.BlockingConnectionPool.from_url(
        target.url, timeout=options["socket_timeout"], **options
    )
    return redis.Redis.from_pool(pool)


def close_client(client: RedisClient) -> None:
    """Close ``client`` and its sockets.

    ``RedisCluster.close()`` closes each node's client but leaves the nodes' connection pools
    (made by the cluster client, not owned by the node clients) connected; their sockets then
    stay open until garbage collection. Disconnect those pools too.
    """
    client.close()
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():  # type: ignore[no-untyped-call]
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
