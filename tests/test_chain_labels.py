"""A chain's namespace and its tiers' names label every series the exporters show, and a
namespace prefixes every key a shared tier stores, as UTF-8: one empty, or one UTF-8 cannot
encode (a lone surrogate), is refused where the chain is built, in code as from settings.
Built in code, a chain took both: every Prometheus scrape then failed (UnicodeEncodeError)."""

from __future__ import annotations

from typing import Any

import pytest

from tiered_cache import AsyncTieredCache, ConfigError, MemoryTier, TieredCache, load_settings

CHAINS = [TieredCache, AsyncTieredCache]


@pytest.mark.parametrize("chain", CHAINS, ids=["sync", "async"])
@pytest.mark.parametrize(
    ("namespace", "problem"), [("", "is empty"), ("app\ud800", "lone surrogate")]
)
def test_a_chain_built_in_code_refuses_the_namespace_the_settings_refuse(
    chain: Any, namespace: str, problem: str
) -> None:
    with pytest.raises(
        ValueError, match=f"namespace {problem}|namespace holds a {problem}"
    ) as refused:
        chain([MemoryTier()], namespace=namespace)
    assert "\ud800" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"tiered_cache\.namespace"):
        load_settings(namespace=namespace)


@pytest.mark.parametrize("chain", CHAINS, ids=["sync", "async"])
@pytest.mark.parametrize(("name", "problem"), [("", "is empty"), ("l1\ud800", "lone surrogate")])
def test_a_tier_named_as_no_label_can_be_is_refused_by_the_chain_and_the_settings(
    chain: Any, name: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=r"tiers\[1\]\.name") as refused:
        chain([MemoryTier(), MemoryTier(name=name)], namespace="labels")
    assert problem in str(refused.value) and "\ud800" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"tiered_cache\.tiers\[0\]\.name"):
        load_settings(tiers=[{"kind": "memory", "name": name}])


@pytest.mark.parametrize("chain", CHAINS, ids=["sync", "async"])
def test_two_tiers_of_one_name_are_refused_by_the_chain_and_the_settings(chain: Any) -> None:
    """Their series were one: only Prometheus's register() refused such a chain, when it ran
    (the settings' own case, a variable changing a kind: tests/test_settings.py)."""
    with pytest.raises(ValueError, match=r"^tiers\[2\]\.name: tiers\[0\] has this name too"):
        chain([MemoryTier(name="l1"), MemoryTier(name="l2"), MemoryTier(name="l1")])
    with pytest.raises(ValueError, match=r"^tiers\[1\]\.name: tiers\[0\] has this name too"):
        chain([MemoryTier(), MemoryTier(max_entries=5)])  # both named after their kind
    with pytest.raises(
        ConfigError, match=r"^tiered_cache\.tiers\[1\]\.name: tiers\[0\] has this name too"
    ):
        load_settings(tiers=[{"kind": "memory"}, {"kind": "memory", "max_entries": 5}])


def test_good_labels_are_taken() -> None:
    cache = TieredCache([MemoryTier(name="l1-été")], namespace="app:v2")
    assert (cache.namespace, [tier.name for tier in cache.tiers]) == ("app:v2", ["l1-été"])
    cache.close()
