"""The settings' rules hold for the options built in code too: ``Protection(...)``, a chain's
own arguments (``TieredCache(ttl=...)``) and ``MemoryTier(...)`` go through the rule that
refuses the same value in a config file, and say which field. Built in code, they took a
soft_timeout above the hard one, a ttl of 0 or below, a negative negative_ttl, a write
policy of neither name (run as "through") and a memory tier's ttl of 0 or max_bytes of 0."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Any, cast

import pytest

from tiered_cache import AsyncTieredCache, ConfigError, MemoryTier, TieredCache, load_settings
from tiered_cache.async_breaker import AsyncCircuitBreakerTier
from tiered_cache.breaker import CircuitBreaker, CircuitBreakerTier
from tiered_cache.compiled import compiled_core
from tiered_cache.policy import TinyLfuPolicy
from tiered_cache.protection import Protection
from tiered_cache.settings import BreakerSettings, CacheSettings
from tiered_cache.testing.clock import FakeClock

CHAINS = [TieredCache, AsyncTieredCache]

#: A value each rule of the protection settings refuses, by field (a bound, a kind, a name).
PROTECTION_REFUSED: list[tuple[str, Any]] = [
    ("max_stale", -1.0),
    ("fail_safe_throttle", -1.0),
    ("throttle_backoff", -1.0),
    ("early_refresh_beta", -0.5),
    ("early_refresh_beta", math.nan),
    ("soft_timeout", 0.0),
    ("hard_timeout", 0.0),
    ("lease", "sometimes"),
    ("lease_ttl", 0.0),
    ("lease_wait", -1.0),
    ("lease_poll", 0.0),
    ("refresh_workers", 0),
    ("max_abandoned_loads", 0),
    ("max_timed_loads", 0),
    ("close_wait", -1.0),
    ("max_stale", True),
]


@pytest.mark.parametrize(("field", "value"), PROTECTION_REFUSED)
def test_protection_built_in_code_refuses_what_the_settings_refuse(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^Protection\.{field}: "):
        Protection(**{field: value})
    with pytest.raises(ConfigError, match=rf"tiered_cache\.protection\.{field}: "):
        load_settings(protection={field: value})


def test_protection_built_in_code_refuses_a_soft_timeout_above_the_hard_one() -> None:
    with pytest.raises(ConfigError) as refused:
        Protection(soft_timeout=2.0, hard_timeout=1.0)
    message = str(refused.value)
    assert message.startswith("Protection.soft_timeout: "), message
    assert "soft_timeout (2s) is above hard_timeout (1s)" in message, message
    with pytest.raises(ConfigError, match=r"soft_timeout \(2s\) is above hard_timeout \(1s\)"):
        Protection.never_stale(soft_timeout=2.0, hard_timeout=1.0)


def test_protection_built_in_code_has_its_unset_soft_timeout_follow_a_lower_hard_one() -> None:
    """As a config file setting only hard_timeout (fc418a5): no read waits past it."""
    assert Protection(hard_timeout=0.1).soft_timeout == 0.1
    assert Protection(hard_timeout=5.0).soft_timeout == 1.0
    assert Protection(soft_timeout=0.5, hard_timeout=1.0).soft_timeout == 0.5
    assert Protection.never_stale(hard_timeout=0.1).soft_timeout is None


def test_protection_is_one_model_the_config_path_builds_and_code_cannot_change() -> None:
    settings = load_settings(protection={"hard_timeout": "100ms", "lease": "off"})
    assert isinstance(settings.protection, Protection)
    assert settings.protection == Protection(hard_timeout=0.1, lease="off")
    with pytest.raises(ValueError, match="frozen"):
        settings.protection.soft_timeout = 5.0  # type: ignore[misc]
    with TieredCache.from_settings(settings) as cache:
        assert cache._protection is settings.protection


@pytest.mark.parametrize(("field", "value"), PROTECTION_REFUSED)
def test_a_copy_of_protection_with_an_update_refuses_what_the_settings_refuse(
    field: str, value: Any
) -> None:
    """Frozen, a table is changed by building another, and pydantic's ``model_copy(update=)``
    is how it builds one: that copy took its update unchecked."""
    with pytest.raises(ConfigError, match=rf"^Protection\.{field}: "):
        Protection().model_copy(update={field: value})


def test_a_copy_of_protection_meets_the_rule_of_its_two_timeouts() -> None:
    """Its update's hard_timeout below the soft_timeout set: refused; below the one left
    unset: that one follows it, as in a table built anew."""
    with pytest.raises(ConfigError, match=r"soft_timeout \(2s\) is above hard_timeout \(1s\)"):
        Protection(soft_timeout=2.0).model_copy(update={"hard_timeout": 1.0})
    assert Protection(hard_timeout=2.0).model_copy(update={"hard_timeout": 0.5}).soft_timeout == 0.5
    kept = Protection(hard_timeout=2.0, lease="off")
    assert kept.model_copy(update={"lease_wait": 1.0}) == Protection(
        hard_timeout=2.0, lease="off", lease_wait=1.0
    )
    assert kept.model_copy() == kept.model_copy(deep=True) == kept


def test_a_copy_of_a_memory_tiers_table_with_an_update_is_checked() -> None:
    """Every table of the settings: the rule lives in their base (``SettingsTable``)."""
    table = load_settings(tiers=[{"kind": "memory"}]).tiers[0]
    with pytest.raises(ValueError, match="max_entries"):
        table.model_copy(update={"max_entries": 0})


#: A chain's own arguments: a value the settings refuse, and the field the error names.
CHAIN_REFUSED: list[tuple[str, Any, str]] = [
    ("ttl", 0, "ttl"),
    ("ttl", -5.0, "ttl"),
    ("negative_ttl", -1.0, "negative_ttl"),
    ("write_policy", "sideways", "write_policy"),
    ("max_stale_when_disconnected", -1.0, "max_stale_when_disconnected"),
]


@pytest.mark.parametrize("chain", CHAINS, ids=["sync", "async"])
@pytest.mark.parametrize(("argument", "value", "field"), CHAIN_REFUSED)
def test_a_chain_built_in_code_refuses_the_arguments_the_settings_refuse(
    chain: Any, argument: str, value: Any, field: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        chain([MemoryTier()], **{argument: value})
    table = {"bus": {"kind": "off", field: value}} if field.startswith("max_stale") else None
    with pytest.raises(ConfigError, match=rf"tiered_cache\.(bus\.)?{field}: "):
        load_settings(**(table or {field: value}))


@pytest.mark.parametrize("chain", CHAINS, ids=["sync", "async"])
def test_a_chain_built_in_code_never_echoes_a_refused_ttl(chain: Any) -> None:
    with pytest.raises(ConfigError, match=r"^ttl: expected a duration") as refused:
        chain([MemoryTier()], ttl="redis://:hunter2@cache:6379")
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("chain", CHAINS, ids=["sync", "async"])
def test_a_chains_protection_given_as_a_table_is_built_by_the_settings_rules(chain: Any) -> None:
    """A table, as a config file gives it, is the model built through its rules; anything
    else is refused naming ``protection``. A dict was taken, and failed at the chain's first
    look at it (``AttributeError: 'dict' object has no attribute 'lease'``)."""
    cache = chain([MemoryTier()], protection={"hard_timeout": "100ms", "lease": "off"})
    assert cache._protection == Protection(hard_timeout=0.1, lease="off")
    assert cache._protection.soft_timeout == 0.1  # the unset one follows, as in a file
    with pytest.raises(ConfigError, match=r"^protection: Protection\.hard_timeout: "):
        chain([MemoryTier()], protection={"hard_timeout": -1.0})
    with pytest.raises(ConfigError, match=r"^protection: Input should be a valid dictionary"):
        chain([MemoryTier()], protection="redis://:hunter2@cache:6379")
    given = Protection(lease="off")
    assert chain([MemoryTier()], protection=given)._protection is given


@pytest.mark.parametrize(
    ("argument", "value"), [("ttl", 0), ("ttl", -1.0), ("max_bytes", 0), ("max_bytes", -1)]
)
def test_a_memory_tier_built_in_code_refuses_what_its_settings_refuse(
    argument: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        MemoryTier(**{argument: value})
    with pytest.raises(ConfigError, match=rf"tiered_cache\.tiers\[0\]\.{argument}: "):
        load_settings(tiers=[{"kind": "memory", argument: value}])


#: A circuit breaker's arguments the settings' ``breaker`` table refuses: a cool-down of 0
#: (every call past the threshold a probe: no breaker), NaN (the circuit never open for a
#: moment) or infinite (never probed again), a threshold below 1 or a bool.
BREAKER_REFUSED: list[tuple[str, Any]] = [
    ("cool_down", 0),
    ("cool_down", 0.0),
    ("cool_down", -0.5),
    ("cool_down", math.nan),
    ("cool_down", math.inf),
    ("failure_threshold", 0),
    ("failure_threshold", True),
]


@pytest.mark.parametrize(("argument", "value"), BREAKER_REFUSED)
def test_a_breaker_built_in_code_refuses_what_its_settings_refuse(
    argument: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        CircuitBreaker("redis", **{argument: value})
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        CircuitBreakerTier(MemoryTier(), **{argument: value})
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        AsyncCircuitBreakerTier(cast(Any, MemoryTier()), **{argument: value})
    table = {"kind": "memory", "breaker": {"enabled": True, argument: value}}
    with pytest.raises(ConfigError, match=rf"tiered_cache\.tiers\[0\]\.breaker\.{argument}: "):
        load_settings(tiers=[table])


def test_a_breaker_built_in_code_runs_with_its_settings_and_reads_a_duration() -> None:
    """Its arguments win over its settings, as the settings' field reads them ("250ms"),
    and the model it holds is the one it runs with; a refused text is never shown."""
    settings = BreakerSettings(failure_threshold=2, cool_down=9.0)
    breaker = CircuitBreaker("redis", settings, cool_down="250ms")
    assert (breaker.failure_threshold, breaker.cool_down) == (2, 0.25)
    assert breaker.settings == BreakerSettings(failure_threshold=2, cool_down=0.25)
    assert CircuitBreaker("redis", settings).settings is settings
    with pytest.raises(ConfigError, match=r"^cool_down: expected a duration") as refused:
        CircuitBreaker("redis", cool_down="redis://:hunter2@cache:6379")
    assert "hunter2" not in str(refused.value)


#: The hot-key policy's arguments a memory tier's settings refuse, and the field they are.
POLICY_REFUSED: list[tuple[str, Any, str]] = [
    ("hot_ttl", 0, "hot_ttl"),
    ("hot_ttl", -1.0, "hot_ttl"),
    ("hot_ttl", math.nan, "hot_ttl"),
    ("sketch_width", 8, "sketch_width"),
    ("sketch_width", 100, "sketch_width"),
    ("window_fraction", 0.0, "window_fraction"),
    ("window_fraction", 1.0, "window_fraction"),
    ("sample_factor", 0, "sample_factor"),
    ("top_k", 0, "top_k"),
    ("hot_half_life", 0, "hot_half_life"),
    ("max_entries", 0, "max_entries"),
    ("max_weight", 0, "max_bytes"),
]


@pytest.mark.parametrize(("argument", "value", "field"), POLICY_REFUSED)
def test_a_policy_built_in_code_refuses_what_a_memory_tiers_settings_refuse(
    argument: str, value: Any, field: str
) -> None:
    options = {"max_entries": 100, argument: value}
    with pytest.raises(ConfigError, match=rf"^{argument}: "):
        TinyLfuPolicy(**options)
    with pytest.raises(ConfigError, match=rf"tiered_cache\.tiers\[0\]\.{field}: "):
        load_settings(tiers=[{"kind": "memory", "max_entries": 100, field: value}])


def test_a_policy_built_in_code_takes_numbers_only() -> None:
    """The policy takes numbers: text its settings field would read is refused, by the
    compiled policy's own signature (a TypeError at the call) or, on the pure core, by
    ``policy_options`` (the pure policy kept it, and failed at the first hot fill)."""
    if compiled_core():
        with pytest.raises(TypeError):
            TinyLfuPolicy(100, hot_ttl=cast(Any, "5m"))
    else:
        with pytest.raises(ConfigError, match=r"^hot_ttl: expected a number"):
            TinyLfuPolicy(100, hot_ttl=cast(Any, "5m"))
    assert TinyLfuPolicy(100, hot_ttl=60, sketch_width=1024).sketch.width == 1024


@pytest.mark.parametrize(
    ("protection", "field"),
    [({"max_stale": -1}, "max_stale"), ({"soft_timeout": 2, "hard_timeout": 1}, "soft_timeout")],
)
def test_settings_validated_from_a_dict_name_the_protection_field_as_a_file_does(
    protection: dict[str, Any], field: str
) -> None:
    """``CacheSettings.model_validate`` raised pydantic's ValidationError, wrapping
    ``Protection.<field>``: the path a file gives, and the library's error."""
    with pytest.raises(ConfigError, match=rf"^tiered_cache\.protection\.{field}: "):
        CacheSettings.model_validate({"protection": protection})
    with pytest.raises(ConfigError, match=rf"^tiered_cache\.protection\.{field}: "):
        load_settings(protection=protection)
    with pytest.raises(ConfigError, match=r"^tiered_cache\.ttl: "):
        CacheSettings.model_validate({"ttl": 0})
    valid = CacheSettings.model_validate({"protection": {"lease": "off"}})
    assert valid.protection == Protection(lease="off")


def test_a_call_takes_the_durations_its_hint_names() -> None:
    """A call's ``ttl`` is a duration as a file's is (``DurationLike``, tests/typing): the
    compiled core refused a timedelta (``TypeError: union[float, str, None] object expected;
    got datetime.timedelta``), which the pure core and the settings took."""
    clock = FakeClock()
    cache = TieredCache(
        [MemoryTier(clock=clock)],
        clock=clock,
        ttl=timedelta(hours=1),
        protection=Protection.never_stale(),
    )
    assert cache.get("k", lambda: "v", ttl=timedelta(minutes=1)) == "v"
    cache.set("j", "w", ttl=timedelta(seconds=30))
    cache.set_many({"i": "x"}, ttl="30s")
    clock.advance(45)
    assert cache.get("j", lambda: "again") == "again"  # its 30 s over
    assert cache.get("k", lambda: "again") == "v"  # a minute not yet

    async def both() -> None:
        chain = AsyncTieredCache([MemoryTier(clock=clock)], clock=clock)
        assert await chain.get("k", _loaded, ttl=timedelta(minutes=1)) == "v"
        await chain.set("j", "w", ttl=timedelta(seconds=30))
        await chain.aclose()

    asyncio.run(both())
    cache.close()


async def _loaded() -> str:
    return "v"
