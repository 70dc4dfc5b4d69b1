"""FastAPI integration: a lifespan that builds and closes the chain, a dependency for routes.

    from fastapi import FastAPI
    from tiered_cache.contrib.fastapi import TieredCacheDependency, cache_lifespan

    app = FastAPI(lifespan=cache_lifespan("tiered_cache.toml"))

    @app.get("/tweets/{tweet_id}")
    def get_tweet(tweet_id: str, cache: TieredCacheDependency) -> dict:
        return cache.get(f"tweet:{tweet_id}")

Building and closing run in the thread pool: both may block (a Redis connection pool, the
background refresh threads), and the event loop must not. For ``async def`` routes,
:func:`async_cache_lifespan` and :data:`AsyncTieredCacheDependency` do the same with an
:class:`~tiered_cache.AsyncTieredCache`, closed with ``aclose()`` on the app's loop. This module
imports FastAPI; the core never imports it (``import tiered_cache`` works without FastAPI
installed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from ..async_chain import AsyncTieredCache
from ..chain import TieredCache

__all__ = [
    "STATE_KEY",
    "AsyncTieredCacheDependency",
    "Lifespan",
    "TieredCacheDependency",
    "async_cache_lifespan",
    "cache_lifespan",
    "get_async_cache",
    "get_cache",
]

#: The attribute of ``app.state`` (and the key of the lifespan state) holding the chain.
STATE_KEY = "tiered_cache"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]

Chain = TypeVar("Chain", TieredCache, AsyncTieredCache)
_CHAINS = (TieredCache, AsyncTieredCache)


def _pieces(kind: type[TieredCache | AsyncTieredCache]) -> tuple[str, str]:
    """The lifespan and the dependency that go with a kind of chain (what errors name)."""
    if issubclass(kind, AsyncTieredCache):
        return "async_cache_lifespan", "AsyncTieredCacheDependency"
    return "cache_lifespan", "TieredCacheDependency"


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

    The chain is put in the lifespan state, where :func:`get_cache` finds it (each server of
    the app has its own), and on ``app.state.tiered_cache`` (the last one started). Inside a
    lifespan of your own, enter it as a context manager:
    ``async with cache_lifespan(...)(app) as state: cache = state[STATE_KEY]``.
    """

    def build_from_config() -> TieredCache:
        return TieredCache.from_config(config, **overrides)

    async def close_chain(cache: TieredCache) -> None:
        await run_in_threadpool(cache.close)

    _check_arguments("cache_lifespan", build, config, overrides)
    return _lifespan(TieredCache, build or build_from_config, close_chain if close else None)


def async_cache_lifespan(
    config: str | Path | None = None,
    *,
    build: Callable[[], AsyncTieredCache] | None = None,
    close: bool = True,
    **overrides: Any,
) -> Lifespan:
    """:func:`cache_lifespan` for an :class:`~tiered_cache.AsyncTieredCache`, the chain of
    ``async def`` routes: built from ``config`` (as :meth:`AsyncTieredCache.from_config`) or
    by ``build``, closed with ``aclose()`` on the app's loop at shutdown (unless ``close`` is
    ``False``). Routes receive it through :data:`AsyncTieredCacheDependency`.
    """

    def build_from_config() -> AsyncTieredCache:
        return AsyncTieredCache.from_config(config, **overrides)

    async def close_chain(cache: AsyncTieredCache) -> None:
        await cache.aclose()

    _check_arguments("async_cache_lifespan", build, config, overrides)
    return _lifespan(AsyncTieredCache, build or build_from_config, close_chain if close else None)


def _check_arguments(name: str, build: object, config: object, overrides: dict[str, Any]) -> None:
    if build is not None and (config is not None or overrides):
        raise TypeError(f"{name}: give either build= or config/overrides, not both")


def _lifespan(
    kind: type[Chain],
    builder: Callable[[], Chain],
    close: Callable[[Chain], Awaitable[None]] | None,
) -> Lifespan:
    """The lifespan both kinds share: build (in the thread pool: reading the file and making
    clients may block; an async chain binds to no loop until its first call), check the kind,
    put it on ``app.state``, and close it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        cache: object = await run_in_threadpool(builder)
        if not isinstance(cache, kind):
            # An AsyncTieredCache under cache_lifespan was taken: every route then said there
            # was no chain, and the shutdown failed calling its close().
            if close is not None and isinstance(cache, AsyncTieredCache):
                await cache.aclose()
            elif close is not None and isinstance(cache, TieredCache):
                await run_in_threadpool(cache.close)
            cure = f"; use {_pieces(type(cache))[0]}" if isinstance(cache, _CHAINS) else ""
            raise TypeError(
                f"{_pieces(kind)[0]} builds a {kind.__name__}, got {type(cache).__name__}{cure}"
            )
        chain: Chain = cache
        setattr(app.state, STATE_KEY, chain)
        try:
            yield {STATE_KEY: chain}
        finally:
            # Another server of this app (a second TestClient, the app run twice) may have put
            # its own chain there since: that one is its to take away; this one is closed
            # all the same (the other's removal before this raised, and left it open).
            held: object = getattr(app.state, STATE_KEY, None)
            if held is chain:
                delattr(app.state, STATE_KEY)
            if close is not None:
                await close(chain)

    return lifespan


def _chain_of(request: Request, kind: type[Chain]) -> Chain:
    # The lifespan's state first: each server of the app gives its requests a copy of its own
    # (one app object served twice at once keeps two chains; app.state holds the last one).
    cache = getattr(request.state, STATE_KEY, None)
    if cache is None:
        cache = getattr(request.app.state, STATE_KEY, None)
    if isinstance(cache, kind):
        return cache
    lifespan, dependency = _pieces(kind)
    if isinstance(cache, _CHAINS):
        raise RuntimeError(
            f"this app's chain is a {type(cache).__name__}: a route takes it as "
            f"{_pieces(type(cache))[1]}, not {dependency}"
        )
    raise RuntimeError(
        "no tiered-cache chain on this app: create it with "
        f"FastAPI(lifespan=tiered_cache.contrib.fastapi.{lifespan}(...))"
    )


def get_cache(request: Request) -> TieredCache:
    """The app's chain, for ``Depends(get_cache)``; raises if no lifespan built one."""
    return _chain_of(request, TieredCache)


def get_async_cache(request: Request) -> AsyncTieredCache:
    """The app's asyncio chain, for ``Depends(get_async_cache)``; raises if no
    :func:`async_cache_lifespan` built one."""
    return _chain_of(request, AsyncTieredCache)


#: A route parameter annotated with this receives the app's chain.
TieredCacheDependency = Annotated[TieredCache, Depends(get_cache)]

#: The same for ``async def`` routes over :func:`async_cache_lifespan`'s chain.
AsyncTieredCacheDependency = Annotated[AsyncTieredCache, Depends(get_async_cache)]
