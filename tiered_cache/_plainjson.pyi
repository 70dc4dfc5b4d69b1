"""Types of the C extension ``_plainjson.c`` (built by tools/build_core.py)."""

from collections.abc import Sequence

def plain(datas: Sequence[bytes], /) -> bool:
    """True when no value holds a '$', a backslash or a run of 20 or more of '#-0123456789'."""
