"""A DynamoDB table as the source of truth on a boto3 client: GetItem, BatchGetItem, PutItem,
DeleteItem (the decisions are :mod:`~tiered_cache_dynamodb.table_steps`', run directly)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ProfileNotFound

from tiered_cache.errors import ConfigError
from tiered_cache.steps import run
from tiered_cache.tier import MissingType

from .aws import client_config, session_for
from .keys import KeyCodec
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
    return session.client("dynamodb", endpoint_url=settings.endpoint_url, config=config)


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
        sleep: how to wait between UnprocessedKeys retries (injected so tests do not wait).
        rng: the jitter of those waits.
        options: the table's options, as :class:`~tiered_cache_dynamodb.table_steps.TableSteps`
            takes them (``key_type``, ``range_key``, ``key_template``, ``consistent_read``,
            ``projection``, ``typed_items``, ``batch_retry_limit``, ``batch_backoff_base``,
            ``batch_backoff_max``, ``name``).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        key: str,
        *,
        owns_client: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        **options: Any,
    ) -> None:
        self._client = client
        self._owns_client = owns_client
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
            sleep=sleep,
            rng=rng,
            **table_options(settings),
        )

    @property
    def client(self) -> DynamoDBClient:
        """The boto3 client (to register event hooks on, in tests and metrics)."""
        return self._client

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
        :mod:`tiered_cache_dynamodb.capacity`); ``stats()`` turns it into units saved."""
        return self._steps.meter.report()

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
        if self._owns_client:
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
        return getattr(self._client, method)(**params)

    def _check_once(self) -> None:
        # One DescribeTable however many threads make their first call at once.
        with self._check_lock:
            if not self._steps.checked:
                self.check_table()
