"""The lock of the core's hot paths (the memory core's, the flight table's, the invalidation
log's): librt's, or, where librt does not import, the standard library's.

Compiled (mypyc), a ``with`` block on librt's lock is its bare acquire and release
(docs/testing.md, "acquire-then-try"), so the build always uses librt's: a compiled module
imports librt itself, and one that cannot (librt missing, or of another ABI) makes the whole
core run from its sources (:mod:`tiered_cache.compiled`). The sources use librt's lock too
when it imports; without librt (a broken install, or an interpreter librt is not built for)
they take ``threading.Lock``, the lock they took before librt's (its ``__enter__`` is C
too, and its semantics the same: not reentrant, released by any thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Lock"]

# The type checker (and mypyc, which compiles a ``with`` on it natively) sees librt's alone.
if TYPE_CHECKING:
    from librt.threading import Lock
else:
    try:
        from librt.threading import Lock
    except ImportError:
        from threading import Lock
