"""Fixtures of the tweet example's tests: a real moto server and a private redis-server.

Both listen on free loopback ports and are stopped after the module; nothing here touches a
Redis the machine may run on 6379.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# `python -m pytest` puts the repository root on sys.path, a bare `pytest` does not (and the
# import mode is importlib): the tests import the example as `examples.tweets`.
ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from examples.tweets.embedded import Environment, environment  # noqa: E402
from tiered_cache.testing.servers import RedisServer, redis_server_binary  # noqa: E402

needs_redis = pytest.mark.skipif(
    redis_server_binary() is None, reason="redis-server is not installed"
)


@pytest.fixture(scope="module")
def tweets_env() -> Iterator[Environment]:
    """The example's chain over its own moto server and its own redis-server."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server, environment(redis_url=server.url) as env:
        yield env


@pytest.fixture(scope="module")
def tweets_app(tweets_env: Environment) -> Any:
    """The HTTP app over the environment's settings (the same Redis and table); its lifespan
    builds the async chain, with the environment's capacity emulation on the app's DynamoDB
    client (``app.state.throttle``), and closes it when the server stops."""
    from examples.tweets.app import create_app
    from tiered_cache import AsyncTieredCache

    settings = tweets_env.settings
    return create_app(
        lambda: AsyncTieredCache.from_settings(settings),
        emulated_read_rate=tweets_env.emulated_read_rate,
    )


@pytest.fixture(scope="module")
def base_url(tweets_app: Any) -> Iterator[str]:
    """The HTTP app served by uvicorn on a free loopback port, in a thread."""
    import uvicorn

    app = tweets_app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    """A client on the app that the module's ``base_url`` serves."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client
