"""FastAPI integration: a lifespan that builds and closes the chain, a dependency for routes.

    from fastapi import FastAPI
    from tiered_cache.contrib.fastapi import TieredCacheDependency, cache_lifespan

    app = FastAPI(lifespan=cache_lifespan("tiered_cache.toml"))

    @app.get("/tweets/{tweet_id}")
    def get_tweet(tweet_id: str, cache: TieredCacheDependency) -> dict:
        return cache.get(f"tweet:{tweet_id}")

Building and closing run in the thread pool: both may block (a Redis connection pool, the
background refresh threads), and the event loop must not. This module imports FastAPI; the
core never imports it (``import tiered_cache`` works without FastAPI installed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from ..chain import TieredCache

__all__ = ["STATE_KEY", "Lifespan", "TieredCacheDependency", "cache_lifespan", "get_cache"]

#: The attribute of ``app.state`` (and the key of the lifespan state) holding the chain.
STATE_KEY = "tiered_cache"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]


def cache_lifespan(
    config: str | Path | None = None,
    *,
    build: Callable[[], TieredCache] | None = None,
    close: bool = True,
    **overrides: Any,
) -> Lifespan:
    """A FastAPI ``lifespan``: build the chain at startup, close it at shutdown.

    Args:
        config: the TOML file, as for :meth:`TieredCache.from_config` (``None``: the
            environment alone).
        build: builds the chain instead of ``from_config`` (a chain made elsewhere, a
            ``from_settings`` call); ``config`` and ``overrides`` must then be left out.
        close: close the chain at shutdown. ``False`` when something else owns it (a test
            fixture sharing one chain between apps).
        **overrides: fields of the ``[tiered_cache]`` table, as for ``from_config``.

    The chain is put on ``app.state.tiered_cache`` (and in the lifespan state), where
    :func:`get_cache` finds it. Inside a lifespan of your own, enter it as a context manager:
    ``async with cache_lifespan(...)(app) as state: cache = state[STATE_KEY]``.
    """
    if build is not None and (config is not None or overrides):
        raise TypeError("cache_lifespan: give either build= or config/overrides, not both")

    def build_from_config() -> TieredCache:
        return TieredCache.from_config(config, **overrides)

    builder = build or build_from_config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        cache = await run_in_threadpool(builder)
        setattr(app.state, STATE_KEY, cache)
        try:
            yield {STATE_KEY: cache}
        finally:
            delattr(app.state, STATE_KEY)
            if close:
                await run_in_threadpool(cache.close)

    return lifespan


def get_cache(request: Request) -> TieredCache:
    """The app's chain, for ``Depends(get_cache)``; raises if no lifespan built one."""
    cache = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(cache, TieredCache):
        raise RuntimeError(
            "no tiered-cache chain on this app: create it with "
            "FastAPI(lifespan=tiered_cache.contrib.fastapi.cache_lifespan(...))"
        )
    return cache


#: A route parameter annotated with this receives the app's chain.
TieredCacheDependency = Annotated[TieredCache, Depends(get_cache)]
