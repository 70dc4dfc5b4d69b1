"""Which core runs: the modules compiled by ``tools/build_core.py`` (mypyc), or their sources.

The compiled modules sit beside their sources (``policy.cpython-311-*.so`` beside
``policy.py``), and Python would import them first even after the source changed. So the build
writes the SHA-256 of each source it compiled into :data:`MANIFEST`, and this module, imported
first by the package, puts a finder in front of the import system that serves the sources
whenever one of them no longer matches (all of the core together: compiled modules call each
other natively), or when ``TIERED_CORE_PURE=1`` is set (not ``TIERED_CACHE_*``: that prefix
belongs to the settings, which refuse a name they do not know). A stale build is never run.

A current build is imported here, all of it (its C extensions too), before anything else of
the package uses it: a compiled module or extension that fails to import (any exception:
librt upgraded to another ABI raises ``ValueError: ABI version conflict for
librt.threading, ...``; librt missing, an ``ImportError``; an extension's file cut short,
``ImportError: ... file too short``) makes the whole core run from its sources, said in one
warning naming the cause; :func:`compiled_core` tells which runs.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["DEPENDENCIES", "EXTENSIONS", "MANIFEST", "MODULES", "compiled_core", "source_hash"]

#: The modules the build compiles, by their short names (``tiered_cache.<name>``): the memory
#: tier's, then the calls of every miss after the L1 lookup (tier accessor, fence, loader), then
#: a shared tier's batch read of its stored entries (framing).
#: Compiled (mypyc 2.4), ``raise ... from`` loses its clause (these raise through
#: ``errors.caused``), and a bare ``raise`` after a ``yield`` in an except block raises a
#: broken exception (the fence's steps name theirs).
MODULES = (
    "entry",
    "slot",
    "ghosts",
    "sketch",
    "topk",
    "policy",
    "hit",
    "singleflight",
    "metrics",
    "stamp",
    "memory_core",
    "invalidation_log",
    "accessor",
    "fence",
    "held_leases",
    "loader",
    "framing",
)
#: Extensions written in C (``tiered_cache/<name>.c``), built with them; without the build the
#: code that uses one runs its Python reference instead (the decorator: its generated wrapper;
#: the frequency sketch: ``sketch.Counters``; the JSON codec's guard:
#: ``codecs.plain_json``).
EXTENSIONS = ("_hitcall", "_sketch", "_plainjson")
#: Sources the compiled modules were checked against (their imports); a change there makes the
#: build stale too.
DEPENDENCIES = ("policy_defaults", "locks")
_HERE = Path(__file__).resolve().parent
#: What the build compiled: ``{"modules": {name: SHA-256 of its source}, "extensions": {...}}``.
MANIFEST = _HERE / "compiled.json"


def source_hash(name: str, suffix: str = ".py") -> str:
    """The SHA-256 of ``tiered_cache/<name><suffix>`` as it is now."""
    return hashlib.sha256((_HERE / f"{name}{suffix}").read_bytes()).hexdigest()


def _built_and_current() -> bool:
    """True when every core module has a compiled build made from its current source."""
    if os.environ.get("TIERED_CORE_PURE", "") not in ("", "0"):
        return False
    try:
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
        built, extensions = manifest["modules"], manifest["extensions"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for name in (*MODULES, *EXTENSIONS):
        if not any((_HERE / f"{name}{suffix}").exists() for suffix in suffixes):
            return False
    return all(built.get(name) == source_hash(name) for name in (*MODULES, *DEPENDENCIES)) and all(
        extensions.get(name) == source_hash(name, ".c") for name in EXTENSIONS
    )


def compiled_core() -> bool:
    """True when the memory tier's core runs compiled (built, current, not turned off, and
    imported)."""
    return _COMPILED


def _imports() -> bool:
    """Imports the compiled core; False, having said why once, when a module of it fails.

    Tried here, while nothing of the package but this module has run, so that nothing holds a
    compiled class when the sources take over: what the attempt imported of the package goes
    again (a module it imported may hold a class of a compiled module that did import), and
    the import system serves the sources from then on (the finder below)."""
    before = set(sys.modules)
    try:
        # The extensions too: built with the modules and used only with them (the decorator
        # imports its own after this; one that failed there failed the package's import).
        for name in (*MODULES, *EXTENSIONS):
            importlib.import_module(f"{__package__}.{name}")
    except Exception as exc:  # any: the core must never keep the package from importing
        for loaded in set(sys.modules) - before:
            if loaded.startswith(f"{__package__}."):
                del sys.modules[loaded]
        logging.getLogger(__name__).warning(
            "the compiled core failed to import (%s: %s); tiered-cache runs its pure-Python "
            "core (slower, the same results)",
            type(exc).__name__,
            exc,
        )
        return False
    return True


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Serves the core's ``.py`` sources, ahead of any build, when the build is not used."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __package__ or name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


# Decided when imported as the package's (tools/build_core.py loads this module by its path for
# its lists alone, outside any package: nothing to import there). True while the build is
# tried: a module of the core asks compiled_core() as it is imported (the sketch's counters).
_COMPILED = bool(__package__) and _built_and_current()
if _COMPILED:
    _COMPILED = _imports()
if __package__ and not _COMPILED:
    sys.meta_path.insert(0, _SourcesFirst())
