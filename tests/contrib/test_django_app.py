"""A small Django project on the backend, driven through Django's test client: a view that
counts visits with the low-level API, and a view under Django's page cache."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

#: How often each view body ran.
RUNS = {"page": 0}


def visits(request: Any) -> Any:
    """Counts visits in the default cache (add, then incr)."""
    from django.core.cache import cache
    from django.http import JsonResponse

    cache.add("visits", 0, timeout=None)
    return JsonResponse({"visits": cache.incr("visits")})


def page(request: Any) -> Any:
    """A page Django's page cache keeps for a minute."""
    from django.http import HttpResponse

    RUNS["page"] += 1
    return HttpResponse(f"rendered {RUNS['page']} time(s)")


@pytest.fixture
def client(django_caches: Any) -> Iterator[Any]:
    from django.test import Client, override_settings
    from django.urls import path
    from django.views.decorators.cache import cache_page

    urls = ModuleType("tweets_urls")  # Django takes a URLconf module object as well as a name
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("visits/", visits),
        path("page/", cache_page(60, cache="pages")(page)),
    ]
    for alias in ("default", "pages"):
        django_caches[alias].clear()
    with override_settings(ROOT_URLCONF=urls):
        yield Client()


def test_a_view_counts_visits_in_the_cache(client: Any, django_caches: Any) -> None:
    assert [client.get("/visits/").json()["visits"] for _ in range(3)] == [1, 2, 3]
    assert django_caches["default"].get("visits") == 3


def test_the_page_cache_serves_the_second_request_from_redis(
    client: Any, django_caches: Any
) -> None:
    RUNS["page"] = 0
    first = client.get("/page/")
    second = client.get("/page/")
    assert first.content == second.content == b"rendered 1 time(s)"
    assert RUNS["page"] == 1
    stats = django_caches["pages"].chain.stats()
    assert stats["tiers"][0]["name"] == "redis"
    assert stats["tiers"][0]["hits"] >= 2  # the cached headers and the cached response


def test_the_template_fragment_cache_serves_a_fragment_from_its_own_pickle_entry(
    django_caches: Any,
) -> None:
    """Django's ``{% cache %}`` tag stores the rendered fragment, a ``SafeString``: the JSON
    codec refuses a str subclass, so with the default entry alone every page using the tag
    failed with CodecError. The tag's own entry, ``template_fragments``, takes the pickle
    codec, as docs/django.md says."""
    from django.template import Context, Engine

    django_caches["template_fragments"].clear()
    engine = Engine(libraries={"cache": "django.templatetags.cache"})
    template = engine.from_string(
        "{% load cache %}{% cache 60 sidebar %}<b>{{ n }}</b>{% endcache %}"
    )
    assert template.render(Context({"n": 1})) == "<b>1</b>"
    assert template.render(Context({"n": 2})) == "<b>1</b>"  # the fragment, from the cache
