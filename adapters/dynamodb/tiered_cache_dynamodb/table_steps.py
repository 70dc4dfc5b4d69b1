"""The DynamoDB source's decisions, written once as steps for a sync and an async client.

Each operation (GetItem; BatchGetItem in chunks of 100 with its UnprocessedKeys retries;
PutItem; DeleteItem; the table check) is a generator of :mod:`tiered_cache.steps`: it yields
the requests and waits it needs and gets their results back (or their exception thrown in).
:class:`~tiered_cache_dynamodb.DynamoDBSource` runs them with ``steps.run`` on a boto3
client, :class:`~tiered_cache_dynamodb.AsyncDynamoDBSource` with ``steps.arun`` on an
aiobotocore client. The key checks, chunking, backoff, error mapping and item decoding are
this one code for both; only the I/O differs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from tiered_cache.errors import CodecError, SourceError, SourceThrottled
from tiered_cache.redaction import redact_url
from tiered_cache.steps import Steps
from tiered_cache.tier import MISSING, MissingType

from .capacity import ReadMeter, attribute_size
from .errors import (
    BatchLoadError,
    BatchThrottledError,
    InvalidKeyError,
    TableConfigError,
    TableNotFoundError,
)
from .keys import AttributeValue, Identity, KeyCodec, show
from .settings import TABLE_OPTIONS, DynamoDBSourceSettings, checked_options

logger = logging.getLogger("tiered_cache_dynamodb.source")

#: Error codes DynamoDB uses when a request was refused for lack of capacity.
THROTTLING_CODES: Final = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
#: BatchGetItem takes at most this many keys per request.
BATCH_GET_LIMIT: Final = 100
_TYPE_TAGS: Final = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})

#: ``call(method, params)``: the client's ``method`` (``"get_item"``) with ``params`` as its
#: keyword arguments; returns the response (sync) or an awaitable of it (async).
Call = Callable[[str, dict[str, Any]], Any]
#: ``sleep(seconds)``: returns nothing (sync) or an awaitable (async).
Sleep = Callable[[float], Any]
#: ``check()``: run :meth:`TableSteps.check_table` once, however many callers ask at once.
Check = Callable[[], Any]


def table_options(settings: DynamoDBSourceSettings) -> dict[str, Any]:
    """The keyword arguments of :class:`TableSteps` (after ``table`` and ``key``) that
    ``settings`` give; both sources' ``from_settings`` build from these."""
    return settings.model_dump(include=set(TABLE_OPTIONS))


class TableSteps:
    """The decisions of a source of one DynamoDB table, keyed by cache keys (see
    :class:`~tiered_cache_dynamodb.DynamoDBSource` for what each option means).

    Args:
        call, sleep, check: the driver's I/O (see :data:`Call`, :data:`Sleep`, :data:`Check`).
        region, endpoint: where the table is, for messages.
        given: the table's options (:data:`~tiered_cache_dynamodb.settings.TABLE_OPTIONS`),
            checked by the rules of a config file's dynamodb source, whose defaults the
            others take (:func:`~tiered_cache_dynamodb.settings.checked_options`).
    """

    def __init__(
        self,
        table: str,
        key: str,
        *,
        call: Call,
        sleep: Sleep,
        check: Check,
        region: str,
        endpoint: str,
        name: str | None = None,
        rng: random.Random | None = None,
        **given: Any,
    ) -> None:
        # The rules and defaults of a config file's dynamodb source, its settings' own
        # (:data:`~tiered_cache_dynamodb.settings.TABLE_OPTIONS`): built in code (both
        # sources are built here), a table name of 2 characters was sent to DynamoDB and
        # refused there, at the first read; a negative retry limit, a NaN backoff were taken.
        options = checked_options(table, key, given)
        self.name = name or f"dynamodb:{table}"
        self.table = table
        self.codec = KeyCodec(
            key,
            options["key_type"],
            options["range_key"],
            options["range_key_type"],
            options["key_template"],
        )
        self.region = region
        #: For messages only: redacted (an endpoint may hold a password, ``user:secret@``).
        self.endpoint = redact_url(endpoint)
        self._call = call
        self._sleep = sleep
        self._check = check
        self._typed: bool = options["typed_items"]
        self._retry_limit: int = options["batch_retry_limit"]
        self._backoff_base: float = options["batch_backoff_base"]
        self._backoff_max: float = options["batch_backoff_max"]
        self._rng = rng or random.Random()
        self._serializer = TypeSerializer()
        self._deserializer = TypeDeserializer()
        consistent_read: bool = options["consistent_read"]
        projection: list[str] | None = options["projection"]
        self._read_params: dict[str, Any] = {"ConsistentRead": consistent_read}
        #: Reads and the read capacity they cost, for ``stats()`` (``report``).
        self.meter = ReadMeter(consistent=consistent_read)
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
        self.where = f"table {table!r} (region {region}, endpoint {self.endpoint})"
        #: The table was checked (or could not be, for lack of permission).
        self.checked = False
        #: Why the table does not fit, once known: a key schema never changes. Each call is
        #: refused with an error of its own (one object raised again and again kept every
        #: refused call's frames in its traceback).
        self._schema_problem: str | None = None
        #: Set by the driver's close: no request is made afterwards.
        self.closed = False

    # -- the Source protocol's operations -----------------------------------------------------

    def load(self, key: str) -> Steps[Any | MissingType]:
        """GetItem: the item for ``key``, or ``MISSING``."""
        typed_key = self.codec.to_key(key)
        yield from self.ready()
        params = {"TableName": self.table, "Key": typed_key, **self._read_params}
        response = yield from self._request("GetItem", "get_item", params)
        item = response.get("Item")
        if item is None:
            self.meter.not_found()
            return MISSING
        try:
            value, identity = self._take(item, "GetItem")
        except SourceError:
            self.meter.not_found()  # read and billed; its size cannot be told
            raise
        if identity != self.codec.identity(typed_key):
            # BatchGetItem matches each item to its keys; GetItem's must be the key's own.
            raise SourceError(f"DynamoDB GetItem on {self.where} returned another key's item")
        return value

    def load_many(self, keys: Sequence[str]) -> Steps[dict[str, Any]]:
        """Items for the keys the table has, with one BatchGetItem per 100 distinct keys;
        UnprocessedKeys retried with exponential backoff and full jitter."""
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
        yield from self.ready()
        found: dict[str, Any] = {}
        unreadable: list[SourceError] = []
        identities = list(typed)
        for start in range(0, len(identities), BATCH_GET_LIMIT):
            chunk = [typed[i] for i in identities[start : start + BATCH_GET_LIMIT]]
            later = max(0, len(identities) - start - BATCH_GET_LIMIT)
            yield from self._batch_get(
                chunk, owners, found, later, len(identities), unreadable=unreadable
            )
        # Keys the table has no item for were read too, at the minimum cost each (and those
        # whose item could not be read, whose size cannot be told).
        self.meter.not_found(sum(1 for i in identities if owners[i][0] not in found))
        if unreadable:  # after every other key was read: the chain keeps what was found
            raise BatchLoadError(
                f"{unreadable[0]} ({len(unreadable)} of {len(identities)} keys left "
                "unprocessed: their items could not be read)",
                found,
                len(unreadable),
            ) from unreadable[0]
        return found

    def store(self, key: str, value: Any) -> Steps[None]:
        """PutItem of the whole item, whose key attributes must be those ``key`` maps to."""
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
        yield from self.ready()
        yield from self._request("PutItem", "put_item", {"TableName": self.table, "Item": item})

    def remove(self, key: str) -> Steps[None]:
        """DeleteItem; deleting an absent item is not an error."""
        typed_key = self.codec.to_key(key)
        yield from self.ready()
        params = {"TableName": self.table, "Key": typed_key}
        yield from self._request("DeleteItem", "delete_item", params)

    # -- the table check ----------------------------------------------------------------------

    def ready(self) -> Steps[None]:
        """Raise if closed or the table is known not to fit; have it checked once."""
        if self.closed:
            raise SourceError(f"the DynamoDB source for {self.where} is closed")
        if self.checked:
            return
        if self._schema_problem is not None:
            raise TableConfigError(self._schema_problem)
        yield (self._check, ())

    def check_table(self) -> Steps[None]:
        """DescribeTable: :class:`TableConfigError` if the table is absent or keyed otherwise
        (see :meth:`DynamoDBSource.check_table`); a role without ``DescribeTable`` skips it."""
        try:
            response = yield (self._call, ("describe_table", {"TableName": self.table}))
        except ClientError as exc:
            if _code(exc) == "AccessDeniedException":
                logger.warning(
                    "cannot check %s: DescribeTable is not allowed (%s); going on unchecked",
                    self.where,
                    _message(exc),
                )
                self.checked = True
                return
            raise self.translate("DescribeTable", exc) from exc
        except BotoCoreError as exc:
            raise SourceError(f"DynamoDB DescribeTable on {self.where} failed: {exc}") from exc
        description = response["Table"]
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
            self._schema_problem = (
                f"{self.where} has partition key {hash_key!r} and sort key {range_key!r}, "
                f"but the settings say key={codec.key!r}, range_key={codec.range_key!r}"
            )
            raise TableConfigError(self._schema_problem)
        for attribute in codec.attributes:
            actual = types.get(attribute)
            if actual is not None and actual != codec.type_of(attribute):
                self._schema_problem = (
                    f"{self.where}: key attribute {attribute!r} has type {actual!r}, but the "
                    f"settings say {codec.type_of(attribute)!r}"
                )
                raise TableConfigError(self._schema_problem)
        self.checked = True

    # -- batches ------------------------------------------------------------------------------

    def _batch_get(
        self,
        keys: Sequence[Mapping[str, AttributeValue]],
        owners: Mapping[Identity, list[str]],
        found: dict[str, Any],
        later: int,
        total: int,
        *,
        unreadable: list[SourceError],
    ) -> Steps[None]:
        """Read ``keys`` into ``found``; an item that cannot be read joins ``unreadable``."""
        retries = 0
        while True:
            request = {self.table: {"Keys": keys, **self._read_params}}
            try:
                response = yield (self._call, ("batch_get_item", {"RequestItems": request}))
            except ClientError as exc:
                error = self.translate("BatchGetItem", exc)
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
                    f"DynamoDB BatchGetItem on {self.where} failed: {exc} "
                    f"({left} of {total} keys left unprocessed)",
                    found,
                    left,
                ) from exc
            for item in response.get("Responses", {}).get(self.table, []):
                try:
                    value, identity = self._take(item, "BatchGetItem")
                except SourceError as exc:
                    unreadable.append(exc)
                    continue
                for cache_key in owners.get(identity, ()):
                    found[cache_key] = value
            unprocessed = response.get("UnprocessedKeys", {}).get(self.table)
            keys = unprocessed["Keys"] if unprocessed else []
            if not keys:
                return
            if retries >= self._retry_limit:
                left = len(keys) + later
                raise BatchThrottledError(
                    f"DynamoDB BatchGetItem on {self.where} left {left} of {total} keys "
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
                self.where,
                len(keys),
                retries,
                delay,
            )
            yield (self._sleep, (delay,))

    # -- values and errors --------------------------------------------------------------------

    def _take(self, item: Mapping[str, Any], operation: str) -> tuple[Any, Identity]:
        """An item DynamoDB returned (GetItem's and BatchGetItem's alike): the value the
        caller gets and the key it is the item of, its read counted. A
        :class:`SourceError` naming the attribute if it cannot be read (the deserializer's
        and the meter's own errors name no table), or the key if the item has none of the
        table's; the caller counts such a read (at the minimum: its size cannot be told)."""
        try:
            identity = self.codec.identity(item)
        except InvalidKeyError as exc:  # the table's answer, not the caller's key
            raise self._unreadable(operation, "key", exc) from exc
        size = 0
        decoded = {}
        for name, value in item.items():
            try:
                size += attribute_size(name, value)
                if not self._typed:
                    decoded[name] = self._deserializer.deserialize(value)
            except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
                raise self._unreadable(operation, f"attribute {name!r}", exc) from exc
        self.meter.found(size)
        return (dict(item) if self._typed else decoded), identity

    def _unreadable(self, operation: str, part: str, exc: Exception) -> SourceError:
        # The message names the part, never its value (an item may hold what should not
        # reach an error report).
        return SourceError(
            f"DynamoDB {operation} on {self.where} returned an item whose {part} cannot be "
            f"read ({type(exc).__name__}: {exc})"
        )

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

    def _request(self, operation: str, method: str, params: dict[str, Any]) -> Steps[Any]:
        try:
            return (yield (self._call, (method, params)))
        except ClientError as exc:
            raise self.translate(operation, exc) from exc
        except ParamValidationError as exc:
            if operation == "PutItem":
                raise CodecError(f"DynamoDB refused the item: {exc}") from exc
            raise SourceError(f"DynamoDB {operation} on {self.where}: {exc}") from exc
        except BotoCoreError as exc:
            raise SourceError(f"DynamoDB {operation} on {self.where} failed: {exc}") from exc

    def translate(self, operation: str, exc: ClientError) -> SourceError:
        """The tiered-cache error for a refused request: throttling, a missing table, other."""
        code = _code(exc)
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        if code in THROTTLING_CODES:
            return SourceThrottled(
                f"DynamoDB {operation} on {self.where} was throttled ({code}) "
                f"after {attempts} attempt{'s' if attempts != 1 else ''}"
            )
        if code == "ResourceNotFoundException":
            # Deleted since the check, perhaps: check again next time.
            self.checked = False
            return TableNotFoundError(
                f"DynamoDB table {self.table!r} does not exist in region "
                f"{self.region} at endpoint {self.endpoint} ({operation}: {_message(exc)})"
            )
        return SourceError(
            f"DynamoDB {operation} on {self.where} failed after {attempts} "
            f"attempt{'s' if attempts != 1 else ''}: {code}: {_message(exc)}"
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))
