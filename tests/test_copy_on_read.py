"""Values handed out by the memory tier are shared unless ``copy_on_read`` is on."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, CodecError, MemoryTier, TieredCache
from tiered_cache.bus import LocalBus
from tiered_cache.testing.sources import AsyncDictSource, DictSource


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


class Uncopyable:
    def __deepcopy__(self, memo: object) -> Uncopyable:
        raise TypeError("this object cannot be copied")


@pytest.mark.parametrize("value", [threading.Lock(), Uncopyable()], ids=["lock", "custom"])
def test_a_value_copy_on_read_cannot_copy_is_a_codec_error_not_a_tier_failure(
    value: object,
) -> None:
    """A value the tier cannot deep-copy is one it cannot hold, as one a codec cannot encode:
    set() returned as if stored (nothing was), each attempt was counted and logged as the
    memory tier failing, and with a breaker on the tier a few such values opened it for every
    key. CodecError now, to the caller of set and of a read-through get, as a Redis tier's
    codec refuses a value."""
    chain = cache(copy_on_read=True, breaker={"enabled": True, "failure_threshold": 1})
    with pytest.raises(CodecError, match="copy_on_read") as caught:
        chain.set("bad", value)
    # The copy's own error is the cause, in the compiled memory core too (errors.caused).
    assert isinstance(caught.value.__cause__, TypeError)
    with pytest.raises(CodecError, match="copy_on_read"):
        chain.get("bad", lambda: value)
    assert chain.get("good", lambda: {"n": 1}) == {"n": 1}
    assert chain.get("good", lambda: pytest.fail("served from memory")) == {"n": 1}
    tier = chain.stats()["tiers"][0]
    assert (tier["errors"], tier["skips"], tier["breaker"]) == (0, 0, "closed")
    chain.close()


@pytest.mark.parametrize("bus", [False, True], ids=["alone", "with-a-bus"])
@pytest.mark.parametrize("how", ["set", "set_many"])
def test_a_value_copy_on_read_cannot_copy_is_refused_before_the_source_takes_it(
    how: str, bus: bool
) -> None:
    """As a Redis tier's codec refuses a value before anything is sent (``check_value``):
    the memory tier's copy was found impossible only at its fill, after the source had
    taken the value (every read of the key then failed with the same ``CodecError``), and
    the key's old value was dropped. The chain of one memory tier and no bus writes in
    plain calls (``ChainPaths.set_alone``), which asked no tier before."""
    from tiered_cache import MemoryTier
    from tiered_cache.testing.buses import CuttableBus
    from tiered_cache.testing.sources import DictSource

    source = DictSource({"k": "old"})
    memory = MemoryTier(copy_on_read=True)
    chain = TieredCache([memory], source, bus=CuttableBus() if bus else None)
    assert chain.get("k") == "old"
    with pytest.raises(CodecError, match="copy_on_read"):
        if how == "set":
            chain.set("k", threading.Lock())
        else:
            chain.set_many({"k": threading.Lock()})
    assert source.items == {"k": "old"}  # failed: the source held the lock
    assert chain.get("k") == "old"
    chain.close()


def test_an_async_chain_refuses_it_before_the_source_takes_it_too() -> None:
    import asyncio

    from tiered_cache import AsyncTieredCache, MemoryTier
    from tiered_cache.testing.sources import AsyncDictSource

    source = AsyncDictSource({"k": "old"})
    chain = AsyncTieredCache([MemoryTier(copy_on_read=True)], source)

    async def main() -> None:
        assert await chain.get("k") == "old"
        with pytest.raises(CodecError, match="copy_on_read"):
            await chain.set("k", threading.Lock())
        assert source.inner.items == {"k": "old"}
        assert await chain.get("k") == "old"
        await chain.aclose()

    asyncio.run(main())


#: How the value is written (set, set_many), whether the chain has a source, and whether its
#: own ``set`` is the general one (a subclass defining ``set``) or the lone tier's
#: ``set_alone``.
WRITES = [
    (how, sourced, general)
    for how in ("set", "set_many")
    for sourced in (True, False)
    for general in (False, True)
    if how == "set" or not general
]


class GeneralSet(TieredCache):
    """A chain that defines its own ``set``: it writes through the steps, not set_alone."""

    def set(self, key: str, value: Any, *, ttl: float | str | None = None) -> None:
        super().set(key, value, ttl=ttl)


@pytest.mark.parametrize("bad", [threading.Lock(), Uncopyable()], ids=["lock", "custom"])
@pytest.mark.parametrize("case", WRITES, ids=lambda case: "-".join(map(str, case)))
def test_a_value_copy_on_read_cannot_copy_is_refused_before_anything_is_sent(
    bad: object, case: tuple[str, bool, bool]
) -> None:
    """Refused at the memory tier's fill, the value had reached the source first (a table
    then held what no read could cache), and the write then dropped the key: a chain without
    a source lost its old value. The tier's ``check_value`` is asked before anything is sent,
    on every write path (``set_alone`` too)."""
    how, sourced, general = case
    source = DictSource({"k": "old"}) if sourced else None
    make = GeneralSet if general else TieredCache
    chain = make([MemoryTier(copy_on_read=True)], source)
    chain.set("k", "old")
    with pytest.raises(CodecError, match=type(bad).__name__):
        if how == "set":
            chain.set("k", bad)
        else:
            chain.set_many({"j": "fine", "k": bad})
    assert source is None or source.items == {"k": "old"}
    assert chain.get("k", lambda: pytest.fail("the old value was dropped")) == "old"
    assert chain.get("j", lambda: "loaded") == "loaded"  # set_many: the whole batch refused
    chain.close()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["set", "set_many"])
@pytest.mark.parametrize("sourced", [True, False])
async def test_an_async_value_copy_on_read_cannot_copy_is_refused_before_anything_is_sent(
    how: str, sourced: bool
) -> None:
    source = AsyncDictSource({"k": "old"}) if sourced else None
    chain = AsyncTieredCache([MemoryTier(copy_on_read=True)], source)
    await chain.set("k", "old")
    with pytest.raises(CodecError, match="Uncopyable"):
        if how == "set":
            await chain.set("k", Uncopyable())
        else:
            await chain.set_many({"j": "fine", "k": Uncopyable()})
    assert source is None or source.inner.items == {"k": "old"}
    assert await chain.get("k", _fails) == "old"
    await chain.aclose()


async def _fails() -> Any:
    pytest.fail("the old value was dropped")


def test_the_memory_tier_declares_what_it_cannot_copy() -> None:
    """The capability itself: a copying tier refuses what it cannot copy; one that shares
    values takes anything (it keeps the object itself)."""
    MemoryTier(copy_on_read=True).check_value({"a": [1]})
    with pytest.raises(CodecError, match="Uncopyable"):
        MemoryTier(copy_on_read=True).check_value(Uncopyable())
    MemoryTier().check_value(Uncopyable())


@pytest.mark.parametrize("how", ["get", "get_many"])
def test_a_loaded_value_copy_on_read_cannot_copy_reaches_the_caller_as_a_codec_error(
    how: str,
) -> None:
    """A loader's value the tier cannot copy: the caller gets CodecError (as for a value the
    Redis codec refuses, docs/consistency.md), not the value uncached: served so, every read
    of the key would go to the source unseen, the very load the cache is there to save.
    Memory keeps nothing, the tier is not counted as failing, and the next read loads again."""
    source = DictSource({"k": Uncopyable(), "j": "fine"})
    tier = MemoryTier(copy_on_read=True)
    chain = TieredCache([tier], source)
    for _ in range(2):
        with pytest.raises(CodecError, match="Uncopyable"):
            if how == "get":
                chain.get("k")
            else:
                chain.get_many(["j", "k"])
    assert source.reads == 2
    assert len(tier) == 0
    assert chain.stats()["tiers"][0]["errors"] == 0
    chain.close()


class Counted:
    """A value that counts its deep copies."""

    copies = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __deepcopy__(self, memo: object) -> Counted:
        Counted.copies += 1
        return Counted(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counted) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("how", ["set", "set_many"])
@pytest.mark.parametrize("bus", [False, True], ids=["alone", "on a bus"])
def test_a_write_copies_its_value_once(how: str, bus: bool) -> None:
    """The write's check (asked before anything is sent) deep-copied the value and threw the
    copy away, and the fill copied it again: two copies per value written. The check's copy
    is now the one kept (``MemoryTier.prepare_value``), with the tier alone (the chain's
    ``set_alone``) as on a bus (the write's steps)."""
    memory = MemoryTier(copy_on_read=True)
    chain = TieredCache([memory], bus=LocalBus() if bus else None)
    Counted.copies = 0
    value = Counted(1)
    if how == "set":
        chain.set("k", value)
    else:
        chain.set_many({"k": value, "j": Counted(2)})
    assert Counted.copies == (1 if how == "set" else 2)
    value.n = 9  # the caller's object: the kept copy is not it
    assert chain.get("k", lambda: None) == Counted(1)
    chain.close()
