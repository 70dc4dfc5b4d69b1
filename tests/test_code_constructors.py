"""The settings' rules hold for the options built in code too: ``Protection(...)``, a chain's
own arguments (``TieredCache(ttl=...)``) and ``MemoryTier(...)`` go through the rule that
refuses the same value in a config file, and say which field. Built in code, they took a
soft_timeout above the hard one, a ttl of 0 or below, a negative negative_ttl, a write
policy of neither name (run as "through") and a memory tier's ttl of 0 or max_bytes of 0."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, ConfigError, MemoryTier, TieredCache, load_settings
from tiered_cache.protection import Protection

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
