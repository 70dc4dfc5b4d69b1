"""Private Redis servers for the Redis tier's tests: one server and one cluster per session.

Nothing here touches a Redis the machine may already run on 6379.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tiered_cache.testing.servers import FaultProxy, RedisCluster, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so tests sharing a server never see each other."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's server (closed after the test)."""
    with FaultProxy(redis_server.host, redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def bus_server() -> Iterator[RedisServer]:
    """A server of the test's own for the invalidation bus, which the test may kill (the bus
    down for the chain) while the session's server, the tier's, stays up."""
    with RedisServer() as private:
        yield private
