"""How the chain protects the source: stale serving, early refresh, timeouts and leases.

The options live in :class:`Protection`, the one model of them (defined with the settings,
:mod:`tiered_cache.settings`, whose ``[tiered_cache.protection]`` table it is, so that code and
config files are checked by the same rules); the chain applies them. The defaults suit a
throttled DynamoDB table: a failing or slow source is answered from the last good value for a
while, hot entries refresh before they expire, and one process per fleet loads a missing key.
"""

from __future__ import annotations

import math

from .settings import Protection

__all__ = ["REFRESH_DUE", "Protection", "RefreshDue", "xfetch_due"]


class RefreshDue:
    """The type of :data:`REFRESH_DUE`."""

    def __repr__(self) -> str:
        return "REFRESH_DUE"


#: Returned by the chain's L1 lookup instead of a value when XFetch picked this read to
#: refresh the key (the decorator's generated wrapper checks for it).
REFRESH_DUE = RefreshDue()


def xfetch_due(now: float, soft_expiry: float, load_duration: float, beta: float, u: float) -> bool:
    """The XFetch rule: refresh when ``now - delta * beta * ln(u) >= expiry``.

    From Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache Stampede Prevention",
    VLDB 2015: with ``u`` uniform in (0, 1], the chance of refreshing grows exponentially as the
    expiry nears, faster for values that took long (``delta``) to compute, so that about one
    reader refreshes a hot key shortly before it would expire for everyone.
    """
    if u <= 0.0:
        u = 1e-300
    return now - load_duration * beta * math.log(u) >= soft_expiry
