"""Settings models: what a config file or the environment may say about a chain.

Only models live here. Tier and source kinds contribute their own models (subclasses of
:class:`TierSettings` / :class:`SourceSettings`) through :mod:`tiered_cache.registry`; the chain's
model resolves each ``kind`` to its plugin's model at validation time, so a misspelt field of a
Redis tier is reported as ``tiered_cache.tiers[1].timout: Extra inputs are not permitted``.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import NoneType, UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Self,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from . import policy_defaults
from .errors import ConfigError
from .keys import check_label, repeated_tier_name
from .registry import BUSES_GROUP, SOURCES_GROUP, TIERS_GROUP, find_plugin
from .sketch import MAX_WIDTH, sketch_width
from .units import ByteSize, Duration, DurationLike, Ttl

ROOT = "tiered_cache"

#: How a config file or an environment variable says None: TOML has no null, and a variable is
#: text. Taken (in any case) by a field that allows None and is not text, where a string
#: "none" could not mean anything else; a text field keeps the word.
NONE_WORD = "none"


def _label(field: str) -> BeforeValidator:
    """The chains' rule for ``field`` (:func:`~tiered_cache.keys.check_label`); what is not
    text is left to the field's type."""
    return BeforeValidator(
        lambda value: check_label(value, field) if isinstance(value, str) else value
    )


#: A namespace: text, not empty, that UTF-8 can encode (shared tiers store it before every
#: key, as UTF-8; it labels every series the exporters show).
Namespace = Annotated[str, _label("namespace")]
#: A tier's name: the same rule (it labels the tier's series).
TierName = Annotated[str, _label("name")]


class FieldProblem(ValueError):
    """A model validator's complaint about one field of its model: the error names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _is_text(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated:
        return _is_text(get_args(annotation)[0])
    return isinstance(annotation, type) and issubclass(annotation, str | SecretStr)


def _none_words(model: type[BaseModel], data: Any) -> Any:
    """``data`` with each ``"none"`` of a field that takes None (and is not text) made None."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    words = [
        name
        for name, value in data.items()
        if isinstance(value, str)
        and value.strip().lower() == NONE_WORD
        and name in fields
        and NoneType in get_args(fields[name].annotation)
        and not any(_is_text(arg) for arg in get_args(fields[name].annotation))
    ]
    return {**data, **dict.fromkeys(words)} if words else data


def _takes_number(annotation: Any) -> bool:
    """Whether a field of this type takes a number (an int or a float: sizes and durations
    too), and not a bool."""
    if get_origin(annotation) is Annotated:
        return _takes_number(get_args(annotation)[0])
    if annotation is int or annotation is float:
        return True
    if get_origin(annotation) not in (Union, UnionType):
        return False
    arms = get_args(annotation)
    return bool not in arms and any(_takes_number(arm) for arm in arms)


def _read(model: type[BaseModel], data: Any) -> Any:
    """``data`` for ``model`` as a settings table reads it: the word ``none``
    (:func:`_none_words`), and no bool for a number. pydantic's lax mode took ``true`` for 1
    and ``false`` for 0: ``max_entries = true`` made a memory tier of one entry."""
    data = _none_words(model, data)
    if isinstance(data, dict):
        fields = model.model_fields
        for name, value in data.items():
            if (
                isinstance(value, bool)
                and name in fields
                and _takes_number(fields[name].annotation)
            ):
                raise FieldProblem(name, f"expected a number, got {str(value).lower()}")
    return data


class SettingsTable(BaseModel):
    """A table of settings (the core's and adapters' models derive from it): takes the word
    ``none`` for None (see :data:`NONE_WORD`) and refuses a bool for a number (:func:`_read`).
    Validate one with :func:`validate_at`, whose errors name each field's path."""

    # Built directly, a ValidationError showed the input of each failing field: a secret
    # typed into the wrong field among it. Every kind's table inherits this.
    model_config = ConfigDict(hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _read(cls, data: Any) -> Any:
        return _read(cls, data)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy, as pydantic's; with ``update``, built anew from the fields set and the
        update, so that the table's rules check it as they check a table built in code or
        read from a file. pydantic's copy takes an update unchecked: a copy of a
        :class:`Protection` with a ``hard_timeout`` below its ``soft_timeout``, a negative
        ``lease_ttl``, a ``lease`` of neither name, ran as given (``build another`` is what a
        frozen table asks for, and this is how pydantic builds another)."""
        if not update:
            return super().model_copy(deep=deep)
        values = {name: getattr(self, name) for name in self.model_fields_set}
        values.update(update)
        built = type(self)(**values)
        return built.model_copy(deep=True) if deep else built


class BreakerSettings(SettingsTable):
    """The circuit breaker that the chain puts around a tier (see :mod:`tiered_cache.breaker`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Wrap the tier in a circuit breaker.")
    failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures or timeouts that open the circuit."
    )
    cool_down: Duration = Field(
        default=5.0,
        gt=0,
        description="How long an open circuit skips the tier before one probe is let through.",
    )


class TierSettings(SettingsTable):
    """Fields every tier kind understands. A kind's own model extends this one."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="Which tier: 'memory', 'redis', or any installed kind.")
    name: TierName | None = Field(
        default=None,
        description="Name in stats and logs, its own in the chain; defaults to the kind.",
    )
    ttl: Ttl | None = Field(
        default=None,
        description="Longest time this tier keeps an entry ('5m', '1h'); none: the entry's own.",
    )
    ttl_jitter: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Shorten each entry's TTL by up to this fraction at random, so entries "
        "filled together do not expire together.",
    )
    breaker: BreakerSettings = Field(
        default_factory=BreakerSettings,
        description="Circuit breaker around this tier: skip it for a while after repeated "
        "failures instead of paying a timeout on every read.",
    )


class SourceSettings(SettingsTable):
    """Fields every source kind understands. A kind's own model extends this one."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="Which source: 'dynamodb', or any installed kind.")


def _power_of_two(width: int) -> int:
    """A sketch's width: its counters are found by masking a hash (``hash & (width - 1)``)."""
    if width & (width - 1):
        raise ValueError(f"must be a power of two, not {width}")
    return width


class MemoryTierSettings(TierSettings):
    """The in-process tier."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["memory"] = "memory"
    max_entries: int = Field(default=10_000, ge=1, description="Most entries kept.")
    max_bytes: ByteSize | None = Field(
        default=None,
        gt=0,
        description="Optional bound on the bytes the values hold ('64MiB'), each value "
        "weighed by walking what it references (see Operations).",
    )
    ttl: Ttl | None = Field(default=300.0, description="Longest time an entry stays ('5m').")
    breaker: BreakerSettings = Field(
        default_factory=lambda: BreakerSettings(enabled=False),
        description="Off by default: process memory does not fail the way a network does.",
    )
    copy_on_read: bool = Field(
        default=False,
        description="Hand every reader its own deep copy of the value (and keep one that no "
        "caller holds). Off: readers in this process share one object, so mutating a "
        "returned value changes what the next get returns here (never in other processes).",
    )
    admission: Literal["always", "hot-keys"] = Field(
        default="hot-keys",
        description="Which filled keys are kept: 'hot-keys' admits a key into the main area "
        "only when a frequency sketch says it is read more often than the key it would "
        "displace (W-TinyLFU); 'always' admits every key (plain LRU/TTL, for comparison).",
    )
    window_fraction: float = Field(
        default=policy_defaults.WINDOW_FRACTION,
        gt=0.0,
        lt=1.0,
        description="hot-keys: share of the entries in the admission window, where every new "
        "key starts (so that a newly hot key is served from memory at once).",
    )
    adaptive_window: bool = Field(
        default=policy_defaults.ADAPTIVE,
        description="hot-keys: let the window's share follow the workload (misses on keys "
        "that recently left the cache move it, as in ARC); false keeps window_fraction.",
    )
    sample_factor: int = Field(
        default=policy_defaults.SAMPLE_FACTOR,
        ge=1,
        description="hot-keys: the frequency sketch halves its counters after "
        "sample_factor * max_entries reads (at least 10,000), so that old popularity fades.",
    )
    sketch_width: Annotated[int, AfterValidator(_power_of_two)] | None = Field(
        default=policy_defaults.SKETCH_WIDTH,
        ge=16,
        le=MAX_WIDTH,
        description="hot-keys: counters per sketch row, a power of two; none: sized from "
        "max_entries and the sample (at least 4 * max_entries).",
    )
    doorkeeper: bool = Field(
        default=policy_defaults.DOORKEEPER,
        description="hot-keys: a Bloom filter in front of the sketch absorbs one-off keys.",
    )
    top_k: int = Field(
        default=policy_defaults.TOP_K,
        ge=1,
        description="hot-keys: how many keys the hot-key list tracks as hot (hot_keys(), "
        "stats(), hot_ttl).",
    )
    hot_half_life: Duration = Field(
        default=policy_defaults.HOT_HALF_LIFE,
        gt=0.0,
        description="hot-keys: a read counts half in the hot-key rates after this long ('1m').",
    )
    hot_ttl: Ttl | None = Field(
        default=policy_defaults.HOT_TTL,
        description="hot-keys: a hot key (one of the top_k) is kept this long when filled, even "
        "past the tier's ttl (never past the entry's own expiry); none: the tier's ttl.",
    )

    @model_validator(mode="after")
    def _check_sketch_width(self) -> MemoryTierSettings:
        if self.admission != "hot-keys" or self.sketch_width is not None:
            return self
        try:  # the width the sketch would take: refused here, not by the build
            sketch_width(
                self.max_entries,
                sample_factor=self.sample_factor,
                min_sample=policy_defaults.MIN_SAMPLE,
            )
        except ValueError:
            field = "sample_factor" if "sample_factor" in self.model_fields_set else "max_entries"
            raise FieldProblem(
                field,
                f"max_entries {self.max_entries} with sample_factor {self.sample_factor} needs "
                f"a hot-key sketch wider than its most, {MAX_WIDTH} counters a row; lower "
                "max_entries or sample_factor, or set admission = 'always'",
            ) from None
        return self


M = TypeVar("M", "TierSettings", "SourceSettings", "BusSettings")

ENV_PREFIX = "TIERED_CACHE_"

# The table read from a config file, for the settings source below. A context variable rather
# than a class attribute, so that two threads loading two files do not see each other's data.
_file_table: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tiered_cache_file_table", default=None
)
#: Which variable set which field (``"tiered_cache.tiers[1].url"``), and the fields the
#: overrides set, so that an error names what the user set (see :class:`_Origins`).
_origins: contextvars.ContextVar[_Origins | None] = contextvars.ContextVar(
    "tiered_cache_origins", default=None
)


class _Origins:
    """Where the fields of one :class:`CacheSettings` came from, for its errors."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.variables: dict[str, str] = {}
        #: What is wrong with the JSON of the variables that looked like JSON but were not
        #: (by the path they set): their text was kept as a string (a field of text may
        #: start with a bracket), and an error there is this, not the field's type.
        self.not_json: dict[str, str] = {}
        #: The tables the variables made (by path): a field below one set, where the file had
        #: nothing (``TIERED_CACHE_NAMESPACE__X`` makes ``tiered_cache.namespace`` a table).
        self.made: set[str] = set()
        self.overridden = [_path_text([*path]) for path in _leaf_paths(overrides)]

    def _setter(self, path: str) -> str | None:
        """The path of the variable that set ``path`` (or a table holding it), unless an
        override replaced it."""
        if any(_within(path, given) for given in self.overridden):
            return None
        around = [field for field in self.variables if _within(path, field)]
        return max(around, key=len) if around else None

    def _makers(self, path: str) -> list[str]:
        """The variables that made ``path`` a table (each set a field below it), unless an
        override replaced it: the error of a field of text given that table is theirs."""
        if path not in self.made or any(_within(path, given) for given in self.overridden):
            return []
        return [name for field, name in self.variables.items() if _within(field, path)]

    def variable(self, path: str) -> str | None:
        """The variable that set ``path`` (or a table or a list holding it), unless an
        override replaced it."""
        setter = self._setter(path)
        return None if setter is None else self.variables[setter]

    def name_givers(self, tiers: list[TierSettings], repeated: int) -> dict[int, str]:
        """By a tier's index, the variable that gave it its name (its ``name``, or its
        ``kind`` when it has none: ``TIERED_CACHE_TIERS__0__KIND sets tiers[0].kind``),
        for the error of tier ``repeated``'s name: a kind an earlier tier took from a
        variable was named nowhere. Not the variable the error's own path names."""
        named = self.variable(f"{ROOT}.tiers[{repeated}].name")
        givers = {}
        for index, tier in enumerate(tiers):
            field = f"tiers[{index}].{'name' if tier.name is not None else 'kind'}"
            variable = self.variable(f"{ROOT}.{field}")
            if variable is not None and variable != named:
                givers[index] = f"{variable} sets {field}"
        return givers

    def describe(self, path: str, message: str, kind: str) -> str:
        """``path: message``, or ``VARIABLE (path): message`` when an environment variable
        set it. If that variable's text is not the JSON it looks like, that is said, and
        where its JSON breaks (never the text: it may hold a password); it is the whole
        message when the field wanted a list or a table (pydantic's error ``kind``), for
        pydantic's ("Input should be a valid list") is about the text it was left as."""
        setter = self._setter(path)
        if setter is None:
            makers = self._makers(path)
            return f"{', '.join(makers)} ({path}): {message}" if makers else f"{path}: {message}"
        variable = self.variables[setter]
        problem = self.not_json.get(setter)
        if problem is not None:
            invalid = f"the variable holds invalid JSON: {problem}"
            message = invalid if kind in _WANTS_JSON else f"{message}; {invalid}"
        return f"{variable} ({path}): {message}"


#: pydantic's error types of a field that wanted a list or a table and got other input.
_WANTS_JSON = frozenset(("list_type", "dict_type", "model_type", "model_attributes_type"))


def _leaf_paths(table: dict[str, Any]) -> list[list[str]]:
    """The paths of the values of ``table`` (a list is one value: it is replaced whole)."""
    paths: list[list[str]] = []
    for name, value in table.items():
        if isinstance(value, dict) and value:
            paths += [[name, *rest] for rest in _leaf_paths(value)]
        else:
            paths.append([name])
    return paths


def _path_text(parts: list[str]) -> str:
    text = ROOT
    for part in parts:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


def _within(path: str, field: str) -> bool:
    return path == field or path.startswith((f"{field}.", f"{field}["))


class _FileAndEnvSource(PydanticBaseSettingsSource):
    """The ``[tiered_cache]`` table of a TOML file, overridden by ``TIERED_CACHE_*`` variables.

    pydantic-settings' own environment source replaces a list wholesale; here
    ``TIERED_CACHE_TIERS__1__URL`` overrides one field of the second tier of the file, which is
    what an operator pointing a deployed service at another Redis expects.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = copy.deepcopy(_file_table.get() or {})
        for name, raw in sorted(os.environ.items()):
            if not name.upper().startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
                continue
            path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
            value, problem = _parse_env_value(raw)
            made = _assign(merged, path, value, name)
            origins = _origins.get()
            if origins is not None:
                origins.variables[_path_text(path)] = name
                if made is not None:
                    origins.made.add(_path_text(made))
                if problem is not None:
                    origins.not_json[_path_text(path)] = problem
        return merged


def _parse_env_value(raw: str) -> tuple[Any, str | None]:
    """A variable's value, and, for text that looks like JSON (a list or a table) but is
    not, where its JSON breaks (None: it is JSON, or not meant as JSON).

    JSON for lists and tables; scalars stay strings and pydantic converts them per field
    (so TIERED_CACHE_NAMESPACE=123 stays the string "123"). Text that starts with a bracket
    but is not JSON stays a string too: a field of text may hold it (a password)."""
    if not raw.lstrip().startswith(("[", "{")):
        return raw, None
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as exc:  # its message has the position, not the text
        return raw, f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    except RecursionError:
        return raw, "nested too deeply"
    except ValueError:  # a number longer than int() reads (sys.get_int_max_str_digits)
        return raw, "a number in it has too many digits"


def _assign(target: Any, path: list[str], value: Any, variable: str) -> list[str] | None:
    """``value`` set at ``path`` of ``target``; the path of the table made for it (the first
    of its tables ``target`` did not have), or None."""
    head, rest = path[0], path[1:]
    if isinstance(target, list):
        if not head.isdigit() or int(head) >= len(target):
            raise ConfigError(
                f"{variable}: {head!r} is not the index of an entry of the list it overrides "
                f"(it has {len(target)})"
            )
        index = int(head)
        if not rest:
            target[index] = value
            return None
        made = _assign(target[index], rest, value, variable)
        return None if made is None else [head, *made]
    if not isinstance(target, dict):
        raise ConfigError(f"{variable}: cannot set a field inside a {type(target).__name__}")
    if not rest:
        target[head] = value
        return None
    child = target.get(head)
    if child is None:
        if rest[0].isdigit():
            raise ConfigError(
                f"{variable}: there is no list {head!r} in the config file to override an "
                f"entry of; set the whole list as JSON in {ENV_PREFIX}{head.upper()}"
            )
        target[head] = {}
        _assign(target[head], rest, value, variable)
        return [head]
    made = _assign(child, rest, value, variable)
    return None if made is None else [head, *made]


#: -ln(u) exceeds this with probability e^-20: past it the XFetch draw is never worth making.
_XFETCH_HORIZON = 20.0


class Protection(SettingsTable):
    """How the chain protects the source, stale serving, early refresh, load timeouts and
    leases: one model for a config file's table and for code (``Protection(lease="off")``).

    Built in code, it is checked as the table is, by the same rules: a field the settings
    refuse raises :class:`~tiered_cache.ConfigError` naming it (``Protection.lease_ttl: ...``,
    never echoing the value), and an unset ``soft_timeout`` follows a lower ``hard_timeout``.
    It cannot be changed once built (a frozen model): build another (``model_copy(update=...)``
    builds one, checked the same way). Durations are seconds, or text such as ``"250ms"``. The
    defaults suit a throttled DynamoDB table.

    Attributes:
        max_stale: how long past its freshness an entry may still be served, when the source
            fails or while a refresh runs; 0 turns stale serving off.
        stale_while_revalidate: serve a stale entry at once and refresh it in the background.
        fail_safe: serve a stale entry when the load fails (and the key was cached before).
        fail_safe_throttle: after a failed load, the stale value is served as fresh for this
            long, so a failing source is not asked again on every read.
        throttle_backoff: the longest rest of a key: after a load of a key with no stale
            value to serve was throttled (:class:`~tiered_cache.SourceThrottled`), loads of
            that key in this process fail at once with :class:`~tiered_cache.SourceResting`,
            without a request, for a tenth of this at first, twice as long after each
            throttle of the key in a row, at most this; a load the source answered, or an
            invalidation of the key, ends it; 0 turns it off (:mod:`tiered_cache.throttle_rest`).
        early_refresh_beta: the XFetch beta; 0 turns probabilistic early refresh off.
        soft_timeout: when a stale value exists, a load slower than this returns the stale
            value while the load finishes in the background.
        hard_timeout: a load slower than this raises :class:`~tiered_cache.LoadTimeout` to the
            caller (the load still finishes in the background and fills the tiers); a reader
            waiting for another caller's load gives up after :meth:`join_timeout`.
        lease: ``"auto"`` uses a lease on the first tier that offers them (Redis), so a fleet
            loads a missing key about once, through ``get`` or ``get_many``; ``"off"`` never
            does.
        lease_ttl: how long a lease holds if its holder dies.
        lease_wait: how long a process that did not get the lease waits for the holder's value
            before loading itself.
        lease_poll: pause between looks at the shared tier while waiting.
        refresh_workers: threads for background refreshes.
        max_abandoned_loads: how many loads left running after their caller gave up waiting
            (soft or hard timeout; on the asyncio chain also an untimed load begun again for
            a cancelled caller) make a miss on another key fail at once with
            :class:`~tiered_cache.LoadTimeout` instead of starting one more load: the source
            is in trouble, and the new load would likely hang too. An untimed load is not
            begun again past it.
        max_timed_loads: most timed loads (with a soft or a hard timeout) running at once,
            hung ones included. Each runs on a thread (a task) of its own, so hung loads never
            hold up the others; as none can be stopped once started, a slot is taken before
            one starts, and a miss past this bound waits for a slot within its own timeout
            (:mod:`tiered_cache.timed_slots`). So at most this many hang, whatever
            ``max_abandoned_loads`` says; kept apart from it so that a burst of healthy timed
            misses is not queued behind the bound meant for hung ones.
        close_wait: how long the asyncio chain's ``aclose()`` waits for the loads it
            cancels (loads left running by their callers, background refreshes) to end; past
            it the close gives their leases back, logs a warning and counts
            ``close_loads_left_running``, and each ends by itself, filling nothing. A load
            that ignores its cancellation (a source client that swallows it, or whose
            cleanup waits on a dead server) held the close for good. The threaded chain's
            close waits for no caller's load.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    if not TYPE_CHECKING:  # type checkers keep the constructor made from the fields

        def __init__(self, **values: Any) -> None:
            """Checked as a config file's table is (the model's own rules): built in code, a
            pydantic ValidationError named no table; this names each field. Validated as
            the table of a :class:`CacheSettings` (pydantic calls this then too), the
            error is left to the chain's settings, which name its path and variable."""
            if _origins.get() is not None:
                super().__init__(**values)
                return
            try:
                super().__init__(**values)
            except ValidationError as exc:
                raise ConfigError(_describe(exc, type(self).__name__)) from None

        @classmethod
        def model_validate(cls, obj: Any, **options: Any) -> Protection:
            """Validated from ``obj`` through :meth:`__init__` (pydantic runs it), or its
            :class:`ConfigError`, not a ValidationError wrapping it; inside a
            :class:`CacheSettings`, left to the chain's settings (see :meth:`__init__`)."""
            try:
                return super().model_validate(obj, **options)
            except ValidationError as exc:
                if _origins.get() is not None:
                    raise
                raise ConfigError(_describe(exc, cls.__name__)) from None

    max_stale: Duration = Field(
        default=300.0,
        description="How long past its freshness an entry may still be served when the source "
        "fails or while it refreshes ('5m'); 0 turns stale serving off.",
    )
    stale_while_revalidate: bool = Field(
        default=True,
        description="Serve a stale entry at once and refresh it in the background.",
    )
    fail_safe: bool = Field(
        default=True,
        description="When a load fails and a stale entry exists, serve it instead of the error.",
    )
    fail_safe_throttle: Duration = Field(
        default=5.0,
        description="After a failed load, serve the stale value as fresh for this long so the "
        "failing source is not asked on every read.",
    )
    throttle_backoff: Duration = Field(
        default=1.0,
        description="The longest rest of a key ('1s'): after a load of a key with no stale "
        "value to serve was throttled (SourceThrottled), loads of that key in this process "
        "fail at once with SourceResting, without a request, for a tenth of this at first, "
        "twice as long after each throttle of the key in a row, at most this; a load the "
        "source answered, or an invalidation of the key, ends it; 0 turns it off.",
    )
    early_refresh_beta: float = Field(
        default=1.0,
        ge=0.0,
        allow_inf_nan=False,
        description="XFetch beta: larger refreshes hot entries earlier before they expire; 0 off.",
    )
    soft_timeout: Duration | None = Field(
        default=1.0,
        gt=0,
        description="With a stale value at hand, a load slower than this serves the stale value "
        "and finishes in the background; at most hard_timeout (such a read waits for this "
        "alone); left unset, 1s or the hard_timeout if that is lower.",
    )
    hard_timeout: Duration | None = Field(
        default=None,
        gt=0,
        description="A load slower than this fails the call with LoadTimeout (it finishes in "
        "the background); a get that joined another caller's load (a get_many's, whose "
        "batch is not timed) waits at most this, plus lease_wait with leases; none: wait "
        "for the source's own timeouts.",
    )
    lease: Literal["auto", "off"] = Field(
        default="auto",
        description="'auto': when a shared tier (Redis) offers leases, one process per fleet "
        "loads a missing key while the others wait for its value (get and get_many alike).",
    )
    lease_ttl: Duration = Field(
        default=3.0,
        gt=0,
        description="How long a lease holds if its holder dies.",
    )
    lease_wait: Duration = Field(
        default=3.0,
        description="How long a process without the lease waits for the holder's value before "
        "loading itself.",
    )
    lease_poll: Duration = Field(
        default=0.02,
        gt=0,
        description="Pause between looks at the shared tier while waiting.",
    )
    refresh_workers: int = Field(
        default=4,
        ge=1,
        description="Threads for background refreshes.",
    )
    max_abandoned_loads: int = Field(
        default=16,
        ge=1,
        description="How many loads left running after their caller stopped waiting (soft or "
        "hard timeout; asyncio: an untimed load begun again for a cancelled caller) make a "
        "timed miss on another key fail at once with LoadTimeout, and stop untimed loads being "
        "begun again: a hung load costs its own key only, until this many hang.",
    )
    max_timed_loads: int = Field(
        default=64,
        ge=1,
        description="Most timed loads (soft or hard timeout) running at once, hung ones "
        "included: none can be stopped once started, so a miss past this bound waits for one "
        "to end, within its own timeout. Also the most loads that can hang at once.",
    )
    close_wait: Duration = Field(
        default=1.0,
        ge=0,
        description="How long the asyncio chain's aclose() waits for the loads it cancels "
        "(left running by their callers, background refreshes) to end ('1s'); past it their "
        "leases are given back, a warning logged and close_loads_left_running counted, and "
        "each ends by itself.",
    )

    @model_validator(mode="after")
    def _check_timeouts(self) -> Protection:
        # A read with a stale value at hand waits for its load up to the soft timeout alone
        # (tiered_cache.loader): taken, a soft timeout past the hard one made exactly the
        # reads that had a value to serve wait past the hard timeout, the longest a load is
        # waited for. Equal is a rule of its own: at that moment, the stale value if there is
        # one, else LoadTimeout.
        # Left unset, soft_timeout is its default (1s) or the hard_timeout if that is lower:
        # a config that sets only hard_timeout = "100ms" means every load waits 100 ms at
        # most, and a default the user never wrote must not refuse it.
        soft, hard = self.soft_timeout, self.hard_timeout
        if soft is not None and hard is not None and soft > hard:
            if "soft_timeout" not in self.model_fields_set:
                object.__setattr__(self, "soft_timeout", hard)  # frozen: as it was built
                return self
            raise FieldProblem(
                "soft_timeout",
                f"soft_timeout ({soft:g}s) is above hard_timeout ({hard:g}s): a read "
                "with a stale value to serve would wait for its load past the hard timeout; "
                "set soft_timeout at most hard_timeout, or none",
            )
        return self

    @classmethod
    def never_stale(cls, **overrides: Any) -> Protection:
        """Plain read-through: nothing stale is ever served, no early refresh, no timeouts.
        Leases stay as configured (``overrides`` may change anything)."""
        options: dict[str, Any] = {
            "max_stale": 0.0,
            "stale_while_revalidate": False,
            "fail_safe": False,
            "early_refresh_beta": 0.0,
            "soft_timeout": None,
        }
        options.update(overrides)
        return cls(**options)

    def join_timeout(self, leasing: bool) -> float | None:
        """How long a reader waits for another caller's load of its key (single-flight):
        the longest a timed leader takes, its lease wait and then its hard timeout. A
        leader that is not timed (a ``get_many``'s batch) held a joined ``get`` past its
        hard timeout, for as long as the source hung. ``None``: no hard timeout."""
        if self.hard_timeout is None:
            return None
        return self.hard_timeout + (self.lease_wait if leasing else 0.0)

    @property
    def xfetch_window_factor(self) -> float:
        """Multiplied by an entry's load duration: how long before its soft expiry an early
        refresh can happen at all (beyond it :func:`~tiered_cache.protection.xfetch_due` never
        fires in practice)."""
        return self.early_refresh_beta * _XFETCH_HORIZON


#: The name of :class:`Protection` as the table of a config file (the one model of both).
ProtectionSettings = Protection


class BusBreakerSettings(BreakerSettings):
    """The circuit breaker around the bus's publish (see :class:`tiered_cache.coherence.BusLink`):
    the breaker's fields, with defaults for a bus."""

    # One failed publish already cost the bus's timeout, and every writer of the process waits
    # behind the publish in flight (announcements are numbered and published in order): the
    # next ones are skipped at once, their numbers left unused, which receivers take for a lost
    # message and clear their memory for. Short, since skipped messages are lost messages.
    enabled: bool = Field(
        default=True,
        description="Guard the publish with a circuit breaker; false: every announcement "
        "tries the bus, and waits for it.",
    )
    failure_threshold: int = Field(
        default=1,
        ge=1,
        description="Consecutive failed publishes after which announcements are skipped "
        "(counted in bus_publish_skipped; the other processes see a gap and clear their memory).",
    )
    cool_down: Duration = Field(
        default=1.0,
        gt=0,
        description="How long announcements are skipped before one is published as a probe "
        "('1s'); its success closes the circuit.",
    )


class BusSettings(SettingsTable):
    """The invalidation bus. A kind's own model (``redis``) extends this one."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(
        default="auto",
        description="'auto': Redis pub/sub when the chain has an in-process tier and a Redis "
        "tier; 'off': no bus (each process's memory lives out its TTL after a write "
        "elsewhere); or an installed bus kind.",
    )
    max_stale_when_disconnected: Duration = Field(
        default=1.0,
        ge=0,
        description="While the bus is down, in-process tiers keep serving, but only copies "
        "filled during the outage and at most this old ('1s'): the source then sees about "
        "one load per key per this long per process. 0: bypass in-process tiers entirely.",
    )
    breaker: BusBreakerSettings = Field(
        default_factory=BusBreakerSettings,
        description="After a failed publish, skip announcing (instead of making every writer of "
        "the process wait its turn for a bus that is not answering) for the cool-down; "
        "enabled = false: always try.",
    )


def _default_tiers() -> list[TierSettings]:
    return [MemoryTierSettings()]


class CacheSettings(BaseSettings):
    """A whole chain: its tiers from fastest to slowest, and its source of truth.

    Every field can be overridden from the environment: ``TIERED_CACHE_NAMESPACE=tweets``,
    ``TIERED_CACHE_TIERS='[{"kind": "memory"}]'``; nested fields use ``__``.
    """

    # hide_input_in_errors: a ValidationError of a validator inside (model_validate, which
    # takes no variables) echoed its input, credentials in a Redis URL among it.
    model_config = SettingsConfigDict(extra="forbid", hide_input_in_errors=True)

    if not TYPE_CHECKING:  # type checkers keep the constructor made from the fields

        def __init__(self, **values: Any) -> None:
            """Built from ``values`` (highest priority), the ``TIERED_CACHE_*`` variables and
            the file :func:`load_settings` reads, or :class:`ConfigError` naming each bad field
            and the variable that set it: built directly (for ``TieredCache.from_settings``) as
            through :func:`load_settings`. Built directly, pydantic's ValidationError said
            "Input should be a valid list" of a variable holding invalid JSON."""
            origins = _origins.set(_Origins(values))
            try:
                super().__init__(**values)
            except ValidationError as exc:
                raise ConfigError(_describe(exc, ROOT)) from None
            finally:
                _origins.reset(origins)

        @classmethod
        def model_validate(cls, obj: Any, **options: Any) -> CacheSettings:
            """Validated from ``obj`` (a dict of the fields) through :meth:`__init__`, as
            pydantic does for a model with one of its own, or the :class:`ConfigError` that
            names each bad field's path (``tiered_cache.protection.max_stale: ...``). pydantic
            wrapped that error in a ValidationError of its own, whose text was another's."""
            try:
                return super().model_validate(obj, **options)
            except ValidationError as exc:
                raise ConfigError(_describe(exc, ROOT)) from None

    namespace: Namespace = Field(
        default="default",
        description="Prefix that keeps this cache's keys apart in shared tiers.",
    )
    ttl: Ttl | None = Field(
        default=None,
        description="How long a loaded value stays fresh; none: as long as the tiers keep it.",
    )
    negative_ttl: Duration = Field(
        default=30.0,
        description="How long a 'not found' (None) is cached ('30s'); a None given to set() "
        "with a ttl is kept for that ttl.",
    )
    protection: Protection = Field(
        default_factory=Protection,
        description="Stale serving, early refresh, load timeouts and leases.",
    )
    write_policy: Literal["through", "around"] = Field(
        default="through",
        description="What set() does after writing the source: 'through' writes the new value "
        "to every tier, 'around' removes the key from every tier.",
    )
    bus: BusSettings = Field(
        default_factory=BusSettings,
        description="How processes tell each other which keys changed.",
    )
    tiers: list[TierSettings] = Field(
        default_factory=_default_tiers,
        description="The tiers, fastest first; each is a table with a 'kind'.",
    )
    source: SourceSettings | None = Field(
        default=None,
        description="The system of record; none when every read passes a loader "
        "(get(key, loader=...) or the decorator).",
    )

    @model_validator(mode="before")
    @classmethod
    def _read(cls, data: Any) -> Any:
        return _read(cls, data)

    @model_validator(mode="after")
    def _resolve_kinds(self) -> CacheSettings:
        # Each kind validates its own fields; errors carry the full path of the field.
        self.tiers = [
            _validate_kind(tier, TIERS_GROUP, f"{ROOT}.tiers[{index}]")
            for index, tier in enumerate(self.tiers)
        ]
        # A tier without a name takes its kind's (the name field's rule).
        names = [tier.name or tier.kind for tier in self.tiers]
        repeated = repeated_tier_name(names)
        if repeated is not None:
            origins = _origins.get()
            if origins is not None:  # said again, naming the variables behind the names
                givers = origins.name_givers(self.tiers, repeated[0])
                repeated = repeated_tier_name(names, givers) or repeated
            index, why = repeated
            raise FieldProblem(f"tiers[{index}].name", why)
        if self.source is not None:
            self.source = _validate_kind(self.source, SOURCES_GROUP, f"{ROOT}.source")
        if self.bus.kind == "auto":
            local_tier = any(tier.kind == "memory" for tier in self.tiers)
            redis_tier = any(tier.kind == "redis" for tier in self.tiers)
            # Only the kind is resolved: the table's other fields are the bus's. Built anew,
            # a table without a kind lost them all (its url, its timeout, a misspelt field,
            # the max_stale_when_disconnected = 0 Django's backend forces) without a word.
            kind = "redis" if local_tier and redis_tier else "off"
            self.bus = self.bus.model_copy(update={"kind": kind})
        if self.bus.kind == "off":
            self.bus = _off_bus(self.bus)
        else:
            self.bus = _validate_kind(self.bus, BUSES_GROUP, f"{ROOT}.bus")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _FileAndEnvSource(settings_cls))


def _off_bus(bus: BusSettings) -> BusSettings:
    """``bus`` without what a kind of bus reads (an off bus reads nothing): kept as extra
    fields, a ``url`` left beside ``kind = "off"`` was shown, password and all, by the
    settings' repr."""
    return BusSettings.model_validate(
        bus.model_dump(include=set(BusSettings.model_fields), exclude_unset=True) | {"kind": "off"}
    )


def _validate_kind(model: M, group: str, path: str) -> M:
    plugin = find_plugin(model.kind, group=group, field_path=f"{path}.kind")
    if isinstance(model, plugin.settings_model):
        return model
    validated = validate_at(plugin.settings_model, model.model_dump(exclude_unset=True), path)
    if not isinstance(validated, type(model)):
        raise ConfigError(
            f"{path}: the settings model of kind {model.kind!r} is not a {type(model).__name__}"
        )
    return validated


T = TypeVar("T", bound=BaseModel)


def checked(model: type[BaseModel], name: str, value: Any, argument: str | None = None) -> Any:
    """``value`` as the field ``name`` of ``model`` takes it (the settings' own rule of that
    field: its type, its parser, its bounds; no bool for a number), or :class:`ConfigError`
    ``name: why`` (``argument: why`` for an argument of another name), never echoing the
    value: for an argument given in code that a config file gives as that field, so that
    neither path skips the rule."""
    said = argument or name
    try:
        value = _read(model, {name: value})[name]
        return _field_type(model, name).validate_python(value)
    except FieldProblem as exc:
        raise ConfigError(f"{said}: {exc}") from None
    except ValidationError as exc:
        problems = (error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise ConfigError("; ".join(f"{said}: {problem}" for problem in problems)) from None


def overridden(settings: T, **given: Any) -> T:
    """``settings`` with the fields ``given`` in code (those not None) in place of its own,
    each checked by its field's rule (:func:`checked`, ``name: why``): for an object that
    takes its model and a few of its fields as arguments (a circuit breaker), so that an
    argument meets the rule a config file's value meets. Only the given fields change: the
    model's own validators, which see several fields, are not run again."""
    changes = {
        name: checked(type(settings), name, value)
        for name, value in given.items()
        if value is not None
    }
    return settings.model_copy(update=changes) if changes else settings


@functools.cache
def _field_type(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """The type of ``model``'s field ``name``, with its bounds, as a validator (built once)."""
    return TypeAdapter(model.model_fields[name].rebuild_annotation())


def check_chain_options(
    ttl: DurationLike | None,
    negative_ttl: DurationLike,
    write_policy: str,
    max_stale_when_disconnected: DurationLike,
    protection: Any,
) -> tuple[float | None, float, Literal["through", "around"], float, Protection | None]:
    """A chain's arguments built in code (both chains'), as the settings take their fields:
    a ttl more than 0, durations, a write policy of its two names, a :class:`Protection` (a
    table, as a file's, is built into one through its rules; anything else is refused naming
    ``protection``: a dict was taken, and failed at the chain's first look at it with
    ``AttributeError: 'dict' object has no attribute 'lease'``); :func:`checked`."""
    return (
        checked(CacheSettings, "ttl", ttl),
        checked(CacheSettings, "negative_ttl", negative_ttl),
        checked(CacheSettings, "write_policy", write_policy),
        checked(BusSettings, "max_stale_when_disconnected", max_stale_when_disconnected),
        None if protection is None else checked(CacheSettings, "protection", protection),
    )


def validate_at(model: type[T], fields: Mapping[str, Any], path: str) -> T:
    """``model`` validated from ``fields``, or :class:`ConfigError` naming each bad field
    under ``path`` (``tiered_cache.tiers[1]``): pydantic's own error is no caller's."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _describe(exc: ValidationError, prefix: str) -> str:
    """One line per problem: ``tiered_cache.tiers[1].ttl: expected a duration ...``."""
    lines = []
    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):
            lines.append(str(cause))
            continue
        path = prefix
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = error["msg"].removeprefix("Value error, ")
        if isinstance(cause, FieldProblem):
            path += f".{cause.field}"
        origins = _origins.get()
        if origins is None:
            lines.append(f"{path}: {message}")
        else:
            lines.append(origins.describe(path, message, error["type"]))
    return "; ".join(lines)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The TOML document of a config file (every table of it), or :class:`ConfigError`
    naming the file: missing, unreadable, not UTF-8, or not TOML. A byte order mark at the
    start is skipped: Windows editors (Notepad) save UTF-8 with one, and tomllib refused it
    as "Invalid statement (at line 1, column 1)"."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            return tomllib.loads(handle.read().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # the offset only: the bytes may be a secret's
        raise ConfigError(
            f"config file {str(file)!r} is not UTF-8 text, as TOML is "
            f"(byte {exc.start} cannot be decoded)"
        ) from None
    except OSError as exc:  # a directory, no permission
        raise ConfigError(
            f"config file {str(file)!r} cannot be read: {exc.strerror or exc}"
        ) from None


def load_settings(path: str | Path | None = None, **overrides: Any) -> CacheSettings:
    """Settings from the ``[tiered_cache]`` table of a TOML file, the environment and overrides.

    Priority, highest first: ``overrides``, ``TIERED_CACHE_*`` environment variables, the file.
    Raises :class:`ConfigError` naming each bad field.
    """
    table: dict[str, Any] = {}
    if path is not None:
        section = read_config_file(path).get(ROOT)
        if not isinstance(section, dict):
            raise ConfigError(f"config file {str(path)!r} has no [{ROOT}] table")
        table = section
    token = _file_table.set(table)
    try:
        return CacheSettings(**overrides)
    finally:
        _file_table.reset(token)
