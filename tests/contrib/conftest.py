"""A private Redis for the integration tests (exporters, Django), one per session, and the
chain the exporter tests read through with the known sequence of reads they run."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tiered_cache import TieredCache
from tiered_cache.testing import FakeClock
from tiered_cache.testing.servers import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def no_bus_left_listening() -> Iterator[None]:
    """A test here closes every chain it builds whose bus listens. A chain left open keeps
    its bus's listener reconnecting for the rest of the session, to a port that any server
    started later may take: the two Django tests of a bus nobody answers left theirs sending
    HELLO every two seconds to a port a moto server then took, whose request log (werkzeug's
    "Bad request syntax ('*2')") landed in a Redis test that asserted an empty log."""
    before = set(threading.enumerate())
    yield
    left = [
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith("tiered-cache-bus:") and thread not in before
    ]
    assert left == [], "a chain of this test was left open, its bus still listening"


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so tests sharing the server never see each other."""
    return f"m-{uuid.uuid4().hex[:12]}"


def memory_and_redis(server: RedisServer, namespace: str, clock: FakeClock) -> TieredCache:
    """Memory (plain LRU: every key admitted, so the counts do not depend on hotness) over a
    real Redis, no bus, on the fake clock (which also times the loads)."""
    return TieredCache.from_config(
        namespace=namespace,
        tiers=[
            {"kind": "memory", "admission": "always"},
            {"kind": "redis", "url": server.url, "timeout": "2s"},
        ],
        bus={"kind": "off"},
        clock=clock,
    )


def known_reads(cache: TieredCache, clock: FakeClock) -> None:
    """Two loads (3 ms and 200 ms on the fake clock), two memory hits, one Redis hit.

    memory: misses a, b, b (after its memory copy is dropped); hits a, a; fills a, b, b.
    redis:  misses a, b; hits b; fills a, b.   loads: a, b.
    """

    def slow(value: str, seconds: float) -> str:
        clock.advance(seconds)
        return value

    assert cache.get("a", lambda: slow("A", 0.003)) == "A"
    assert cache.get("a") == "A"
    assert cache.get("a") == "A"
    assert cache.get("b", lambda: slow("B", 0.2)) == "B"
    cache.tiers[0].delete("b")  # only memory forgets b: the next read is a Redis hit
    assert cache.get("b") == "B"


@pytest.fixture
def cache(redis_server: RedisServer, namespace: str, clock: FakeClock) -> Iterator[TieredCache]:
    with memory_and_redis(redis_server, namespace, clock) as cache:
        yield cache


@pytest.fixture
def run_known_reads(cache: TieredCache, clock: FakeClock) -> Callable[[], None]:
    """Runs :func:`known_reads` on the ``cache`` fixture."""
    return lambda: known_reads(cache, clock)


# -- Django ------------------------------------------------------------------------------------

#: The clock of the Django caches' chain: expiry tests advance it instead of sleeping.
DJANGO_CLOCK = FakeClock()


def custom_key_func(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION (Django's own tests use this one)."""
    return "CUSTOM-" + "-".join([key_prefix, str(version), key])


@pytest.fixture(scope="session")
def django_caches(redis_server: RedisServer) -> Iterator[Any]:
    """Django configured once per session: four CACHES entries over one chain (memory and the
    private Redis, no tier TTL so that ``timeout=None`` means what Django says): ``default``,
    ``prefix`` (KEY_PREFIX), ``v2`` (VERSION 2) and ``custom_key`` (KEY_FUNCTION); and
    ``pages`` and ``template_fragments``, Redis alone with the pickle codec, for Django's page
    cache and its ``{% cache %}`` tag."""
    import django
    from django.conf import settings
    from django.core.cache import caches

    if not settings.configured:
        options = {
            "SETTINGS": {
                "namespace": f"dj-{uuid.uuid4().hex[:12]}",
                "tiers": [
                    {"kind": "memory", "admission": "always", "ttl": None},
                    {"kind": "redis", "url": redis_server.url, "timeout": "2s", "ttl": None},
                ],
                "bus": {"kind": "off"},
            },
            "CLOCK": DJANGO_CLOCK,
        }
        # Django's page cache stores HttpResponse objects: only pickle holds them.
        pages = {
            "SETTINGS": {
                **options["SETTINGS"],
                "namespace": f"djp-{uuid.uuid4().hex[:12]}",
                "tiers": [
                    {"kind": "redis", "url": redis_server.url, "timeout": "2s", "codec": "pickle"}
                ],
            }
        }
        # The {% cache %} tag stores SafeString fragments, which the JSON codec refuses.
        fragments = {"SETTINGS": {**pages["SETTINGS"], "namespace": f"djf-{uuid.uuid4().hex[:12]}"}}
        backend = "tiered_cache.contrib.django.TieredCacheBackend"
        settings.configure(
            SECRET_KEY="tests-only",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            USE_TZ=True,
            CACHES={
                "default": {"BACKEND": backend, "OPTIONS": options},
                "prefix": {"BACKEND": backend, "OPTIONS": options, "KEY_PREFIX": "cacheprefix"},
                "v2": {"BACKEND": backend, "OPTIONS": options, "VERSION": 2},
                "pages": {"BACKEND": backend, "OPTIONS": pages},
                "template_fragments": {"BACKEND": backend, "OPTIONS": fragments},
                "custom_key": {
                    "BACKEND": backend,
                    "OPTIONS": options,
                    "KEY_FUNCTION": custom_key_func,
                },
            },
        )
        django.setup()
    yield caches
    from tiered_cache.contrib.django import close_chains

    close_chains()


@pytest.fixture
def django_clock(django_caches: Any) -> FakeClock:
    """The clock of the Django caches' chain."""
    return DJANGO_CLOCK
