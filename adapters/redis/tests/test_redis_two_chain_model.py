"""A Hypothesis state machine over two chains that share a real Redis, one source and a bus.

Each chain stands for a process: its own memory tier, the shared Redis tier (a private
redis-server), the same source, and a bus between them that the machine can make lose the next
message, or disconnect from one chain and reconnect. Whatever the interleaving of reads, writes,
invalidations, writes that bypass the cache, clock advances, background refreshes and bus
faults:

- every read returns a value the source held within ``TTL + MAX_STALE`` (the staleness bound:
  fresh for TTL, then stale for at most MAX_STALE);
- after a write or an invalidation whose announcement was not lost, and with no bypassing
  write since, both chains read exactly the source's current value.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule
from tiered_cache_redis import RedisTier

from tiered_cache import MemoryTier, TieredCache
from tiered_cache.bus import BusListener, Invalidation, LocalBus
from tiered_cache.protection import Protection
from tiered_cache.testing import FakeClock
from tiered_cache.testing.chain_model import SourceModel
from tiered_cache.testing.servers import RedisServer

TTL = 50.0
MAX_STALE = 20.0
BOUND = TTL + MAX_STALE
KEYS = st.sampled_from(["k0", "k1", "k2", "k3"])
VALUES = st.integers(min_value=0, max_value=99)
CHAINS = st.sampled_from(["a", "b"])

_server: list[RedisServer] = []


@pytest.fixture(scope="module", autouse=True)
def redis_for_the_machine() -> Iterator[None]:
    with RedisServer() as server:
        _server.append(server)
        yield
        _server.clear()


class FaultyBus(LocalBus):
    """A LocalBus with faults injected: lose the next message, or cut one subscriber off."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_next = False
        self.lost_keys: set[str] = set()
        self.cut: set[int] = set()

    def publish(self, message: Invalidation) -> None:
        if self.lose_next:
            self.lose_next = False
            self.lost_keys.update(message.keys)
            return
        with self._lock:
            listeners = list(enumerate(self._listeners))
        for index, listener in listeners:
            if index not in self.cut:
                listener.on_message(message)

    def listener(self, index: int) -> BusListener:
        return self._listeners[index]


class TwoChains(SourceModel):
    def __init__(self) -> None:
        super().__init__(FakeClock(start=2_000_000.0), BOUND)
        self.bus = FaultyBus()
        self.client = redis.Redis.from_url(_server[0].url)
        namespace = f"m-{uuid.uuid4().hex[:10]}"
        self.chains = {name: self.make_chain(namespace) for name in ("a", "b")}
        self.index = {"a": 0, "b": 1}

    def make_chain(self, namespace: str) -> TieredCache:
        return TieredCache(
            [
                MemoryTier(name="memory", ttl=10, clock=self.clock),
                RedisTier(
                    self.client, namespace=namespace, ttl=100, clock=self.clock, owns_client=False
                ),
            ],
            self.source,
            ttl=TTL,
            negative_ttl=5.0,
            clock=self.clock,
            protection=Protection(max_stale=MAX_STALE, early_refresh_beta=0, soft_timeout=None),
            background=self.pending.append,
            bus=self.bus,
            # The model holds a cut chain to the current value: memory bypassed, no staleness
            # allowed (the bounded mode is tested in tests/test_coherence.py).
            max_stale_when_disconnected=0,
        )

    def teardown(self) -> None:
        for chain in self.chains.values():
            chain.close()
        self.client.close()

    def announced(self, key: str) -> bool:
        lost = key in self.bus.lost_keys
        self.bus.lost_keys.discard(key)
        return not lost

    @rule(chain=CHAINS, key=KEYS)
    def get(self, chain: str, key: str) -> None:
        self.check(key, self.chains[chain].get(key))

    @rule(chain=CHAINS, keys=st.lists(KEYS, max_size=4))
    def get_many(self, chain: str, keys: list[str]) -> None:
        for key, value in self.chains[chain].get_many(keys).items():
            self.check(key, value)

    @rule(chain=CHAINS, key=KEYS, value=VALUES)
    def set(self, chain: str, key: str, value: int) -> None:
        self.chains[chain].set(key, value)
        if self.announced(key):
            self.exact.add(key)
        else:
            self.exact.discard(key)

    @rule(chain=CHAINS, key=KEYS)
    def invalidate(self, chain: str, key: str) -> None:
        self.chains[chain].invalidate(key)
        if self.announced(key):
            self.exact.add(key)
        else:
            self.exact.discard(key)

    @rule(key=KEYS, value=VALUES)
    def write_bypassing_the_cache(self, key: str, value: int) -> None:
        self.source.write(key, value)
        self.exact.discard(key)

    @rule(seconds=st.floats(min_value=0.0, max_value=40.0))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def lose_the_next_message(self) -> None:
        self.bus.lose_next = True

    @rule(chain=CHAINS)
    def bus_disconnects(self, chain: str) -> None:
        index = self.index[chain]
        if index not in self.bus.cut:
            self.bus.cut.add(index)
            self.bus.listener(index).on_disconnect()

    @rule(chain=CHAINS)
    def bus_reconnects(self, chain: str) -> None:
        index = self.index[chain]
        if index in self.bus.cut:
            self.bus.cut.discard(index)
            self.bus.listener(index).on_reconnect()

    @invariant()
    def bypassed_memory_while_cut(self) -> None:
        for name, chain in self.chains.items():
            expected = "down" if self.index[name] in self.bus.cut else "connected"
            assert chain.stats()["bus"] == expected


TestTwoChains = TwoChains.TestCase
TestTwoChains.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
