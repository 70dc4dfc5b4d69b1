"""tiered_cache.contrib.fastapi: the lifespan builds and closes the chain, routes receive it.

Over a real private redis-server: whether the chain was closed is read from the server's own
client list, not from a flag of the chain.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

import httpx
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tiered_cache import AsyncTieredCache, TieredCache
from tiered_cache.contrib.fastapi import (
    STATE_KEY,
    AsyncTieredCacheDependency,
    Lifespan,
    TieredCacheDependency,
    async_cache_lifespan,
    cache_lifespan,
)
from tiered_cache.testing.servers import RedisServer, redis_server_binary

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="needs redis-server")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def config(tmp_path: Path, server: RedisServer) -> Path:
    # Redis gets 5 s: in two full runs at load 10 the default 50 ms timed out a Redis call of
    # the 200 requests' shared load, and the async test found no key in Redis (`assert 0`).
    # Its subject is the lifespan and the shared load, not a slow Redis.
    path = tmp_path / "tiered_cache.toml"
    path.write_text(
        f"""
[tiered_cache]
namespace = "tweets"

[[tiered_cache.tiers]]
kind = "memory"
max_entries = 100

[[tiered_cache.tiers]]
kind = "redis"
url = "{server.url}"
timeout = "5s"
""",
        encoding="utf-8",
    )
    return path


def other_clients(admin: redis.Redis) -> int:
    """Connections to the server besides ``admin``'s own."""
    return len(admin.client_list()) - 1


def tweet_app(lifespan: Lifespan) -> FastAPI:
    app = FastAPI(lifespan=lifespan)

    @app.get("/tweets/{tweet_id}")
    def get_tweet(tweet_id: str, cache: TieredCacheDependency) -> dict[str, Any]:
        text = cache.get(f"tweet:{tweet_id}", lambda: f"tweet {tweet_id}")
        return {"text": text, "chain": id(cache)}

    return app


def test_the_lifespan_builds_the_chain_routes_get_it_and_shutdown_closes_it(
    config: Path, admin: redis.Redis
) -> None:
    app = tweet_app(cache_lifespan(config))
    with TestClient(app) as client:
        chain = getattr(app.state, STATE_KEY)
        assert isinstance(chain, TieredCache)
        first = client.get("/tweets/1").json()
        assert first == {"text": "tweet 1", "chain": id(chain)}
        assert client.get("/tweets/1").json()["chain"] == id(chain)
        assert admin.exists("tweets:tweet:1")  # filled into the Redis tier of the file
        assert other_clients(admin) > 0
    assert other_clients(admin) == 0  # the chain's connections (tier and bus) are closed
    assert not hasattr(app.state, STATE_KEY)


def test_overrides_take_precedence_over_the_file(config: Path, admin: redis.Redis) -> None:
    with TestClient(tweet_app(cache_lifespan(config, namespace="staging"))) as client:
        client.get("/tweets/7")
    assert admin.exists("staging:tweet:7")
    assert not admin.exists("tweets:tweet:7")


def test_a_chain_built_elsewhere_stays_open_with_close_false(
    config: Path, admin: redis.Redis
) -> None:
    with TieredCache.from_config(config) as chain:
        app = tweet_app(cache_lifespan(build=lambda: chain, close=False))
        with TestClient(app) as client:
            assert client.get("/tweets/2").json()["chain"] == id(chain)
        assert other_clients(admin) > 0  # still open after the app stopped
        assert chain.get("tweet:2") == "tweet 2"
    assert other_clients(admin) == 0


def test_a_route_without_the_lifespan_says_how_to_add_it() -> None:
    with (
        TestClient(tweet_app(None)) as client,  # type: ignore[arg-type]
        pytest.raises(RuntimeError, match="cache_lifespan"),
    ):
        client.get("/tweets/1")


def test_build_and_config_together_are_refused(config: Path) -> None:
    with pytest.raises(TypeError, match="either build= or config"):
        cache_lifespan(config, build=lambda: TieredCache.from_config(config))


def test_importing_the_core_does_not_import_fastapi() -> None:
    code = "import sys, tiered_cache, tiered_cache.contrib; print('fastapi' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "False", result.stderr


# -- the asyncio chain -------------------------------------------------------------------------


def async_tweet_app(lifespan: Lifespan, released: asyncio.Event) -> tuple[FastAPI, list[str]]:
    """``async def`` routes over the app's ``AsyncTieredCache``; loads wait for ``released``."""
    app = FastAPI(lifespan=lifespan)
    loads: list[str] = []

    @app.get("/tweets/{tweet_id}")
    async def get_tweet(tweet_id: str, cache: AsyncTieredCacheDependency) -> dict[str, Any]:
        async def load() -> str:
            loads.append(tweet_id)
            await released.wait()
            return f"tweet {tweet_id}"

        return {"text": await cache.get(f"tweet:{tweet_id}", load), "chain": id(cache)}

    return app, loads


@pytest.mark.anyio
async def test_async_routes_share_one_load_and_shutdown_closes_the_async_chain(
    config: Path, admin: redis.Redis
) -> None:
    released = asyncio.Event()
    app, loads = async_tweet_app(async_cache_lifespan(config), released)
    async with app.router.lifespan_context(app):
        chain = getattr(app.state, STATE_KEY)
        assert isinstance(chain, AsyncTieredCache)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tweets") as client:
            requests = [asyncio.ensure_future(client.get("/tweets/1")) for _ in range(200)]
            for _ in range(10_000):  # bounded: until the other 199 wait for the first's load
                if chain.stats()["singleflight_waits"] == 199:
                    break
                await asyncio.sleep(0)
            released.set()
            answers = [response.json() for response in await asyncio.gather(*requests)]
        assert answers == [{"text": "tweet 1", "chain": id(chain)}] * 200
        assert loads == ["1"]
        assert admin.exists("tweets:tweet:1")
    assert chain.closed
    assert other_clients(admin) == 0  # the async tier's and the bus's connections are closed
    assert not hasattr(app.state, STATE_KEY)


def test_an_async_chain_given_to_the_sync_lifespan_is_refused_naming_the_async_one(
    config: Path,
) -> None:
    """It was taken: every route then failed ("no tiered-cache chain on this app: create it
    with ... cache_lifespan(...)", the one it was given), and the shutdown raised
    ``AttributeError: 'AsyncTieredCache' object has no attribute 'close'``."""
    app = tweet_app(cache_lifespan(build=lambda: AsyncTieredCache.from_config(config)))
    with pytest.raises(TypeError, match="async_cache_lifespan"), TestClient(app):
        pass


def test_a_sync_route_on_an_async_chain_names_the_async_dependency(config: Path) -> None:
    app = tweet_app(async_cache_lifespan(config))
    with TestClient(app) as client, pytest.raises(RuntimeError, match="AsyncTieredCacheDependency"):
        client.get("/tweets/1")


# -- one app served twice in a process ---------------------------------------------------------


def test_one_app_served_twice_at_once_keeps_a_chain_for_each_and_closes_both(
    config: Path, admin: redis.Redis
) -> None:
    """Two servers of one app object at once (two TestClients of a test suite, an app run
    twice): each lifespan built a chain, both on ``app.state``, the second over the first.
    The first shutdown took it away from the other server's routes ('no tiered-cache chain
    on this app'), and the second's raised AttributeError before closing its chain: left
    open, its connections too. Each server's routes read the chain of its own lifespan
    (the lifespan's state, which every request of that server is given)."""
    app = tweet_app(cache_lifespan(config))
    with TestClient(app) as first:
        with TestClient(app) as second:
            mine = second.get("/tweets/1").json()["chain"]
            assert first.get("/tweets/1").json()["chain"] != mine
        assert first.get("/tweets/2").status_code == 200
    assert other_clients(admin) == 0  # both chains closed
    assert not hasattr(app.state, STATE_KEY)
