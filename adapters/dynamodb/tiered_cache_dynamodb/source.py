"""A DynamoDB table as the source of truth on a boto3 client: GetItem, BatchGetItem, PutItem,
DeleteItem (the decisions are :mod:`~tiered_cache_dynamodb.table_steps`', run directly)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ProfileNotFound

from tiered_cache.errors import ConfigError, SourceError
from tiered_cache.forking import keep_from_the_parent, restart_after_fork
from tiered_cache.logs import logger_for
from tiered_cache.steps import run
from tiered_cache.tier import MissingType

from .aws import client_config, hide_endpoint_secrets, session_for
from .inherited import close_inherited_sockets
from .keys import KeyCodec
from .pools import ConnectionWatch, inherited_sockets
from .sends import SendWatch
from .settings import DynamoDBSourceSettings
from .table_steps import TableSteps, table_options

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def make_client(settings: DynamoDBSourceSettings) -> DynamoDBClient:
    """A low-level DynamoDB client for ``settings``, on its own boto3 session.

    Credentials are the settings' if given, else whatever boto3 finds. The connect timeout is
    short so that a down endpoint fails a call quickly; botocore retries each request up to
    ``max_attempts`` times in ``retry_mode``.
    """
    try:
        session = session_for(settings)
    except ProfileNotFound as exc:
        raise ConfigError(f"dynamodb source: AWS profile {settings.profile!r} not found") from exc
    config = client_config(settings, settings.retry_mode)
    return hide_endpoint_secrets(
        session.client("dynamodb", endpoint_url=settings.endpoint_url, config=config)
    )


class DynamoDBSource:
    """Reads and writes the items of one DynamoDB table, keyed by cache keys.

    A cache key maps to the item key through ``key_template`` (see :class:`KeyCodec`); bad keys
    raise before any request. Items are exchanged as plain Python values (numbers as
    :class:`~decimal.Decimal`, as boto3's ``TypeDeserializer`` gives them), or in DynamoDB's
    typed form with ``typed_items=True``.

    Throttling that outlasts botocore's retries raises
    :class:`~tiered_cache.errors.SourceThrottled`; other failures raise
    :class:`~tiered_cache.errors.SourceError` naming the table, region and endpoint.

    Args:
        client: a boto3 low-level DynamoDB client. The source closes it on :meth:`close` only
            if ``owns_client``.
        connect: makes a client like ``client``, for a forked child (see
            :meth:`after_fork_in_child`); without it, a child's source refuses every call.
        sleep: how to wait between UnprocessedKeys retries (injected so tests do not wait).
        rng: the jitter of those waits.
        options: the table's options, as :class:`~tiered_cache_dynamodb.table_steps.TableSteps`
            takes them (``key_type``, ``range_key``, ``key_template``, ``consistent_read``,
            ``projection``, ``typed_items``, ``batch_retry_limit``, ``batch_backoff_base``,
            ``batch_backoff_max``, ``name``).

    ``table``, ``key`` and the table's options are checked by the rules of a config file's
    ``dynamodb`` source (:class:`~tiered_cache_dynamodb.DynamoDBSourceSettings`): one they
    refuse raises :class:`~tiered_cache.ConfigError` naming it (``table: ...``), never its
    value.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        key: str,
        *,
        owns_client: bool = False,
        connect: Callable[[], DynamoDBClient] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        **options: Any,
    ) -> None:
        self._client: DynamoDBClient | None = client
        self._owns_client = owns_client
        self._connect = connect
        self._steps = TableSteps(
            table,
            key,
            call=self._call,
            sleep=sleep,
            check=self._check_once,
            region=str(client.meta.region_name),
            endpoint=str(client.meta.endpoint_url),
            rng=rng,
            **options,
        )
        self.name = self._steps.name
        self.table = table
        self.codec: KeyCodec = self._steps.codec
        self._check_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        #: A forked child's source whose client was given: it refuses every call.
        self._forked_from_client = False
        #: Whether a forked child's source makes its client anew.
        self._remakes_client = owns_client and connect is not None
        #: Otherwise (a client given, or owned with no ``connect``): whether the client has
        #: sent a request, before the source was given it too (it may hold open connections).
        self._sends = None if self._remakes_client else SendWatch(client)
        #: The watches started where botocore or urllib3 lack a name they read (:mod:`.layout`).
        self._watches_on_another_layout = 0
        #: If so: the socket of every connection the client opens (each client made anew
        #: too), for a child to close its copies of those no pool's queue holds at the fork.
        self._connections = self._watch(client) if self._remakes_client else None
        restart_after_fork(self)

    def after_fork_in_child(self) -> None:
        """botocore's connection pool does not look at the pid: in a forked child, the
        connections the parent kept open to DynamoDB are the parent's sockets, and a request
        the child wrote on one was answered to whichever process read first (a load failed
        with another key's item, in the child or the parent). A client this source made is
        let go of (kept, never closed: :func:`~tiered_cache.forking.keep_from_the_parent`)
        and made anew on the next call, and the child's copies of its sockets (idle, in use
        by a parent thread at the fork, or being opened: the fork waited) are closed without
        the pool's locks
        (:mod:`.inherited`); the locks are made anew. A
        client given to the source cannot be (nor one it owns with no ``connect``): the
        child's source refuses every call with a :class:`SourceError` that says so (and logs
        it once), unless the client never sent a request before the fork, through the source
        or before it was given (made in a prefork server's master at import, used in its
        workers only): it holds no connection then, and the child's source uses it. (A given
        client's sockets are the caller's, who may still use that client in the child: left
        alone.)"""
        self._check_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        if self._remakes_client:
            watch = self._connections
            if self._client is not None and watch is not None:
                # The child's copies, idle or in use by a parent thread, without a lock.
                close_inherited_sockets(lambda: inherited_sockets(watch))
            self._connections = None
            keep_from_the_parent(self._client)
            self._client = None
        elif self._sends is not None and self._sends.sent:
            self._forked_from_client = True
            logger_for("source").warning("%s", self._parents_client_error())

    @classmethod
    def from_settings(
        cls,
        settings: DynamoDBSourceSettings,
        *,
        client: DynamoDBClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> DynamoDBSource:
        """A source for ``settings``; with its own client (closed with it) unless one is given."""
        return cls(
            client if client is not None else make_client(settings),
            settings.table,
            settings.key,
            owns_client=client is None,
            connect=lambda: make_client(settings),
            sleep=sleep,
            rng=rng,
            **table_options(settings),
        )

    @property
    def client(self) -> DynamoDBClient:
        """The boto3 client (to register event hooks on, in tests and metrics); in a forked
        child, made there on first use."""
        if self._forked_from_client:
            raise self._parents_client_error()
        client = self._client
        if client is not None:
            return client
        with self._connect_lock:
            if self._client is None:
                assert self._connect is not None
                made = self._connect()
                # Watched before it is shared: a fork sees the client with its watch.
                self._connections = self._watch(made)
                self._client = made
            return self._client

    def _watch(self, client: DynamoDBClient) -> ConnectionWatch:
        watch = ConnectionWatch(client)
        self._watches_on_another_layout += watch.layout_changed
        return watch

    def _parents_client_error(self) -> SourceError:
        return SourceError(
            f"source {self.name!r}: this process was forked from the one that gave the source "
            "its boto3 client, whose open connections are the parent's sockets; it sends "
            "nothing on them. Let the source make its client (from_settings without client=) "
            "to use it after a fork"
        )

    def __repr__(self) -> str:
        return f"DynamoDBSource({self._steps.where})"

    # -- the Source protocol ------------------------------------------------------------------

    def load(self, key: str) -> Any | MissingType:
        """The item for ``key`` (GetItem), or ``MISSING`` if the table has none."""
        return run(self._steps.load(key))

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Items for the keys the table has, with one BatchGetItem per 100 distinct keys.

        UnprocessedKeys are retried with exponential backoff and full jitter, at most
        ``batch_retry_limit`` times per request; keys still unread then raise
        :class:`BatchThrottledError` (a ``SourceThrottled``), whose ``found`` holds what was read.
        """
        return run(self._steps.load_many(keys))

    def report(self) -> dict[str, float]:
        """Items read and the read capacity units they cost, computed from their sizes (see
        :mod:`tiered_cache_dynamodb.capacity`); ``stats()`` turns it into units saved. And the
        clients whose connections the source watched (for a forked child to close its copies)
        where botocore or urllib3 lack a name the watch reads (``watches_on_another_layout``:
        :mod:`.layout`): some of their connections stay open in a forked child."""
        return {
            **self._steps.meter.report(),
            "watches_on_another_layout": self._watches_on_another_layout,
        }

    def store(self, key: str, value: Any) -> None:
        """Write ``value`` (the whole item) with PutItem.

        The item must carry the key attributes, equal to what ``key`` maps to; otherwise
        :class:`InvalidKeyError`. A value DynamoDB cannot hold (not a mapping, floats, ...)
        raises :class:`~tiered_cache.errors.CodecError`. Nothing is sent in either case.
        """
        run(self._steps.store(key, value))

    def remove(self, key: str) -> None:
        """Delete the item of ``key`` (DeleteItem); deleting an absent item is not an error."""
        run(self._steps.remove(key))

    def close(self) -> None:
        """Close the client if this source created it. Idempotent."""
        if self._steps.closed:
            return
        self._steps.closed = True
        if self._sends is not None:
            self._sends.stop()
        # A child that made no client of its own has none to close (the parent's is kept).
        if self._owns_client and self._client is not None:
            self._client.close()

    def __enter__(self) -> DynamoDBSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the table check ----------------------------------------------------------------------

    def check_table(self) -> None:
        """DescribeTable: raise :class:`TableConfigError` if the table is absent or keyed otherwise.

        Called once, lazily, before the first request rather than when the source is built:
        building a chain then needs no network (a service starts, and serves from its other
        tiers, while DynamoDB is briefly unreachable; config checks run offline), and a missing
        table still fails the first call with a clear error instead of a bare
        ResourceNotFoundException. A role without ``dynamodb:DescribeTable`` skips the check.
        """
        run(self._steps.check_table())

    # -- the driver's I/O ---------------------------------------------------------------------

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        return getattr(self.client, method)(**params)

    def _check_once(self) -> None:
        # One DescribeTable however many threads make their first call at once.
        with self._check_lock:
            if not self._steps.checked:
                self.check_table()
