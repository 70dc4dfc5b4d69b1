"""A DynamoDB table as the source of truth: GetItem, BatchGetItem, PutItem, DeleteItem."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError, ProfileNotFound

from tiered_cache.errors import CodecError, ConfigError, SourceError, SourceThrottled
from tiered_cache.tier import MISSING, MissingType

from .aws import client_config, session_for
from .capacity import ReadMeter
from .errors import (
    BatchLoadError,
    BatchThrottledError,
    InvalidKeyError,
    TableConfigError,
    TableNotFoundError,
)
from .keys import AttributeValue, Identity, KeyCodec, show
from .settings import DynamoDBSourceSettings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

#: Error codes DynamoDB uses when a request was refused for lack of capacity.
THROTTLING_CODES: Final = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
#: BatchGetItem takes at most this many keys per request.
BATCH_GET_LIMIT: Final = 100
_TYPE_TAGS: Final = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})

R = TypeVar("R")


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
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        key: str,
        *,
        key_type: str = "S",
        range_key: str | None = None,
        range_key_type: str = "S",
        key_template: str | None = None,
        consistent_read: bool = False,
        projection: Sequence[str] | None = None,
        typed_items: bool = False,
        batch_retry_limit: int = 5,
        batch_backoff_base: float = 0.05,
        batch_backoff_max: float = 2.0,
        owns_client: bool = False,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name or f"dynamodb:{table}"
        self.table = table
        self.codec = KeyCodec(key, key_type, range_key, range_key_type, key_template)
        self._client = client
        self._owns_client = owns_client
        self._typed = typed_items
        self._retry_limit = batch_retry_limit
        self._backoff_base = batch_backoff_base
        self._backoff_max = batch_backoff_max
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._serializer = TypeSerializer()
        self._deserializer = TypeDeserializer()
        self._read_params: dict[str, Any] = {"ConsistentRead": consistent_read}
        #: Reads and the read capacity they cost, for ``stats()`` (``report``).
        self._meter = ReadMeter(consistent=consistent_read)
        if projection:
            # Key attributes are always read: batch results are matched to keys by them.
            names = list(dict.fromkeys([*self.codec.attributes, *projection]))
            # Placeholders for every name, so reserved words ("name", "text") just work.
            self._read_params["ProjectionExpression"] = ", ".join(
                f"#p{i}" for i in range(len(names))
            )
            self._read_params["ExpressionAttributeNames"] = {
                f"#p{i}": attribute for i, attribute in enumerate(names)
            }
        self._where = (
            f"table {table!r} (region {client.meta.region_name}, "
            f"endpoint {client.meta.endpoint_url})"
        )
        self._table_checked = False
        self._schema_error: TableConfigError | None = None
        self._check_lock = threading.Lock()
        self._closed = False

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
            key_type=settings.key_type,
            range_key=settings.range_key,
            range_key_type=settings.range_key_type,
            key_template=settings.key_template,
            consistent_read=settings.consistent_read,
            projection=settings.projection,
            typed_items=settings.typed_items,
            batch_retry_limit=settings.batch_retry_limit,
            batch_backoff_base=settings.batch_backoff_base,
            batch_backoff_max=settings.batch_backoff_max,
            owns_client=client is None,
            sleep=sleep,
            rng=rng,
        )

    @property
    def client(self) -> DynamoDBClient:
        """The boto3 client (to register event hooks on, in tests and metrics)."""
        return self._client

    def __repr__(self) -> str:
        return f"DynamoDBSource({self._where})"

    # -- the Source protocol ------------------------------------------------------------------

    def load(self, key: str) -> Any | MissingType:
        """The item for ``key`` (GetItem), or ``MISSING`` if the table has none."""
        typed_key = self.codec.to_key(key)
        self._ready()
        response = self._call(
            "GetItem",
            self._client.get_item,
            TableName=self.table,
            Key=typed_key,
            **self._read_params,
        )
        item = response.get("Item")
        if item is None:
            self._meter.not_found()
            return MISSING
        self._meter.found(item)
        return self._decode(item)

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Items for the keys the table has, with one BatchGetItem per 100 distinct keys.

        UnprocessedKeys are retried with exponential backoff and full jitter, at most
        ``batch_retry_limit`` times per request; keys still unread then raise
        :class:`BatchThrottledError` (a ``SourceThrottled``), whose ``found`` holds what was read.
        """
        # Every key is checked before the first request: a bad key costs no capacity.
        owners: dict[Identity, list[str]] = {}
        typed: dict[Identity, dict[str, AttributeValue]] = {}
        for key in dict.fromkeys(keys):
            typed_key = self.codec.to_key(key)
            identity = self.codec.identity(typed_key)
            # "042" and "42" name the same N item: both keys get it.
            owners.setdefault(identity, []).append(key)
            typed.setdefault(identity, typed_key)
        if not typed:
            return {}
        self._ready()
        found: dict[str, Any] = {}
        identities = list(typed)
        for start in range(0, len(identities), BATCH_GET_LIMIT):
            chunk = [typed[i] for i in identities[start : start + BATCH_GET_LIMIT]]
            later = max(0, len(identities) - start - BATCH_GET_LIMIT)
            self._batch_get(chunk, owners, found, later, len(identities))
        # Keys the table has no item for were read too, at the minimum cost each.
        self._meter.not_found(sum(1 for i in identities if owners[i][0] not in found))
        return found

    def report(self) -> dict[str, float]:
        """Items read and the read capacity units they cost, computed from their sizes (see
        :mod:`tiered_cache_dynamodb.capacity`); ``stats()`` turns it into units saved."""
        return self._meter.report()

    def store(self, key: str, value: Any) -> None:
        """Write ``value`` (the whole item) with PutItem.

        The item must carry the key attributes, equal to what ``key`` maps to; otherwise
        :class:`InvalidKeyError`. A value DynamoDB cannot hold (not a mapping, floats, ...)
        raises :class:`~tiered_cache.errors.CodecError`. Nothing is sent in either case.
        """
        typed_key = self.codec.to_key(key)
        item = self._encode(key, value)
        try:
            item_identity = self.codec.identity(item)
        except InvalidKeyError as exc:
            raise InvalidKeyError(
                f"cannot store the item for cache key {show(key)}: {exc}"
            ) from None
        if item_identity != self.codec.identity(typed_key):
            raise InvalidKeyError(
                f"cannot store the item for cache key {show(key)}: its key attributes give "
                f"{self.codec.format(item)!r}, not {show(key)}"
            )
        self._ready()
        self._call("PutItem", self._client.put_item, TableName=self.table, Item=item)

    def remove(self, key: str) -> None:
        """Delete the item of ``key`` (DeleteItem); deleting an absent item is not an error."""
        typed_key = self.codec.to_key(key)
        self._ready()
        self._call("DeleteItem", self._client.delete_item, TableName=self.table, Key=typed_key)

    def close(self) -> None:
        """Close the client if this source created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
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
        try:
            description = self._client.describe_table(TableName=self.table)["Table"]
        except ClientError as exc:
            if _code(exc) == "AccessDeniedException":
                logger.warning(
                    "cannot check %s: DescribeTable is not allowed (%s); going on unchecked",
                    self._where,
                    _message(exc),
                )
                self._table_checked = True
                return
            raise self._translate("DescribeTable", exc) from exc
        except BotoCoreError as exc:
            raise SourceError(f"DynamoDB DescribeTable on {self._where} failed: {exc}") from exc
        schema = {item["AttributeName"]: item["KeyType"] for item in description["KeySchema"]}
        types = {
            item["AttributeName"]: item["AttributeType"]
            for item in description.get("AttributeDefinitions", [])
        }
        hash_key = next((name for name, role in schema.items() if role == "HASH"), None)
        range_key = next((name for name, role in schema.items() if role == "RANGE"), None)
        codec = self.codec
        if (hash_key, range_key) != (codec.key, codec.range_key):
            # A key schema never changes: remember the verdict instead of asking every call.
            self._schema_error = TableConfigError(
                f"{self._where} has partition key {hash_key!r} and sort key {range_key!r}, "
                f"but the settings say key={codec.key!r}, range_key={codec.range_key!r}"
            )
            raise self._schema_error
        for attribute in codec.attributes:
            actual = types.get(attribute)
            if actual is not None and actual != codec.type_of(attribute):
                self._schema_error = TableConfigError(
                    f"{self._where}: key attribute {attribute!r} has type {actual!r}, but the "
                    f"settings say {codec.type_of(attribute)!r}"
                )
                raise self._schema_error
        self._table_checked = True

    def _ready(self) -> None:
        if self._closed:
            raise SourceError(f"the DynamoDB source for {self._where} is closed")
        if self._table_checked:
            return
        if self._schema_error is not None:
            raise self._schema_error
        with self._check_lock:
            if not self._table_checked:
                self.check_table()

    # -- batches ------------------------------------------------------------------------------

    def _batch_get(
        self,
        keys: Sequence[Mapping[str, AttributeValue]],
        owners: Mapping[Identity, list[str]],
        found: dict[str, Any],
        later: int,
        total: int,
    ) -> None:
        retries = 0
        while True:
            request = {self.table: {"Keys": keys, **self._read_params}}
            try:
                # Any: the request is built from validated typed keys; spelling out the stubs'
                # TypedDict union for it would add nothing.
                response = self._client.batch_get_item(RequestItems=cast(Any, request))
            except ClientError as exc:
                error = self._translate("BatchGetItem", exc)
                if isinstance(error, TableConfigError):
                    raise error from exc
                left = len(keys) + later
                message = f"{error} ({left} of {total} keys left unprocessed)"
                if isinstance(error, SourceThrottled):
                    raise BatchThrottledError(message, found, left) from exc
                raise BatchLoadError(message, found, left) from exc
            except BotoCoreError as exc:
                left = len(keys) + later
                raise BatchLoadError(
                    f"DynamoDB BatchGetItem on {self._where} failed: {exc} "
                    f"({left} of {total} keys left unprocessed)",
                    found,
                    left,
                ) from exc
            for item in response.get("Responses", {}).get(self.table, []):
                self._meter.found(item)
                value = self._decode(item)
                for cache_key in owners.get(self.codec.identity(item), ()):
                    found[cache_key] = value
            unprocessed = response.get("UnprocessedKeys", {}).get(self.table)
            keys = unprocessed["Keys"] if unprocessed else []
            if not keys:
                return
            if retries >= self._retry_limit:
                left = len(keys) + later
                raise BatchThrottledError(
                    f"DynamoDB BatchGetItem on {self._where} left {left} of {total} keys "
                    f"unprocessed after {retries} retries of its UnprocessedKeys (DynamoDB "
                    "leaves keys unprocessed when the table's read capacity is exceeded)",
                    found,
                    left,
                )
            # Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"): spreads
            # the retries of many callers instead of having them return in lockstep.
            delay = self._rng.uniform(
                0.0, min(self._backoff_max, self._backoff_base * 2.0**retries)
            )
            retries += 1
            logger.debug(
                "BatchGetItem on %s: %d keys unprocessed; retry %d in %.3fs",
                self._where,
                len(keys),
                retries,
                delay,
            )
            self._sleep(delay)

    # -- values and errors --------------------------------------------------------------------

    def _decode(self, item: Mapping[str, Any]) -> Any:
        if self._typed:
            return dict(item)
        return {name: self._deserializer.deserialize(value) for name, value in item.items()}

    def _encode(self, key: str, value: Any) -> dict[str, AttributeValue]:
        if not isinstance(value, Mapping):
            raise CodecError(
                f"the value stored for {show(key)} must be the item as a mapping of attribute "
                f"names to values, got {type(value).__name__}"
            )
        item: dict[str, AttributeValue] = {}
        for name, attribute in value.items():
            if not isinstance(name, str) or not name:
                raise CodecError(
                    f"the item for {show(key)} has attribute name {name!r}; names are "
                    "non-empty strings"
                )
            if self._typed:
                if not (
                    isinstance(attribute, Mapping)
                    and len(attribute) == 1
                    and next(iter(attribute)) in _TYPE_TAGS
                ):
                    raise CodecError(
                        f"attribute {name!r} of the item for {show(key)} is not in DynamoDB's "
                        f"typed form (such as {{'S': 'text'}}): {attribute!r}"
                    )
                item[name] = dict(attribute)
                continue
            try:
                item[name] = self._serializer.serialize(attribute)
            except (TypeError, ValueError, ArithmeticError) as exc:
                # ArithmeticError: decimal.Inexact and friends, for numbers DynamoDB cannot hold.
                raise CodecError(
                    f"attribute {name!r} of the item for {show(key)} cannot be stored in "
                    f"DynamoDB: {exc!r}"
                ) from exc
        return item

    def _call(self, operation: str, call: Callable[..., R], **params: Any) -> R:
        try:
            return call(**params)
        except ClientError as exc:
            raise self._translate(operation, exc) from exc
        except ParamValidationError as exc:
            if operation == "PutItem":
                raise CodecError(f"DynamoDB refused the item: {exc}") from exc
            raise SourceError(f"DynamoDB {operation} on {self._where}: {exc}") from exc
        except BotoCoreError as exc:
            raise SourceError(f"DynamoDB {operation} on {self._where} failed: {exc}") from exc

    def _translate(self, operation: str, exc: ClientError) -> SourceError:
        code = _code(exc)
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        if code in THROTTLING_CODES:
            return SourceThrottled(
                f"DynamoDB {operation} on {self._where} was throttled ({code}) "
                f"after {attempts} attempt{'s' if attempts != 1 else ''}"
            )
        if code == "ResourceNotFoundException":
            # Deleted since the check, perhaps: check again next time.
            self._table_checked = False
            return TableNotFoundError(
                f"DynamoDB table {self.table!r} does not exist in region "
                f"{self._client.meta.region_name} at endpoint {self._client.meta.endpoint_url} "
                f"({operation}: {_message(exc)})"
            )
        return SourceError(
            f"DynamoDB {operation} on {self._where} failed after {attempts} "
            f"attempt{'s' if attempts != 1 else ''}: {code}: {_message(exc)}"
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))
