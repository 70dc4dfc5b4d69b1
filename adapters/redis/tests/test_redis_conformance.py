"""The shared tier conformance suite, against a private redis-server and a 3-master cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tiered_cache_redis import RedisTier, make_client

from tiered_cache.testing.clock import FakeClock
from tiered_cache.testing.conformance import TierConformance
from tiered_cache.testing.servers import RedisCluster, RedisServer


class TestRedisTierConformance(TierConformance):
    @pytest.fixture
    def tier(
        self, clock: FakeClock, redis_server: RedisServer, namespace: str
    ) -> Iterator[RedisTier]:
        tier = RedisTier(
            make_client(redis_server.url, timeout=2.0), namespace=namespace, clock=clock
        )
        yield tier
        tier.clear()
        tier.close()


class TestRedisClusterTierConformance(TierConformance):
    @pytest.fixture
    def tier(
        self, clock: FakeClock, redis_cluster: RedisCluster, namespace: str
    ) -> Iterator[RedisTier]:
        tier = RedisTier(
            make_client(redis_cluster.url, timeout=2.0), namespace=namespace, clock=clock
        )
        assert tier.is_cluster
        yield tier
        tier.clear()
        tier.close()
