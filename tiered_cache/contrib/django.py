"""A Django ``CACHES`` backend over a tiered-cache chain (extra ``django``).

::

    CACHES = {
        "default": {
            "BACKEND": "tiered_cache.contrib.django.TieredCacheBackend",
            "TIMEOUT": 300,
            "OPTIONS": {"CONFIG": BASE_DIR / "tiered_cache.toml"},
        }
    }

``OPTIONS``: ``CONFIG``, the path of a settings file (its ``[tiered_cache]`` table), and/or
``SETTINGS``, that table as a dict (it wins over the file, as ``from_config`` overrides do);
``CLOCK``, a callable giving seconds (tests pass a fake clock). Django's ``MAX_ENTRIES`` and
``CULL_FREQUENCY`` are taken and ignored; any other option, and a ``LOCATION``, are refused
(``ImproperlyConfigured``). The chain must have no source:
Django's cache API stores what ``set()`` is given. Every backend object of one ``CACHES`` entry
(Django makes one per thread) shares one chain, built on first use and kept for the process.

Django's conventions hold (timeouts ``None``, ``0`` and the default; ``KEY_PREFIX``,
``VERSION``, ``KEY_FUNCTION``; ``None`` is a value). Values go through the tiers' codecs, not
pickle; ``add``, ``incr``/``decr`` and ``touch`` read, then write, so they are not atomic across
processes. docs/django.md says why and what it means.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel

from ..build import build_cache
from ..chain import TieredCache
from ..errors import ConfigError
from ..redaction import redact_url, refused
from ..settings import load_settings
from ..tier import MISSING, Entry, MissingType
from ..units import MAX_DURATION

__all__ = ["TieredCacheBackend", "close_chains"]

#: Source protection a Django cache must not have: nothing stale is served (an expired key is
#: gone, as Django promises), there is no source to lease or refresh.
_DJANGO_PROTECTION: dict[str, Any] = {
    "max_stale": 0.0,
    "stale_while_revalidate": False,
    "fail_safe": False,
    "early_refresh_beta": 0.0,
    "soft_timeout": None,
    "hard_timeout": None,
    "lease": "off",
}

#: While the bus is down (or starting) memory keeps a copy no longer than
#: ``max_stale_when_disconnected`` by giving it that expiry, which ``incr`` would read back as
#: the key's time left (and store: the count gone from every tier a second later). With 0,
#: memory is passed by meanwhile and every entry read keeps its own expiry (Redis's).
_DJANGO_BUS: dict[str, Any] = {"max_stale_when_disconnected": 0.0}

#: What ``timeout=None`` ("forever") becomes: durations are finite in tiered-cache.
FOREVER = MAX_DURATION

#: The ``OPTIONS`` the backend reads; and Django's culling options, taken and ignored (the
#: tiers bound themselves). Any other is refused: a misspelt ``CONFIG`` left the backend on a
#: chain from the environment alone (process memory, no Redis), without a word.
_OPTIONS = ("CONFIG", "SETTINGS", "CLOCK")
_CULLING_OPTIONS = ("MAX_ENTRIES", "CULL_FREQUENCY")


class _Chains:
    """The process's chains, one per backend options, and how many times
    :func:`close_chains` closed them: a backend object holding a chain of an earlier
    generation (Django keeps them, one per thread) takes the chain of this one."""

    def __init__(self) -> None:
        self.built: dict[str, TieredCache] = {}
        self.lock = threading.Lock()
        self.generation = 0


_chains = _Chains()


def _chain_for(options: Mapping[str, Any]) -> TieredCache:
    """The process's chain for these options, built on first use."""
    # The file resolved (and built from as keyed): given as a Path in one entry and a str (or
    # relative) in another, one file built two chains of one namespace, which the exporters
    # refuse together.
    config = Path(options["CONFIG"]).resolve() if options.get("CONFIG") else None
    table = dict(options.get("SETTINGS") or {})
    clock = options.get("CLOCK")
    identity = json.dumps(
        [str(config) if config else None, table, id(clock) if clock else None],
        sort_keys=True,
        default=str,
    )
    with _chains.lock:
        chain = _chains.built.get(identity)
        if chain is None:
            chain = _chains.built[identity] = _build(config, table, clock)
        return chain


def close_chains() -> None:
    """Close every chain the backend built (at shutdown, or between tests: a backend object
    used after this reads through a chain built again)."""
    with _chains.lock:
        chains = list(_chains.built.values())
        _chains.built.clear()
        _chains.generation += 1
    for chain in chains:
        chain.close()


def _check_params(location: object, options: Mapping[str, Any]) -> None:
    """ImproperlyConfigured for an option the backend does not read, an option of the wrong
    type, or a LOCATION."""
    unknown = [name for name in options if name not in _OPTIONS + _CULLING_OPTIONS]
    if unknown:
        raise ImproperlyConfigured(
            f"tiered_cache Django backend: unknown OPTIONS {', '.join(map(repr, unknown))}; "
            "it reads CONFIG (a settings file), SETTINGS (its [tiered_cache] table as a dict) "
            "and CLOCK"
        )
    if location:
        # Django's own Redis backend takes a list of servers too: each URL shown redacted
        # (redact_url of the list itself raised TypeError, an error that named nothing).
        urls = location if isinstance(location, list | tuple) else [location]
        shown = ", ".join(
            repr(redact_url(url)) if isinstance(url, str) else refused(url) for url in urls
        )
        raise ImproperlyConfigured(
            f"tiered_cache Django backend: LOCATION is not read ({shown}); "
            "give the settings file as OPTIONS['CONFIG'] (Redis URLs go in its tiers)"
        )
    table = options.get("SETTINGS")
    if table is not None and not isinstance(table, Mapping | BaseModel):
        # Refused here, naming the option: dict() of it at first use raised ValueError
        # ("dictionary update sequence element #0 ..."), which named nothing.
        raise ImproperlyConfigured(
            "tiered_cache Django backend: OPTIONS['SETTINGS'] must be a dict (the "
            f"[tiered_cache] table), not {refused(table)}"
        )
    clock = options.get("CLOCK")
    if clock is not None and not callable(clock):
        raise ImproperlyConfigured(
            "tiered_cache Django backend: OPTIONS['CLOCK'] must be a callable giving "
            f"seconds, not {refused(clock)}"
        )


def _over(given: Any, forced: dict[str, Any]) -> Any:
    """``SETTINGS``' table ``given`` with the ``forced`` fields over it (the file's tables
    merge underneath, as any override's do); ``given`` that is neither a table nor a settings
    model is left for the settings to refuse. A model (``ProtectionSettings(...)``) is taken
    as its table: passed on as it was, it kept what the backend forces (a ``max_stale`` kept
    every key in Redis past its timeout, a bus's ``max_stale_when_disconnected`` lost
    ``incr``'s count)."""
    if given is None:
        return forced
    if isinstance(given, BaseModel):
        given = given.model_dump()
    return {**given, **forced} if isinstance(given, Mapping) else given


def _build(
    config: str | Path | None, table: dict[str, Any], clock: Callable[[], float] | None
) -> TieredCache:
    try:
        forced = {"protection": _DJANGO_PROTECTION, "bus": _DJANGO_BUS}
        over = {name: _over(table.get(name), fields) for name, fields in forced.items()}
        settings = load_settings(config, **{**table, **over})
    except ConfigError as exc:
        raise ImproperlyConfigured(f"tiered_cache Django backend: {exc}") from exc
    if settings.source is not None:
        raise ImproperlyConfigured(
            "tiered_cache Django backend: the chain must have no source "
            f"(found kind {settings.source.kind!r}): Django's cache stores what set() is given"
        )
    return build_cache(settings) if clock is None else build_cache(settings, clock=clock)


class TieredCacheBackend(BaseCache):
    """Django's cache API over a :class:`~tiered_cache.TieredCache` (see the module's notes)."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._options: Mapping[str, Any] = params.get("OPTIONS", {})
        _check_params(location, self._options)
        self._clock: Callable[[], float] = self._options.get("CLOCK") or time.time
        self._chain: TieredCache | None = None
        self._generation = _chains.generation

    @property
    def chain(self) -> TieredCache:
        """The chain this backend reads and writes (shared by the backend's objects)."""
        if self._chain is None or self._generation != _chains.generation:
            self._generation = _chains.generation  # read first: a later close_chains() is seen
            self._chain = _chain_for(self._options)
        return self._chain

    def _ttl(self, timeout: float | object | None) -> float:
        """Seconds to keep a value: Django's default, ``None`` (forever), or ``timeout``; zero
        or less means "expire at once"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return FOREVER
        # Django's own backends add the timeout to the time (locmem, file, database): anything
        # but a number is a TypeError there too; here it says which argument was wrong.
        if not isinstance(timeout, int | float):
            raise TypeError(
                f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
            )
        # Only a float can be NaN; isnan(10**400) would raise OverflowError.
        if isinstance(timeout, float) and math.isnan(timeout):
            raise ValueError("timeout must be a number of seconds or None, not nan")
        # Django takes any number; tiered-cache's durations stop at a hundred years. Bounded
        # before float(): an int past a float's range (10**400) would raise OverflowError.
        return float(min(max(timeout, -1), FOREVER))

    def _lookup(self, key: str) -> Entry | MissingType:
        return self.chain.lookup_many([key]).get(key, MISSING)

    # -- reads --------------------------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        entry = self._lookup(self.make_and_validate_key(key, version=version))
        return default if entry is MISSING else entry.value

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = self.chain.lookup_many(list(made))
        return {made[key]: entry.value for key, entry in found.items()}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._lookup(self.make_and_validate_key(key, version=version)) is not MISSING

    # -- writes -------------------------------------------------------------------------------

    def set(
        self,
        key: Any,
        value: Any,
        timeout: float | object | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> None:
        self._store(self.make_and_validate_key(key, version=version), value, self._ttl(timeout))

    def _store(self, key: str, value: Any, ttl: float) -> None:
        if ttl <= 0:
            self.chain.invalidate(key)  # Django: a timeout of zero or less expires at once
        else:
            self.chain.set(key, value, ttl=ttl)

    def add(
        self,
        key: Any,
        value: Any,
        timeout: float | object | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> bool:
        """Store ``value`` only if ``key`` holds none; True if stored. Read then write: not
        atomic across processes (see the module's notes)."""
        made = self.make_and_validate_key(key, version=version)
        if self._lookup(made) is not MISSING:
            return False
        self._store(made, value, self._ttl(timeout))
        return True

    def set_many(
        self,
        data: Mapping[Any, Any],
        timeout: float | object | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[Any]:
        """Store every value, or none: one write of the whole batch (the chain's ``set_many``);
        returns ``[]``. A value a tier cannot hold raises (Django lets a backend raise or
        return the keys that failed) before anything is sent: each key of the batch keeps its
        old value, as ``set`` keeps a key's when it cannot store the new one."""
        ttl = self._ttl(timeout)
        made = {
            self.make_and_validate_key(key, version=version): value for key, value in data.items()
        }
        if ttl <= 0:
            self.chain.invalidate_many(made)  # Django: a timeout of zero or less expires at once
        else:
            self.chain.set_many(made, ttl=ttl)
        return []

    def touch(
        self, key: Any, timeout: float | object | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Give ``key`` a new timeout; False if it holds nothing. Read then write."""
        ttl = self._ttl(timeout)  # a wrong timeout is refused whether or not the key exists
        made = self.make_and_validate_key(key, version=version)
        entry = self._lookup(made)
        if entry is MISSING:
            return False
        self._store(made, entry.value, ttl)
        return True

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the number under ``key`` and return it; ValueError if there is none.
        Read then write: two processes can lose an increment (see the module's notes)."""
        made = self.make_and_validate_key(key, version=version)
        entry = self._lookup(made)
        if entry is MISSING:
            raise ValueError(f"Key '{key}' not found")
        value = entry.value + delta
        # The key keeps the time it had left, as Django's Redis backend (INCRBY) does; at most
        # its timeout (the entry's length): on a clock stepped back (NTP), more is left, and a
        # 60 s counter (a rate limit's window) was stored for the hour of the step too.
        left = entry.soft_expiry - self._clock()
        self._store(made, value, min(FOREVER, left, entry.soft_expiry - entry.loaded_at))
        return value

    def delete(self, key: Any, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version=version)
        existed = self._lookup(made) is not MISSING
        self.chain.invalidate(made)
        return existed

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self.chain.invalidate_many([self.make_and_validate_key(k, version=version) for k in keys])

    def clear(self) -> None:
        self.chain.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing: Django calls this after every request, and the chain is shared."""
