"""Follows a table's DynamoDB stream and invalidates the changed keys in a tiered cache.

A write made straight to the table (another program, the console, a migration) never passes
through the cache, so nothing would drop the copies the tiers hold until their TTL runs out.
:class:`StreamFollower` reads the table's stream (DescribeStream -> GetShardIterator ->
GetRecords, per shard) and hands the cache key of every changed item to
``cache.invalidate_many`` -- which removes it from every tier and, with the invalidation bus,
from every process's memory.

Guarantees: at-least-once. The position (last sequence number per shard) is saved only after
the invalidations of a page reached every shared tier and the bus (a strict
``invalidate_many``, which raises otherwise), so a crash or an unreachable Redis replays a page
rather than skipping one; replaying is harmless because invalidating a key twice, or out of
order, is the same as once.
The same property is why shards are not read parent-before-child: the order of invalidations
does not matter, only that each happens after its write.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import string
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ConfigDict, Field, SecretStr, field_validator

from tiered_cache.errors import ConfigError, KeyTemplateError, TieredCacheError
from tiered_cache.settings import SettingsTable
from tiered_cache.units import Duration

from .aws import client_config, hide_endpoint_secrets, session_for
from .errors import InvalidKeyError
from .keys import KeyCodec, show
from .settings import (
    DynamoDBSourceSettings,
    KeyType,
    TableName,
    check_endpoint,
    default_region,
    endpoint_repr_args,
)

if TYPE_CHECKING:
    from .keys import Identity

logger = logging.getLogger(__name__)

__all__ = [
    "SHARD_END",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "Invalidator",
    "JSONFileCheckpointStore",
    "MemoryCheckpointStore",
    "StreamError",
    "StreamFollower",
    "StreamSettings",
    "cache_key_of",
]

StartPosition = Literal["TRIM_HORIZON", "LATEST"]

#: The position saved for a shard that was read to its end (it is never read again).
SHARD_END: Final = "SHARD_END"
#: The events that change an item; each one invalidates the item's cache key.
CHANGE_EVENTS: Final = frozenset({"INSERT", "MODIFY", "REMOVE"})
#: Error codes with which DynamoDB Streams refuses a request for lack of capacity.
STREAM_THROTTLING_CODES: Final = frozenset(
    {
        "LimitExceededException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
_CHECKPOINT_VERSION: Final = 1


class StreamError(TieredCacheError):
    """The table has no stream, or the stream cannot be read; the message says which."""


class CheckpointError(TieredCacheError):
    """A saved position cannot be read (a damaged or foreign file); the message names it."""


# -- settings -------------------------------------------------------------------------------


class StreamSettings(SettingsTable):
    """What the stream follower reads, where it keeps its position, and how often it polls.

    Fields left unset (``None``) are taken from the cache's ``dynamodb`` source settings when
    they are given (see :meth:`resolve`), so a config file usually needs only ``checkpoint``.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    table: TableName | None = Field(default=None, description="Table whose stream is read.")
    stream_arn: str | None = Field(
        default=None,
        description="ARN of the stream; none: the table's latest stream (DescribeTable).",
    )
    key: str | None = Field(default=None, min_length=1, description="Partition key attribute.")
    key_type: KeyType | None = Field(default=None, description="Its type: 'S', 'N' or 'B'.")
    range_key: str | None = Field(default=None, min_length=1, description="Sort key attribute.")
    range_key_type: KeyType | None = Field(default=None, description="Its type.")
    key_template: str | None = Field(
        default=None,
        description="Cache key <-> item key template ('tweet:{tweet_id}'); the follower applies "
        "its inverse. None (and no source settings): the cache key is the partition key value.",
    )
    region: str | None = Field(default=None, min_length=1, description="AWS region.")
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint for both DynamoDB and DynamoDB Streams (moto, DynamoDB Local); "
        "none: AWS's.",
    )
    aws_access_key_id: str | None = Field(repr=False, default=None, description="Access key.")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="Secret key.")
    aws_session_token: SecretStr | None = Field(default=None, description="Session token.")
    profile: str | None = Field(default=None, description="Named AWS profile.")
    checkpoint: Path | None = Field(
        default=None,
        description="JSON file keeping the position across restarts; none: the position lives "
        "in memory only and a restart begins at start_position again.",
    )
    start_position: StartPosition = Field(
        default="TRIM_HORIZON",
        description="Where a first run (no checkpoint) begins: 'TRIM_HORIZON', the oldest "
        "record kept (up to 24 h; replays are harmless), or 'LATEST', only new records.",
    )
    poll_interval: Duration = Field(
        default=1.0,
        gt=0,
        description="Wait after a pass that found no records ('1s'). It bounds the delay "
        "between a write and its invalidation, together with the stream's own delay.",
    )
    batch_size: int = Field(
        default=1000, ge=1, le=1000, description="Records per GetRecords (its Limit)."
    )
    shard_refresh_interval: Duration = Field(
        default=60.0,
        gt=0,
        description="How often the shard list is re-read (it is also re-read when a shard ends).",
    )
    backoff_base: Duration = Field(
        default=0.1, gt=0, description="First wait after a throttle or error; doubles."
    )
    backoff_max: Duration = Field(default=10.0, gt=0, description="Longest wait after failures.")
    reinvalidate_after: Duration | None = Field(
        default=None,
        gt=0,
        description="Invalidate every changed key a second time this long after the first "
        "('2s'): closes the race in which a read that loaded the old item just before the "
        "write fills a tier just after the first invalidation. Longer than your slowest "
        "load; none: once. Pending second invalidations are not kept across restarts.",
    )
    clear_on_gap: bool = Field(
        default=True,
        description="Clear the cache when records were lost (the saved position was trimmed "
        "from the stream, or the stream was replaced): the only way to stay coherent.",
    )
    connect_timeout: Duration = Field(default=2.0, gt=0, description="TCP connect timeout.")
    read_timeout: Duration = Field(default=10.0, gt=0, description="Response timeout.")
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="botocore attempts per request (first included)."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        return endpoint_repr_args(super().__repr_args__())

    def resolve(self, source: DynamoDBSourceSettings | None = None) -> StreamSettings:
        """A copy whose unset table, key and connection fields come from ``source``.

        Raises :class:`ConfigError` if the table or its key is still unknown, or if the key
        template does not fit the keys.
        """
        values = self.model_dump(exclude_none=True)
        if source is not None:
            inherited = source.model_dump(
                include={
                    "table",
                    "key",
                    "key_type",
                    "range_key",
                    "range_key_type",
                    "key_template",
                    "region",
                    "endpoint_url",
                    "aws_access_key_id",
                    "aws_secret_access_key",
                    "aws_session_token",
                    "profile",
                },
                exclude_none=True,
            )
            values = {**inherited, **values}
        values.setdefault("region", default_region())
        resolved = StreamSettings(**values)
        if resolved.table is None or resolved.key is None:
            raise ConfigError(
                "stream follower: 'table' and 'key' are needed; set them in the stream settings "
                "or give the cache a dynamodb source"
            )
        try:
            resolved.codec()
        except KeyTemplateError as exc:
            raise ConfigError(f"stream follower: {exc}") from None
        return resolved

    def codec(self) -> KeyCodec:
        """The key codec of these (resolved) settings."""
        if self.key is None:
            raise ConfigError("stream follower: the partition key attribute ('key') is not set")
        return KeyCodec(
            self.key,
            self.key_type or "S",
            self.range_key,
            self.range_key_type or "S",
            self.key_template,
        )


# -- item key -> cache key ------------------------------------------------------------------


def cache_key_of(codec: KeyCodec, keys: Mapping[str, Any]) -> str:
    """The cache key of an item, from its typed key attributes (a stream record's ``Keys``).

    The inverse of :meth:`KeyCodec.to_key`. Raises :class:`InvalidKeyError` if no cache key
    maps back to this item: a key attribute is absent or of another type, or the template
    would split the result differently (``"{user_id}#{tweet_id}"`` with a ``#`` in
    ``user_id``). Such an item cannot be read through the cache, so nothing is to invalidate.

    Numbers come out in their canonical spelling (:func:`canonical_number`: ``"42"``,
    ``"1.5"``); a reader who spells the same number another way (``"042"``, ``"1.50"``) caches
    it under a key this cannot know.
    """
    identity: Identity = codec.identity(keys)
    values: dict[str, str] = {}
    for name in codec.attributes:
        kind = codec.type_of(name)
        raw = keys[name][kind]
        if kind == "B":
            values[name] = base64.b64encode(bytes(raw)).decode("ascii")
        elif kind == "N":
            values[name] = canonical_number(str(raw))
        else:
            values[name] = str(raw)
    if codec.template is None:
        candidate = values[codec.key]
    else:
        # Not str.format_map: attribute names such as "a.b" would be read as attribute access.
        candidate = "".join(
            literal + (values[name] if name is not None else "")
            for literal, name, _, _ in string.Formatter().parse(codec.template.text)
        )
    try:
        round_trip = codec.identity(codec.to_key(candidate))
    except KeyTemplateError as exc:  # InvalidKeyError is one
        raise InvalidKeyError(f"the item's key maps to no usable cache key: {exc}") from None
    if round_trip != identity:
        raise InvalidKeyError(
            f"the item's key maps to cache key {show(candidate)}, which the key template reads "
            "back as another item"
        )
    return candidate


def canonical_number(text: str) -> str:
    """A DynamoDB number as DynamoDB itself returns it: no exponent, no redundant zeros.

    ``"7.50"`` -> ``"7.5"``, ``"1E+2"`` -> ``"100"``, ``"-0.0"`` -> ``"0"``. Done here rather
    than trusted to the server because emulators (moto) echo the number as it was written.
    """
    number = Decimal(text)
    if number.is_zero():
        return "0"
    return format(number.normalize(), "f")


# -- checkpoints ----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """The position in one stream: the last processed sequence number of each shard.

    A shard read to its end is saved as :data:`SHARD_END`.
    """

    stream_arn: str | None = None
    shards: dict[str, str] = field(default_factory=dict)


class CheckpointStore(Protocol):
    """Where the follower keeps its position between runs."""

    def load(self) -> Checkpoint | None:
        """The saved position, or ``None`` if nothing was saved yet (a first run)."""
        ...

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the saved position; when this returns, a restart sees ``checkpoint``."""
        ...


class MemoryCheckpointStore:
    """A position kept in memory: survives a follower's restart, not the process's."""

    def __init__(self) -> None:
        self._saved: Checkpoint | None = None
        self._lock = threading.Lock()

    def load(self) -> Checkpoint | None:
        with self._lock:
            if self._saved is None:
                return None
            return Checkpoint(self._saved.stream_arn, dict(self._saved.shards))

    def save(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            self._saved = Checkpoint(checkpoint.stream_arn, dict(checkpoint.shards))


class JSONFileCheckpointStore:
    """A position in a small JSON file, replaced atomically (temporary file + ``os.replace``).

    A crash during a save leaves either the old file or the new one, never half of one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> Checkpoint | None:
        try:
            raw = self.path.read_bytes()  # decoded by json.loads, under the check below
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {str(self.path)!r}: {exc}") from exc
        try:
            data = json.loads(raw)
            if data.get("version") != _CHECKPOINT_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            arn = data.get("stream_arn")
            shards = data.get("shards", {})
            if not (arn is None or isinstance(arn, str)) or not isinstance(shards, dict):
                raise ValueError("unexpected structure")
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in shards.items()):
                raise ValueError("shard positions must be strings")
        except (ValueError, AttributeError) as exc:
            # Guessing a position would either skip records or hide the damage: refuse.
            raise CheckpointError(
                f"checkpoint {str(self.path)!r} is not a stream follower checkpoint ({exc}); "
                "delete it to start again from start_position"
            ) from None
        return Checkpoint(arn, dict(shards))

    def save(self, checkpoint: Checkpoint) -> None:
        body = json.dumps(
            {
                "version": _CHECKPOINT_VERSION,
                "stream_arn": checkpoint.stream_arn,
                "shards": checkpoint.shards,
            },
            indent=1,
            sort_keys=True,
        )
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        # The temporary file is in the same directory so that os.replace is a rename on one
        # file system, which is atomic.
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


# -- the follower ---------------------------------------------------------------------------


class Invalidator(Protocol):
    """What the follower needs of a cache (:class:`~tiered_cache.TieredCache` is one)."""

    def invalidate_many(self, keys: list[str], *, strict: bool = False) -> None:
        """Remove ``keys`` from every tier (and tell every process); with ``strict``, raise if
        a shared tier or the bus could not be reached."""
        ...

    def clear(self, *, strict: bool = False) -> None:
        """Remove everything (after records were lost); ``strict`` as above."""
        ...


@dataclass
class _Shard:
    id: str
    parent: str | None
    #: The shard has an ending sequence number: it takes no more records.
    closed: bool
    #: Last processed sequence number (where a new iterator resumes), if any.
    position: str | None = None
    #: Where a new iterator starts when there is no position.
    start: str = "TRIM_HORIZON"
    #: The first record of a page whose invalidation failed before any position was saved:
    #: a new iterator starts at it (at ``start`` again, LATEST skipped the page for good).
    retry_at: str | None = None
    iterator: str | None = None
    done: bool = False


@dataclass
class _Stats:
    records: int = 0
    invalidations: int = 0
    pages: int = 0
    skipped: int = 0
    ignored: int = 0
    errors: int = 0
    #: Passes failed in a row (0 once one succeeds): the follower is retrying, not moving on.
    failing: int = 0
    throttles: int = 0
    expired_iterators: int = 0
    gaps: int = 0
    checkpoints: int = 0
    checkpoint_errors: int = 0
    reinvalidations: int = 0
    shards_finished: int = 0
    shard_refreshes: int = 0
    #: Passes that found no record on any shard: from the first one on, the follower has
    #: caught up with the stream (the command's progress line stops there).
    idle_passes: int = 0


class StreamFollower:
    """Reads a table's DynamoDB stream and invalidates the cache key of every changed item.

    Run it as a thread (:meth:`start`/:meth:`stop`, or ``with follower:``) next to the cache,
    or in the foreground with :meth:`run_forever` (the ``tiered-cache follow-stream`` command).

    Args:
        cache: what to invalidate; ``invalidate_many`` is called once per GetRecords page.
        settings: the stream settings; unset fields come from ``source``.
        source: the cache's ``dynamodb`` source settings, for the table, keys and credentials.
        checkpoints: where the position is kept; default: ``settings.checkpoint`` as a JSON
            file, or in memory if that is unset.
        streams_client: a boto3 DynamoDB Streams client to use instead of making one (the
            follower then does not close it).
        dynamodb_client: the same for the DynamoDB client (DescribeTable).
        clock: monotonic seconds, for the shard-list refresh and the second invalidations.
        sleep: how to wait (poll interval, backoff). Default: a wait that :meth:`stop` cuts
            short. Tests inject a recorder.
        rng: the jitter of the backoff.
    """

    def __init__(
        self,
        cache: Invalidator,
        settings: StreamSettings | None = None,
        *,
        source: DynamoDBSourceSettings | None = None,
        checkpoints: CheckpointStore | None = None,
        streams_client: Any = None,
        dynamodb_client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings = (settings or StreamSettings()).resolve(source)
        self.table: str = settings.table or ""
        self.codec = settings.codec()
        self._cache = cache
        if checkpoints is None:
            checkpoints = (
                JSONFileCheckpointStore(settings.checkpoint)
                if settings.checkpoint is not None
                else MemoryCheckpointStore()
            )
        self.checkpoints = checkpoints
        self._owned: list[Any] = []
        if streams_client is None or (dynamodb_client is None and settings.stream_arn is None):
            session = session_for(settings)
            config = client_config(settings, "standard")
            if streams_client is None:
                streams_client = hide_endpoint_secrets(
                    session.client(
                        "dynamodbstreams", endpoint_url=settings.endpoint_url, config=config
                    )
                )
                self._owned.append(streams_client)
            if dynamodb_client is None and settings.stream_arn is None:
                dynamodb_client = hide_endpoint_secrets(
                    session.client("dynamodb", endpoint_url=settings.endpoint_url, config=config)
                )
                self._owned.append(dynamodb_client)
        self._streams = streams_client
        self._dynamodb = dynamodb_client
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        self._rng = rng or random.Random()
        self._thread: threading.Thread | None = None
        # One pass at a time: run_once from a test and the thread must not interleave.
        self._pass_lock = threading.Lock()
        self._changed = threading.Condition()
        self._stats = _Stats()
        self._arn: str | None = None
        self._checkpoint: Checkpoint | None = None
        self._first_run = False
        self._shards: dict[str, _Shard] = {}
        self._refresh_due = 0.0
        self._must_refresh = True
        #: (when, keys) of the second invalidations to come, oldest first.
        self._delayed: deque[tuple[float, list[str]]] = deque()

    # -- running --------------------------------------------------------------------------

    def start(self) -> StreamFollower:
        """Follow the stream in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the stream follower is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"tiered-cache-stream:{self.table}", daemon=True
        )
        self._thread.start()
        logger.info("following the stream of table %r (thread)", self.table)
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop following: the current page finishes (and is checkpointed) first."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("the stream follower of %r did not stop in time", self.table)

    def close(self) -> None:
        """Stop, and close the clients the follower made."""
        self.stop()
        for client in self._owned:
            client.close()
        self._owned.clear()

    def __enter__(self) -> StreamFollower:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the follower's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def run_forever(
        self, max_records: int | None = None, *, max_failures: int | None = None
    ) -> bool:
        """Follow the stream in this thread until :meth:`stop` (from another thread or a
        signal handler), until ``max_records`` records were processed, or until
        ``max_failures`` passes failed in a row. Whether it stopped in good order: ``False``
        when the last pass failed (its records are not checkpointed and will be read again)."""
        self._stop.clear()
        logger.info("following the stream of table %r", self.table)
        self._loop(max_records, max_failures)
        return self._stats.failing == 0

    def _loop(self, max_records: int | None = None, max_failures: int | None = None) -> None:
        while not self._stop.is_set():
            try:
                got = self.run_once()
            except Exception as exc:
                self._failed(exc)
                if max_failures is not None and self._stats.failing >= max_failures:
                    logger.error(
                        "stream of %r: %d passes failed in a row; giving up",
                        self.table,
                        self._stats.failing,
                    )
                    break
                self._sleep(self._backoff(self._stats.failing))
                continue
            with self._changed:
                self._stats.failing = 0
            if max_records is not None and self._stats.records >= max_records:
                logger.info("processed %d records; stopping", self._stats.records)
                break
            if got == 0 and not self._must_retry_now():
                self._note_idle()
                self._sleep(self._idle_wait())

    def _note_idle(self) -> None:
        with self._changed:
            self._stats.idle_passes += 1
            self._changed.notify_all()

    def _idle_wait(self) -> float:
        # Wake up for a due second invalidation rather than a whole poll interval later.
        wait = self.settings.poll_interval
        if self._delayed:
            wait = max(0.0, min(wait, self._delayed[0][0] - self._clock()))
        return wait

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _backoff(self, failures: int) -> float:
        # Jitter, so that followers of one stream that failed together do not retry together;
        # half the ceiling at least, so that a throttled stream does get a rest.
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (failures - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _failed(self, exc: Exception) -> None:
        code = _error_code(exc)
        with self._changed:
            self._stats.failing += 1
            if code in STREAM_THROTTLING_CODES:
                self._stats.throttles += 1
            else:
                self._stats.errors += 1
            self._changed.notify_all()
        if code in STREAM_THROTTLING_CODES:
            logger.info("stream of %r throttled (%s); backing off", self.table, code)
        elif isinstance(exc, TieredCacheError | ClientError | BotoCoreError | OSError):
            logger.warning("stream of %r: %s; retrying", self.table, exc)
        else:
            logger.exception("stream of %r: unexpected error; retrying", self.table)

    def _must_retry_now(self) -> bool:
        # An iterator to re-acquire or a shard list to re-read is work, not idleness.
        return self._must_refresh or any(
            shard.iterator is None and not shard.done for shard in self._shards.values()
        )

    # -- one pass ---------------------------------------------------------------------------

    def connect(self) -> str:
        """Find the stream (and load the checkpoint); its ARN. Raises :class:`StreamError`.

        Called by the first pass; call it first to fail fast on a table without a stream.
        """
        with self._pass_lock:
            return self._connect()

    def run_once(self) -> int:
        """Read one page from every shard with work to do; the number of records processed.

        Exceptions (throttling, network, a failed invalidation) propagate; the failed shard's
        position is unchanged, so the next pass reads its records again.
        """
        with self._pass_lock:
            self._connect()
            if self._must_refresh or self._clock() >= self._refresh_due:
                self._refresh_shards()
            got = 0
            for shard in list(self._shards.values()):
                if not shard.done:
                    got += self._poll(shard)
            self._reinvalidate_due()
            return got

    def _reinvalidate_due(self) -> None:
        now = self._clock()
        keys: list[str] = []
        while self._delayed and self._delayed[0][0] <= now:
            keys.extend(self._delayed.popleft()[1])
        if not keys:
            return
        unique = list(dict.fromkeys(keys))
        try:
            self._cache.invalidate_many(unique, strict=True)
        except BaseException:
            # Not lost: due now, so the next pass tries again.
            self._delayed.appendleft((now, unique))
            raise
        with self._changed:
            self._stats.reinvalidations += len(unique)
            self._changed.notify_all()

    def _connect(self) -> str:
        if self._arn is not None:
            return self._arn
        arn = self.settings.stream_arn or self._latest_stream_arn()
        saved = self.checkpoints.load()
        if saved is None:
            self._first_run = True
            self._checkpoint = Checkpoint(arn)
        elif saved.stream_arn not in (None, arn):
            # The stream was disabled and enabled again: what happened in between is unknown.
            self._gap(f"the table's stream changed (saved {saved.stream_arn!r}, now {arn!r})")
            self._first_run = False
            self._checkpoint = Checkpoint(arn)
        else:
            self._first_run = False
            self._checkpoint = Checkpoint(arn, dict(saved.shards))
        self._arn = arn
        logger.info(
            "stream %s of table %r: %s",
            arn,
            self.table,
            f"first run, from {self.settings.start_position}"
            if self._first_run
            else f"resuming {len(self._checkpoint.shards)} shard position(s)",
        )
        return arn

    def _latest_stream_arn(self) -> str:
        try:
            table = self._dynamodb.describe_table(TableName=self.table)["Table"]
        except ClientError as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                raise StreamError(f"table {self.table!r} does not exist") from exc
            raise StreamError(f"cannot describe table {self.table!r}: {exc}") from exc
        except BotoCoreError as exc:  # no credentials, an endpoint that does not answer
            raise StreamError(
                f"cannot describe table {self.table!r}: {type(exc).__name__}: {exc}"
            ) from exc
        arn = table.get("LatestStreamArn")
        enabled = table.get("StreamSpecification", {}).get("StreamEnabled", False)
        if not arn or not enabled:
            raise StreamError(
                f"table {self.table!r} has no stream enabled; enable one with view type "
                "KEYS_ONLY (or any other): UpdateTable StreamSpecification="
                "{StreamEnabled: true, StreamViewType: KEYS_ONLY}"
            )
        return str(arn)

    def _describe_shards(self) -> list[Mapping[str, Any]]:
        described: list[Mapping[str, Any]] = []
        start: str | None = None
        while True:
            params: dict[str, Any] = {"StreamArn": self._arn}
            if start is not None:
                params["ExclusiveStartShardId"] = start
            try:
                description = self._streams.describe_stream(**params)["StreamDescription"]
            except ClientError as exc:
                if _error_code(exc) == "ResourceNotFoundException":
                    raise StreamError(f"the stream {self._arn} of {self.table!r} is gone") from exc
                raise
            described.extend(description.get("Shards", []))
            start = description.get("LastEvaluatedShardId")
            if not start:
                return described

    def _refresh_shards(self) -> None:
        described = self._describe_shards()
        checkpoint = self._checkpoint
        assert checkpoint is not None
        seen: set[str] = set()
        for info in described:
            shard_id = str(info["ShardId"])
            seen.add(shard_id)
            closed = "EndingSequenceNumber" in info.get("SequenceNumberRange", {})
            shard = self._shards.get(shard_id)
            if shard is not None:
                shard.closed = closed
                continue
            shard = _Shard(shard_id, info.get("ParentShardId"), closed)
            saved = checkpoint.shards.get(shard_id)
            if saved == SHARD_END:
                shard.done = True
            elif saved is not None:
                shard.position = saved
            elif self._first_run:
                shard.start = self.settings.start_position
                # Nothing comes after the end of a closed shard.
                shard.done = closed and shard.start == "LATEST"
            else:
                # A shard born after the saved position (a split): all of it is new.
                shard.start = "TRIM_HORIZON"
            self._shards[shard_id] = shard
            logger.debug("shard %s of %r: %s", shard_id, self.table, shard)
        # A saved position short of its shard's end, of a shard no longer listed and not read
        # by this run (it ended and left the stream while the follower was down): the records
        # after it are lost as surely as a listed shard's that leaves unread (below).
        left_unread = [
            shard_id
            for shard_id, saved in checkpoint.shards.items()
            if shard_id not in seen and shard_id not in self._shards and saved != SHARD_END
        ]
        if left_unread:
            self._gap(
                f"{'shard' if len(left_unread) == 1 else 'shards'} {', '.join(left_unread)} "
                "left the stream while the follower was down, before being read to the end"
            )
        for shard_id in list(self._shards):
            if shard_id not in seen:
                # DynamoDB drops shards 24 h after they close. One not read to its end is lost.
                # The gap is handled before the shard is forgotten: if clearing fails, the
                # next refresh finds the same gap again.
                if not self._shards[shard_id].done:
                    self._gap(f"shard {shard_id} left the stream before it was read to its end")
                del self._shards[shard_id]
        # Positions of shards that left the stream are dead weight in the file.
        stale = [shard_id for shard_id in checkpoint.shards if shard_id not in seen]
        for shard_id in stale:
            del checkpoint.shards[shard_id]
        if stale:
            self._save()
        self._first_run = False
        self._must_refresh = False
        self._refresh_due = self._clock() + self.settings.shard_refresh_interval
        with self._changed:
            self._stats.shard_refreshes += 1
            self._changed.notify_all()

    def _iterator(self, shard: _Shard) -> str | None:
        params: dict[str, Any] = {"StreamArn": self._arn, "ShardId": shard.id}
        if shard.position is not None:
            params.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=shard.position)
        elif shard.retry_at is not None:
            params.update(ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=shard.retry_at)
        else:
            params["ShardIteratorType"] = shard.start
        try:
            response = self._streams.get_shard_iterator(**params)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "TrimmedDataAccessException" and (
                shard.position is not None or shard.retry_at is not None
            ):
                # The records after our position are older than the stream keeps (24 h).
                self._gap(f"the position in shard {shard.id} was trimmed from the stream")
                shard.position = shard.retry_at = None
                shard.start = "TRIM_HORIZON"
                return self._iterator(shard)
            if code == "ResourceNotFoundException":
                self._must_refresh = True
            raise
        iterator = response.get("ShardIterator")
        return str(iterator) if iterator else None

    def _poll(self, shard: _Shard) -> int:
        if shard.iterator is None:
            shard.iterator = self._iterator(shard)
            if shard.iterator is None:
                self._finish(shard)
                return 0
        try:
            response = self._streams.get_records(
                ShardIterator=shard.iterator, Limit=self.settings.batch_size
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ExpiredIteratorException":
                # Iterators live 15 minutes; a new one resumes after the last processed record.
                shard.iterator = None
                with self._changed:
                    self._stats.expired_iterators += 1
                    self._changed.notify_all()
                logger.info("iterator of shard %s expired; getting a new one", shard.id)
                return 0
            if code == "TrimmedDataAccessException":
                shard.iterator = None
            raise
        records: list[Mapping[str, Any]] = response.get("Records", [])
        if records:
            try:
                self._apply(shard, records)
            except BaseException:
                # Read these records again: the position was not advanced.
                shard.iterator = None
                if shard.position is None:
                    shard.retry_at = str(records[0]["dynamodb"]["SequenceNumber"])
                raise
        next_iterator = response.get("NextShardIterator")
        shard.iterator = str(next_iterator) if next_iterator else None
        if shard.iterator is None:
            self._finish(shard)
        return len(records)

    def _apply(self, shard: _Shard, records: list[Mapping[str, Any]]) -> None:
        keys: list[str] = []
        skipped = ignored = 0
        for record in records:
            if record.get("eventName") not in CHANGE_EVENTS:
                ignored += 1
                continue
            item_key = record.get("dynamodb", {}).get("Keys", {})
            try:
                keys.append(cache_key_of(self.codec, item_key))
            except InvalidKeyError as exc:
                skipped += 1
                logger.warning(
                    "stream of %r: record %s (%s) skipped: %s",
                    self.table,
                    record.get("dynamodb", {}).get("SequenceNumber"),
                    record.get("eventName"),
                    exc,
                )
        unique = list(dict.fromkeys(keys))
        if unique:
            # Strict: a page whose keys did not reach every shared tier and the bus raises
            # here, before the position moves, and is read again after a backoff.
            self._cache.invalidate_many(unique, strict=True)
            if self.settings.reinvalidate_after is not None:
                self._delayed.append((self._clock() + self.settings.reinvalidate_after, unique))
        # Only now: a crash before this point replays the page (at-least-once).
        shard.position = str(records[-1]["dynamodb"]["SequenceNumber"])
        assert self._checkpoint is not None
        self._checkpoint.shards[shard.id] = shard.position
        self._save()
        with self._changed:
            stats = self._stats
            stats.records += len(records)
            stats.invalidations += len(unique)
            stats.pages += 1
            stats.skipped += skipped
            stats.ignored += ignored
            self._changed.notify_all()
        logger.debug(
            "shard %s: %d records, %d keys invalidated, position %s",
            shard.id,
            len(records),
            len(unique),
            shard.position,
        )

    def _finish(self, shard: _Shard) -> None:
        shard.done = True
        # Its children (a split) are in the shard list from now on.
        self._must_refresh = True
        assert self._checkpoint is not None
        self._checkpoint.shards[shard.id] = SHARD_END
        self._save()
        with self._changed:
            self._stats.shards_finished += 1
            self._changed.notify_all()
        logger.info("shard %s of %r read to its end", shard.id, self.table)

    def _save(self) -> None:
        assert self._checkpoint is not None
        try:
            self.checkpoints.save(self._checkpoint)
        except Exception as exc:
            # The invalidations happened; a restart would merely replay more. Keep going.
            with self._changed:
                self._stats.checkpoint_errors += 1
            logger.error("cannot save the stream position: %s", exc)
            return
        with self._changed:
            self._stats.checkpoints += 1

    def _gap(self, why: str) -> None:
        if self.settings.clear_on_gap:
            logger.warning(
                "stream of %r: records were lost (%s); clearing the cache", self.table, why
            )
            # Raises if a shared tier or the bus cannot be cleared: the caller has not moved
            # past the gap, so the next pass finds it (and clears) again.
            self._cache.clear(strict=True)
        else:
            logger.warning(
                "stream of %r: records were lost (%s); entries may be stale until their TTL",
                self.table,
                why,
            )
        with self._changed:
            self._stats.gaps += 1
            self._changed.notify_all()

    # -- observing --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: ``records`` read, ``invalidations`` (keys handed to the cache), ``pages``,
        ``skipped`` (keys that map to no cache key), ``errors``, ``failing`` (passes failed in
        a row, 0 once one succeeds), ``throttles``,
        ``expired_iterators``, ``gaps``, ``checkpoints`` saved, ``shards`` known, ..."""
        with self._changed:
            counters: dict[str, Any] = asdict(self._stats)
        counters["shards"] = len(self._shards)
        counters["running"] = self.running
        counters["stream_arn"] = self._arn
        return counters

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Block until ``predicate(stats())`` holds (checked after every change); whether it
        did within ``timeout`` seconds."""
        # Real time, not the injected clock: this waits for another thread's progress.
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.stats()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def wait_for_records(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` records were processed (see :meth:`wait_until`)."""
        return self.wait_until(lambda stats: stats["records"] >= count, timeout)

    def __repr__(self) -> str:
        return f"StreamFollower(table={self.table!r}, stream={self._arn!r})"


def _error_code(exc: BaseException) -> str:
    # A StreamError made of DynamoDB's refusal keeps its code: a throttled DescribeTable
    # is still counted as a throttle.
    refusal = exc.__cause__ if isinstance(exc, StreamError) else exc
    if isinstance(refusal, ClientError):
        return str(refusal.response.get("Error", {}).get("Code", ""))
    return ""
