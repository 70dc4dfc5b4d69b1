"""Types of the C extension ``_hitcall.c`` (built by tools/build_core.py)."""

from collections.abc import Callable
from typing import Any

class HitCall:
    """A ``@cache.cached`` sync function whose plain hits are answered in C."""

    #: The chain's ``l1_hit`` (set by ``L1Reader.follow_l1_hit``).
    reader: Callable[[Any], Any]

    def __init__(
        self,
        fallback: Callable[..., Any],
        rest: Callable[..., Any],
        not_fresh: object,
        escape: str,
        literals: tuple[str, ...],
        indexes: tuple[int, ...],
        enders: tuple[str | None, ...],
        min_args: int,
        max_args: int,
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, instance: object, owner: type | None = None) -> Any: ...
