"""What tiers and sources can tell about themselves for ``TieredCache.stats()``.

The chain counts what it sees (hits, misses, fills); some facts only a part knows: how many
entries a memory tier evicted, whether a breaker is open, what a read from a DynamoDB table
costs. A part that knows such facts offers :class:`Reporting`; ``stats()`` merges its report
into the part's entry. Reports are taken when ``stats()`` is called (a scrape), never on reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .coherence import BusLink

#: A report's values: counts and amounts, or a state name (``"closed"``).
ReportValue = int | float | str


@runtime_checkable
class Reporting(Protocol):
    """A tier or source that reports facts the chain cannot count itself."""

    def report(self) -> Mapping[str, ReportValue]:
        """Current figures, such as ``{"evictions": 12, "entries": 950}``; cheap to take."""
        ...


def report_of(part: object) -> dict[str, ReportValue]:
    """``part``'s report, or an empty one when it offers none."""
    return dict(part.report()) if isinstance(part, Reporting) else {}


def source_report(part: object, reads_saved: int) -> dict[str, ReportValue]:
    """The source's report, with ``read_units_saved`` when the source says what one read costs
    (``read_units_per_read``, the mean over the reads it made): the reads the cache answered
    would have cost about that much each."""
    report = report_of(part)
    per_read = report.get("read_units_per_read")
    if isinstance(per_read, int | float):
        report["read_units_saved"] = reads_saved * per_read
    return report


def chain_stats(
    snapshot: dict[str, Any],
    *,
    tiers: Sequence[Any],
    source: Any,
    namespace: str,
    bus: BusLink | None,
) -> dict[str, Any]:
    """A chain's ``stats()``: the metrics ``snapshot`` with what each tier (accessor) and the
    source report themselves, the namespace, the bus's state and its publish breaker's (``None``
    without a bus), and the hottest keys (both chains
    report the same way). The tiers report before the hot keys are asked for: asking goes
    through a tier's breaker, whose state the report must show as it was."""
    for tier, counters in zip(tiers, snapshot["tiers"], strict=True):
        counters.update(tier.report())  # evictions, breaker state: what tiers know
    snapshot["source"] = (
        None
        if source is None
        else {"name": source.name, **source_report(source, snapshot["source_reads_saved"])}
    )
    snapshot["namespace"] = namespace
    snapshot["bus"] = None if bus is None else bus.state
    snapshot["bus_publish_breaker"] = None if bus is None else bus.publish_breaker_state
    snapshot["hot_keys"] = [[key, rate] for key, rate in first_hot_keys(tiers, 10)]
    return snapshot


def first_hot_keys(tiers: Sequence[Any], n: int) -> list[tuple[str, float]]:
    """The ``n`` hottest keys of the first tier that tracks them (none if no tier does)."""
    for tier in tiers:
        result: list[tuple[str, float]] = tier.hot_keys(n)
        if result:
            return result
    return []
