"""Numbers that make no sense are refused by the settings model, naming the field's path."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from tiered_cache import ConfigError, load_settings
from tiered_cache.settings import (
    BreakerSettings,
    BusBreakerSettings,
    BusSettings,
    CacheSettings,
    MemoryTierSettings,
    ProtectionSettings,
)
from tiered_cache.testing.settings_checks import bools_taken_as_something_else
from tiered_cache.units import MAX_DURATION, parse_duration


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TIERED_CACHE_"):
            monkeypatch.delenv(name)


def _refused(path: str, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert message.startswith(f"{path}:"), message
    return message


@pytest.mark.parametrize("bad", [math.nan, math.inf, "nan", "inf", 0, "0s", -1])
def test_a_memory_ttl_that_is_not_a_positive_finite_duration_is_refused(bad: Any) -> None:
    _refused("tiered_cache.tiers[0].ttl", tiers=[{"kind": "memory", "ttl": bad}])


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0])
def test_the_chain_ttl_must_be_positive_and_finite(bad: Any) -> None:
    _refused("tiered_cache.ttl", ttl=bad)


def test_memory_max_bytes_zero_is_refused() -> None:
    _refused("tiered_cache.tiers[0].max_bytes", tiers=[{"kind": "memory", "max_bytes": 0}])


@pytest.mark.parametrize("field", ["hard_timeout", "soft_timeout", "lease_poll", "lease_ttl"])
def test_protection_durations_that_must_be_positive_refuse_zero(field: str) -> None:
    _refused(f"tiered_cache.protection.{field}", protection={field: 0})


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_protection_beta_must_be_finite(bad: float) -> None:
    _refused("tiered_cache.protection.early_refresh_beta", protection={"early_refresh_beta": bad})


def test_a_nan_max_stale_is_refused_but_zero_still_turns_stale_serving_off() -> None:
    _refused("tiered_cache.protection.max_stale", protection={"max_stale": math.nan})
    assert load_settings(protection={"max_stale": 0}).protection.max_stale == 0.0


def test_a_breaker_cool_down_of_zero_is_refused() -> None:
    _refused(
        "tiered_cache.tiers[0].breaker.cool_down",
        tiers=[{"kind": "memory", "breaker": {"enabled": True, "cool_down": 0}}],
    )


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        (timedelta(minutes=90), 5400.0),
        (timedelta(milliseconds=250), 0.25),
    ],
)
def test_durations_accept_timedelta_and_compound_forms(given: Any, seconds: float) -> None:
    assert parse_duration(given) == seconds
    settings = load_settings(ttl=given, tiers=[{"kind": "memory", "ttl": given}])
    assert settings.ttl == seconds
    tier = settings.tiers[0]
    assert isinstance(tier, MemoryTierSettings)
    assert tier.ttl == seconds


@pytest.mark.parametrize("bad", ["1h30", "30m1h1", "m", "1 hour", "1h-30m"])
def test_malformed_compound_durations_are_refused(bad: str) -> None:
    message = _refused("tiered_cache.ttl", ttl=bad)
    assert "1h30m" in message  # the error shows a compound example


def test_a_nan_in_a_config_file_names_its_path(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[tiered_cache]\n[[tiered_cache.tiers]]\nkind = 'memory'\nttl = nan\n")
    with pytest.raises(ConfigError, match=r"^tiered_cache\.tiers\[0\]\.ttl: .*finite"):
        load_settings(path)


# A duration past what the machinery under it can count (CPython's timeouts stop at about 292
# years, Redis's expiries in milliseconds somewhat later) was accepted and then failed every
# call: a Redis ttl or lease_ttl of 1e300 made every fill a ResponseError, a Redis timeout of
# 1e12 every command an OverflowError, each counted and logged as a failing tier, never refused.
@pytest.mark.parametrize("too_long", [1e300, 1e12, "36501d", timedelta(days=36501)])
@pytest.mark.parametrize(
    ("path", "overrides"),
    [
        ("tiered_cache.ttl", lambda d: {"ttl": d}),
        ("tiered_cache.negative_ttl", lambda d: {"negative_ttl": d}),
        ("tiered_cache.protection.lease_ttl", lambda d: {"protection": {"lease_ttl": d}}),
        ("tiered_cache.protection.hard_timeout", lambda d: {"protection": {"hard_timeout": d}}),
        ("tiered_cache.tiers[0].ttl", lambda d: {"tiers": [{"kind": "memory", "ttl": d}]}),
    ],
)
def test_a_duration_of_more_than_a_hundred_years_is_refused(
    path: str, overrides: Any, too_long: Any
) -> None:
    message = _refused(path, **overrides(too_long))
    assert "100 years" in message, message


def test_a_hundred_years_is_still_a_duration() -> None:
    assert parse_duration("36500d") == MAX_DURATION == 100 * 365 * 86400.0
    assert load_settings(ttl="36500d").ttl == MAX_DURATION


@pytest.mark.parametrize(
    ("path", "tier"),
    [
        ("tiered_cache.tiers[0].max_entries", {"max_entries": 10**15}),
        ("tiered_cache.tiers[0].max_entries", {"max_entries": 2**31}),
        ("tiered_cache.tiers[0].sample_factor", {"max_entries": 2**20, "sample_factor": 2**14}),
        ("tiered_cache.tiers[0].sketch_width", {"sketch_width": 2**33}),
    ],
)
def test_a_memory_tier_too_large_for_its_frequency_sketch_is_refused(
    path: str, tier: dict[str, Any]
) -> None:
    """Hot-key admission counts reads in a sketch of at most 2**32 counters a row: a bound
    past it was accepted and then failed the build with a bare ValueError (width must be at
    most 4294967296), naming no field."""
    message = _refused(path, tiers=[{"kind": "memory", **tier}])
    assert "4294967296" in message
    if "sketch_width" not in tier:  # plain LRU has no sketch
        load_settings(tiers=[{"kind": "memory", "admission": "always", **tier}])


def test_the_largest_memory_tier_the_sketch_holds_is_accepted() -> None:
    from tiered_cache.sketch import MAX_WIDTH, sketch_width

    load_settings(tiers=[{"kind": "memory", "max_entries": 2**29, "sample_factor": 16}])
    assert sketch_width(2**29, sample_factor=16) == MAX_WIDTH


# An int past a float's range (10**400: a config file's integer, an environment variable's
# JSON) made parse_duration's float() raise OverflowError, which pydantic does not turn into a
# validation error: load_settings raised it bare, naming no field. A size of 400 nines
# overflowed its float to infinity, and int(inf) raised the same. The field is named, and the
# value is refused for what it is (more than a hundred years, negative, or too large).
@pytest.mark.parametrize(
    ("path", "overrides", "words"),
    [
        ("tiered_cache.ttl", {"ttl": 10**400}, "100 years"),
        ("tiered_cache.negative_ttl", {"negative_ttl": -(10**400)}, "negative"),
        ("tiered_cache.protection.lease_wait", {"protection": {"lease_wait": 10**400}}, "100"),
        (
            "tiered_cache.tiers[0].max_bytes",
            {"tiers": [{"kind": "memory", "max_bytes": "9" * 400 + "GiB"}]},
            "finite",
        ),
    ],
)
def test_a_number_past_a_floats_range_is_refused_naming_its_field(
    path: str, overrides: dict[str, Any], words: str
) -> None:
    message = _refused(path, **overrides)
    assert words in message, message


def test_a_ttl_past_a_floats_range_is_a_value_error_for_the_decorator_too() -> None:
    from tiered_cache import TieredCache

    with TieredCache.from_config(bus={"kind": "off"}) as cache:
        with pytest.raises(ValueError, match="100 years"):
            cache.cached(key="t:{n}", ttl=10**400)
        with pytest.raises(ValueError, match="100 years"):
            cache.get("k", lambda: 1, ttl=10**400)


#: Each settings table of the core: its path, and the table read back from settings loaded
#: with ``value`` in its field ``name``.
TABLES: dict[str, tuple[type[BaseModel], Callable[[str, Any], Any]]] = {
    "tiered_cache": (CacheSettings, lambda name, value: load_settings(**{name: value})),
    "tiered_cache.tiers[0]": (
        MemoryTierSettings,
        lambda name, value: load_settings(tiers=[{"kind": "memory", name: value}]).tiers[0],
    ),
    "tiered_cache.tiers[0].breaker": (
        BreakerSettings,
        lambda name, value: (
            load_settings(tiers=[{"kind": "memory", "breaker": {name: value}}]).tiers[0].breaker
        ),
    ),
    "tiered_cache.protection": (
        ProtectionSettings,
        lambda name, value: load_settings(protection={name: value}).protection,
    ),
    "tiered_cache.bus": (
        BusSettings,
        lambda name, value: load_settings(bus={"kind": "off", name: value}).bus,
    ),
    "tiered_cache.bus.breaker": (
        BusBreakerSettings,
        lambda name, value: (
            load_settings(bus={"kind": "off", "breaker": {name: value}}).bus.breaker
        ),
    ),
}


@pytest.mark.parametrize("path", list(TABLES))
def test_true_for_a_number_is_refused_naming_its_field(path: str) -> None:
    """pydantic's lax mode read ``max_entries = true`` as 1 (and ``false`` as 0): a memory
    tier of one entry, from a typo in a config file."""
    model, table_with = TABLES[path]
    assert bools_taken_as_something_else(model, path, table_with) == []


def test_a_bool_for_a_number_in_a_config_file_is_refused(tmp_path: Any) -> None:
    config = tmp_path / "tiered_cache.toml"
    config.write_text(
        '[tiered_cache]\n[[tiered_cache.tiers]]\nkind = "memory"\nmax_entries = true\n'
    )
    with pytest.raises(ConfigError, match=r"^tiered_cache\.tiers\[0\]\.max_entries: .*number"):
        load_settings(config)
    with pytest.raises(ConfigError, match=r"^tiered_cache\.protection\.early_refresh_beta: "):
        load_settings(protection={"early_refresh_beta": False})


def test_a_soft_timeout_above_the_hard_timeout_is_refused_naming_both() -> None:
    """It was taken: the hard timeout failed every slow load first, and the soft one (serve
    the stale value) never came."""
    message = _refused(
        "tiered_cache.protection.soft_timeout",
        protection={"soft_timeout": "5s", "hard_timeout": "1s"},
    )
    assert "hard_timeout" in message, message
    # Left unset, the soft timeout (1s) follows a hard timeout below it: a config that sets
    # only hard_timeout is taken, and no read waits past it.
    protection = load_settings(protection={"hard_timeout": "100ms"}).protection
    assert (protection.soft_timeout, protection.hard_timeout) == (0.1, 0.1)
    assert load_settings(protection={"hard_timeout": "5s"}).protection.soft_timeout == 1.0
    for soft, hard in (("1s", "1s"), ("500ms", "1s"), ("5s", None), (None, "1s")):
        protection = load_settings(protection={"soft_timeout": soft, "hard_timeout": hard})
        assert protection.protection.soft_timeout == (
            None if soft is None else parse_duration(soft)
        )
