"""What awaiting a no-op in the asyncio chain's publishing thread costs, beside
``asyncio.to_thread`` (the default executor) in the same run, in interleaved turns.

``--base FILE`` also times the ``in_own_thread(function, *args, name=...)`` of an older
``tiered_cache/own_thread.py`` (a thread started for each call), e.g. one written out by
``git show SHA:tiered_cache/own_thread.py > /tmp/base_own_thread.py``.

Prints, for each hop, the per-call microseconds of each turn (median of the turn's calls),
then the minimum over the turns and its ratio to ``asyncio.to_thread``'s minimum.

Run: ``.venv/bin/python tools/publish_hop.py [--turns 7] [--calls 2000] [--base FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import time
from collections.abc import Awaitable, Callable

from tiered_cache.own_thread import OwnThreads

Hop = Callable[[], Awaitable[None]]


def noop() -> None:
    pass


async def per_call_us(hop: Hop, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await hop()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def base_hop(path: str) -> Hop:
    spec = importlib.util.spec_from_file_location("base_own_thread", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    in_own_thread = module.in_own_thread
    return lambda: in_own_thread(noop, name="base-hop")  # type: ignore[no-any-return]


async def main(turns: int, calls: int, base: str | None) -> None:
    threads = OwnThreads("publish-hop")
    hops: dict[str, Hop] = {
        "asyncio.to_thread": lambda: asyncio.to_thread(noop),
        "OwnThreads.run": lambda: threads.run(noop),
    }
    if base is not None:
        hops["base in_own_thread"] = base_hop(base)
    seen: dict[str, list[float]] = {name: [] for name in hops}
    for _ in range(turns):
        for name, hop in hops.items():
            seen[name].append(await per_call_us(hop, calls))
    threads.close()
    peer = min(seen["asyncio.to_thread"])
    for name, figures in seen.items():
        shown = " ".join(f"{figure:.0f}" for figure in figures)
        print(f"{name:20} min {min(figures):5.0f} us ({min(figures) / peer:.2f}x)  turns: {shown}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--base", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.turns, args.calls, args.base))
