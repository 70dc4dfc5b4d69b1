"""Values handed out by the memory tier are shared unless ``copy_on_read`` is on."""

from __future__ import annotations

from typing import Any

import pytest

from tiered_cache import TieredCache


def cache(**memory: Any) -> TieredCache:
    return TieredCache.from_config(tiers=[{"kind": "memory", "admission": "always", **memory}])


def test_with_copy_on_read_a_mutated_result_changes_nothing() -> None:
    chain = cache(copy_on_read=True)
    loaded = chain.get("user:1", lambda: {"name": "ada", "roles": ["admin"]})
    loaded["roles"].append("root")  # the object the loader returned
    first = chain.get("user:1", lambda: pytest.fail("served from memory"))
    assert first == {"name": "ada", "roles": ["admin"]}
    first["name"] = "mallory"  # an object read from memory
    assert chain.get("user:1", lambda: None) == {"name": "ada", "roles": ["admin"]}
    assert chain.get_many(["user:1"], lambda keys: {}) == {
        "user:1": {"name": "ada", "roles": ["admin"]}
    }
    chain.close()


def test_without_it_readers_in_this_process_share_one_object() -> None:
    """The documented default: no copy, the fastest read returns the kept object itself."""
    chain = cache()
    loaded = chain.get("user:1", lambda: {"roles": ["admin"]})
    loaded["roles"].append("root")
    assert chain.get("user:1", lambda: None) == {"roles": ["admin", "root"]}
    chain.close()
