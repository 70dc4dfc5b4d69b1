"""Tier and source kinds, found through entry points.

A kind is a :class:`TierPlugin` (or :class:`SourcePlugin`) object published under the entry-point
group ``tiered_cache.tiers`` (or ``tiered_cache.sources``) with the kind as its name. The built-in
memory tier registers itself that way too, in the core's ``pyproject.toml``. Tests and
applications may also :func:`register` a plugin directly, without packaging it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .errors import ConfigError
from .redaction import unknown_value
from .tier import Source, Tier

TIERS_GROUP = "tiered_cache.tiers"
SOURCES_GROUP = "tiered_cache.sources"
BUSES_GROUP = "tiered_cache.buses"
#: Kinds with native asyncio I/O, for :class:`~tiered_cache.AsyncTieredCache` (the same names
#: and settings as their sync kinds; a kind without one is built from its sync plugin).
ASYNC_TIERS_GROUP = "tiered_cache.async_tiers"
ASYNC_SOURCES_GROUP = "tiered_cache.async_sources"
ASYNC_BUSES_GROUP = "tiered_cache.async_buses"

Built = TypeVar("Built")


@dataclass(frozen=True)
class BuildContext:
    """What a plugin gets besides its own settings when the chain is built."""

    namespace: str
    clock: Callable[[], float]
    #: Position in the chain: 0 for the first tier; -1 for the source.
    index: int
    #: Objects shared between plugins of one chain (a Redis connection pool, for example).
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plugin(Generic[Built]):
    """A kind of tier or source: its settings model and how to build it from them."""

    kind: str
    settings_model: type[BaseModel]
    build: Callable[[Any, BuildContext], Built]


TierPlugin = Plugin[Tier]
SourcePlugin = Plugin[Source]

_lock = threading.Lock()
_registered: dict[str, dict[str, Plugin[Any]]] = {
    TIERS_GROUP: {},
    SOURCES_GROUP: {},
    BUSES_GROUP: {},
    ASYNC_TIERS_GROUP: {},
    ASYNC_SOURCES_GROUP: {},
    ASYNC_BUSES_GROUP: {},
}


def register(plugin: Plugin[Any], *, group: str = TIERS_GROUP) -> None:
    """Make ``plugin`` available by its kind without an entry point (tests, applications)."""
    with _lock:
        _registered[group][plugin.kind] = plugin


def unregister(kind: str, *, group: str = TIERS_GROUP) -> None:
    """Undo :func:`register`."""
    with _lock:
        _registered[group].pop(kind, None)


def available_kinds(group: str = TIERS_GROUP) -> list[str]:
    """Sorted names of the kinds installed for ``group``."""
    names = {ep.name for ep in entry_points(group=group)}
    with _lock:
        names.update(_registered[group])
    return sorted(names)


def async_plugin(kind: str, group: str) -> Plugin[Any] | None:
    """The asyncio plugin of ``kind`` in ``group`` (an ``ASYNC_*_GROUP``), or None."""
    with _lock:
        plugin = _registered[group].get(kind)
    if plugin is not None:
        return plugin
    if not any(True for _ in entry_points(group=group, name=kind)):
        return None
    return find_plugin(kind, group=group)


def load_entry_point(ep: EntryPoint, what: str) -> Any:
    """What ``ep`` names; :class:`ConfigError` saying that ``what`` (``"kind 'redis'"``)
    comes from it and why it cannot be loaded (an adapter installed without its client
    library, or broken by an upgrade), with the import's error as its cause: the import's
    own error names neither the entry point nor what asked for it."""
    try:
        return ep.load()
    except Exception as exc:
        where = f" of {ep.dist.name}" if ep.dist is not None else ""
        raise ConfigError(
            f"{what} comes from entry point {ep.value!r}{where}, which cannot be loaded "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def find_plugin(
    kind: str, *, group: str = TIERS_GROUP, field_path: str | None = None
) -> Plugin[Any]:
    """The plugin for ``kind``; a :class:`ConfigError` listing the installed kinds otherwise,
    its message starting with ``field_path`` when given (``tiered_cache.tiers[1].kind``)."""
    with _lock:
        plugin = _registered[group].get(kind)
    if plugin is not None:
        return plugin
    at = f"{field_path}: " if field_path else ""
    for ep in entry_points(group=group, name=kind):
        loaded = load_entry_point(ep, f"{at}kind {kind!r}")
        if not isinstance(loaded, Plugin):
            raise ConfigError(f"{at}entry point {ep.value!r} for kind {kind!r} is not a Plugin")
        return loaded
    what = {TIERS_GROUP: "tier", SOURCES_GROUP: "source", BUSES_GROUP: "bus"}.get(group, group)
    raise ConfigError(
        f"{at}{unknown_value(f'{what} kind', available_kinds(group), 'installed kinds')}. "
        f"Kinds come from packages such as tiered-cache-redis and tiered-cache-dynamodb."
    )
