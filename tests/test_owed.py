"""The record of deletes a shared tier owes (tiered_cache.owed), without a tier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from tiered_cache.errors import TierUnavailable
from tiered_cache.metrics import CacheMetrics
from tiered_cache.owed import Debt, OwedDeletes
from tiered_cache.steps import Steps, run


class Payee:
    """Records what a payment deleted; ``during`` runs inside its first delete."""

    def __init__(self) -> None:
        self.made: list[tuple[str, object]] = []
        self.during: Callable[[], None] | None = None

    def _made(self, what: str, argument: object) -> None:
        self.made.append((what, argument))
        during, self.during = self.during, None
        if during is not None:
            during()

    def delete_many_owed(self, keys: Sequence[str]) -> None:
        self._made("keys", tuple(keys))

    def delete_prefix_owed(self, prefix: str) -> None:
        self._made("prefix", prefix)

    def clear_owed(self) -> None:
        self._made("clear", None)


def announced(into: list[Debt]) -> Callable[[Debt], Steps[None]]:
    def then(debt: Debt) -> Steps[None]:
        into.append(debt)
        return
        yield

    return then


def record(limit: int | None = None) -> tuple[OwedDeletes, CacheMetrics]:
    metrics = CacheMetrics(["memory", "redis"])
    return OwedDeletes("redis", metrics, limit), metrics


def test_a_payment_deletes_what_is_owed_then_announces_it() -> None:
    owed, _ = record()
    assert not owed.due
    owed.owe(["a", "b"])
    owed.owe(prefixes=["p:"])
    owed.owe(["a"])
    assert owed.due and len(owed) == 3
    payee, debts = Payee(), list[Debt]()
    run(owed.settling(payee, announced(debts)))
    assert payee.made == [("prefix", "p:"), ("keys", ("a", "b"))]
    assert [(debt.keys, debt.prefixes, debt.everything) for debt in debts] == [
        (("a", "b"), ("p:",), False)
    ]
    assert not owed.due and len(owed) == 0


def test_a_key_owed_again_during_the_payment_stays_owed() -> None:
    """Its new delete failed after the payment's was sent: that one may have come first."""
    owed, _ = record()
    owed.owe(["a", "b"])
    payee = Payee()
    payee.during = lambda: owed.owe(["a", "c"])
    run(owed.settling(payee, announced([])))
    assert owed.due and len(owed) == 2
    payee.made.clear()
    run(owed.settling(payee, announced([])))
    assert payee.made == [("keys", ("a", "c"))]
    assert not owed.due


def test_everything_owed_again_during_its_clear_stays_owed() -> None:
    owed, _ = record()
    owed.owe(everything=True)
    payee = Payee()
    payee.during = lambda: owed.owe(["a"])  # after the clear was sent: not covered by it
    run(owed.settling(payee, announced([])))
    assert owed.due
    run(owed.settling(payee, announced([])))
    assert payee.made == [("clear", None), ("clear", None)]
    assert not owed.due


def test_a_second_payer_is_refused_while_one_pays() -> None:
    owed, _ = record()
    owed.owe(["a"])
    payee = Payee()
    refused: list[Exception] = []

    def second() -> None:
        try:
            run(owed.settling(Payee(), announced([])))
        except TierUnavailable as exc:
            refused.append(exc)

    payee.during = second
    run(owed.settling(payee, announced([])))
    assert len(refused) == 1 and "being made" in str(refused[0])
    assert not owed.due


def test_a_failed_payment_keeps_the_debt_and_announces_nothing() -> None:
    owed, _ = record()
    owed.owe(["a"])
    payee = Payee()

    def fail() -> None:
        raise TierUnavailable("down")

    payee.during = fail
    debts: list[Debt] = []
    with pytest.raises(TierUnavailable):
        run(owed.settling(payee, announced(debts)))
    assert owed.due and len(owed) == 1 and debts == []
    run(owed.settling(payee, announced(debts)))
    assert not owed.due and len(debts) == 1


def test_past_the_bound_the_record_keeps_everything() -> None:
    owed, metrics = record(limit=2)
    owed.owe(["a", "b"])
    owed.owe(["c"])
    assert len(owed) == 1
    owed.owe(["d"])  # covered by the clear still owed
    assert len(owed) == 1
    events = metrics.snapshot()
    assert events["deletes_owed"] == 4
    assert events["deletes_owed_overflows"] == 1
    payee = Payee()
    run(owed.settling(payee, announced([])))
    assert payee.made == [("clear", None)]
