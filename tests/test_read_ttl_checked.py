"""A ``ttl`` a read is given that is not a duration is refused before anything is read.

``cache.get(key, loader, ttl=-1)`` (``get_many`` too, both faces) stamped the loaded value with
its ``ttl`` only after the load: every call ran the loader (a trip to the source) and then
raised; with a stale copy of the key, fail-safe served it, the ``ValueError`` counted and logged
as the load failing, and the loader ran again on every read. The decorator checks its ``ttl``
when the function is decorated; these are checked as the call starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.memory import MemoryTier
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.sources import DictSource

BAD = [-1, float("nan"), "abc", True]
#: A stale copy is served when a load fails (fail-safe) for a minute after it expires.
FAIL_SAFE = Protection(max_stale=60.0, fail_safe=True, stale_while_revalidate=False)


def stale_chain(face: type[Any], clock: FakeClock) -> Any:
    """A chain holding ``k`` loaded 11 s ago for 10 s: stale, within ``max_stale``."""
    return face([MemoryTier(clock=clock)], clock=clock, protection=FAIL_SAFE)


def reads(cache: Any, loader: Any, many: Any, ttl: Any) -> list[Callable[[], Any]]:
    """The reads each test makes: the stale key, a key never read, and a batch of both."""
    return [
        lambda: cache.get("k", loader, ttl=ttl),
        lambda: cache.get("fresh", loader, ttl=ttl),
        lambda: cache.get_many(["k", "other"], many, ttl=ttl),
    ]


@pytest.mark.parametrize("ttl", BAD, ids=repr)
def test_a_bad_ttl_of_a_read_is_refused_before_the_loader_runs(ttl: Any) -> None:
    clock = FakeClock()
    loads: list[str] = []

    def loader() -> str:
        loads.append("k")
        return "new"

    def many(keys: list[str]) -> dict[str, str]:
        loads.extend(keys)
        return dict.fromkeys(keys, "new")

    with stale_chain(TieredCache, clock) as cache:
        cache.get("k", lambda: "old", ttl=10)
        clock.advance(11)
        outcomes = []
        for read in reads(cache, loader, many, ttl):
            try:
                read()
                outcomes.append("returned")
            except Exception as exc:  # which one is the point
                outcomes.append(type(exc).__name__)
        assert (outcomes, loads, cache.stats()["load_failures"]) == (["ValueError"] * 3, [], 0)


@pytest.mark.parametrize("ttl", BAD, ids=repr)
def test_a_bad_ttl_of_an_async_read_is_refused_before_the_loader_runs(ttl: Any) -> None:
    clock = FakeClock()
    loads: list[str] = []

    async def loader() -> str:
        loads.append("k")
        return "new"

    async def many(keys: list[str]) -> dict[str, str]:
        loads.extend(keys)
        return dict.fromkeys(keys, "new")

    async def old() -> str:
        return "old"

    async def run() -> list[str]:
        cache = stale_chain(AsyncTieredCache, clock)
        try:
            await cache.get("k", old, ttl=10)
            clock.advance(11)
            outcomes = []
            for read in reads(cache, loader, many, ttl):
                try:
                    await read()
                    outcomes.append("returned")
                except Exception as exc:  # which one is the point
                    outcomes.append(type(exc).__name__)
            return outcomes
        finally:
            await cache.aclose()

    assert (asyncio.run(run()), loads) == (["ValueError"] * 3, [])


@pytest.mark.parametrize("ttl", BAD, ids=repr)
def test_a_bad_ttl_of_a_write_is_refused_before_the_source_is_written(ttl: Any) -> None:
    """Found after the source took the value, which was then dropped from every tier."""
    source = DictSource({"k": "old"})
    with TieredCache([MemoryTier()], source) as cache:
        outcomes = []
        for write in (
            lambda: cache.set("k", "new", ttl=ttl),
            lambda: cache.set_many({"k": "new"}, ttl=ttl),
        ):
            try:
                write()
                outcomes.append("returned")
            except Exception as exc:  # which one is the point
                outcomes.append(type(exc).__name__)
        assert (outcomes, source.load("k")) == (["ValueError"] * 2, "old")


#: A ttl of zero: the settings refused it (``tiered_cache.ttl = 0``), calls took it (an entry
#: stale at once: a load on every read, in every process).
ZERO = [0, 0.0, "0s", "0ms"]


def refusal(call: Callable[[], Any]) -> str:
    with pytest.raises(ValueError) as refused:
        call()
    return str(refused.value)


def config_refusal(ttl: Any) -> str:
    from tiered_cache import ConfigError, load_settings

    with pytest.raises(ConfigError) as refused:
        load_settings(ttl=ttl)
    return str(refused.value)


@pytest.mark.parametrize("ttl", [*BAD, *ZERO], ids=repr)
def test_every_call_refuses_a_ttl_the_settings_refuse_and_names_it(ttl: Any) -> None:
    """A bad call ``ttl`` said ``expected a duration ...``, naming no argument; a ``ttl`` of
    0 was taken by a call and refused by the settings. Now one rule, the settings' words."""
    clock = FakeClock()
    with TieredCache([MemoryTier(clock=clock)], DictSource({}), clock=clock) as cache:
        messages = [
            refusal(call)
            for call in (
                lambda: cache.get("k", lambda: 1, ttl=ttl),
                lambda: cache.get_many(["k"], lambda keys: {}, ttl=ttl),
                lambda: cache.set("k", 1, ttl=ttl),
                lambda: cache.set_many({"k": 1}, ttl=ttl),
                lambda: cache.cached(key="t:{a}", ttl=ttl),
            )
        ]
    assert all(message.startswith("ttl: ") for message in messages), messages
    if ttl is not True:  # a bool for a number: the settings' own words (any number field's)
        settings = config_refusal(ttl).removeprefix("tiered_cache.ttl: ")
        assert messages == [f"ttl: {settings}"] * 5


@pytest.mark.parametrize("ttl", ZERO, ids=repr)
def test_every_async_call_refuses_a_ttl_of_zero(ttl: Any) -> None:
    async def one() -> int:
        return 1

    async def run() -> list[str]:
        cache = AsyncTieredCache([MemoryTier()])
        messages = []
        try:
            for call in (
                lambda: cache.get("k", one, ttl=ttl),
                lambda: cache.get_many(["k"], lambda keys: one(), ttl=ttl),
                lambda: cache.set("k", 1, ttl=ttl),
                lambda: cache.set_many({"k": 1}, ttl=ttl),
            ):
                try:
                    await call()
                    messages.append("returned")
                except ValueError as exc:
                    messages.append(str(exc))
            messages.append(refusal(lambda: cache.cached(key="t:{a}", ttl=ttl)))
        finally:
            await cache.aclose()
        return messages

    settings = config_refusal(ttl).removeprefix("tiered_cache.ttl: ")
    assert asyncio.run(run()) == [f"ttl: {settings}"] * 5
