"""The tweet app at its edges: ids normalized once, bad text refused, deleted tweets not hot.

Real parts: uvicorn serving the app, moto, a private redis-server (see conftest.py)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from examples.tweets.tests.http import create_tweet


def _spellings(tweet_id: str) -> list[str]:
    return [
        tweet_id.upper(),
        f"urn:uuid:{tweet_id}",
        tweet_id.replace("-", ""),
        f"{{{tweet_id}}}",
    ]


def test_every_spelling_of_an_id_finds_the_tweet_in_both_routes(http: httpx.Client) -> None:
    tweet = create_tweet(http, "spelled")
    canonical = tweet["tweet_id"]
    for spelling in _spellings(canonical):
        single = http.get(f"/tweets/{spelling}")
        assert single.status_code == 200, (spelling, single.text)
        assert single.json() == tweet
        listed = http.get("/tweets", params={"ids": spelling})
        assert listed.status_code == 200, (spelling, listed.text)
        assert listed.json() == {"tweets": [tweet], "missing": []}, spelling
    # Several spellings of one id are one tweet, and a missing id is reported canonically.
    missing = uuid.uuid4()
    both = http.get(
        "/tweets", params={"ids": ",".join([*_spellings(canonical), missing.hex.upper()])}
    )
    assert both.json() == {"tweets": [tweet], "missing": [str(missing)]}


# The text as JSON: a lone surrogate travels as an escape (httpx cannot encode the str itself).
@pytest.mark.parametrize("json_text", ['"\\ud83d"', '"ok \\udc00 not ok"'])
def test_a_text_with_a_lone_surrogate_is_422_on_create_and_update(
    http: httpx.Client, json_text: str
) -> None:
    body = '{"text": ' + json_text + "}"
    headers = {"content-type": "application/json"}
    created = http.post("/tweets", content=body, headers=headers)
    assert created.status_code == 422, created.text
    assert "surrogate" in created.text
    tweet = create_tweet(http, "before")
    updated = http.put(f"/tweets/{tweet['tweet_id']}", content=body, headers=headers)
    assert updated.status_code == 422, updated.text
    assert http.get(f"/tweets/{tweet['tweet_id']}").json()["text"] == "before"


def test_stats_does_not_list_deleted_tweets_among_the_hot_keys(http: httpx.Client) -> None:
    kept, deleted = create_tweet(http, "kept"), create_tweet(http, "deleted")
    for _ in range(20):
        for tweet in (kept, deleted):
            assert http.get(f"/tweets/{tweet['tweet_id']}").status_code == 200
    # The memory tier hands its buffered hits to the hot-key list at its next miss.
    assert http.get(f"/tweets/{uuid.uuid4()}").status_code == 404
    hot = {entry["key"] for entry in http.get("/stats").json()["hot_keys"]}
    assert {f"tweet:{kept['tweet_id']}", f"tweet:{deleted['tweet_id']}"} <= hot
    assert http.delete(f"/tweets/{deleted['tweet_id']}").status_code == 204
    for _ in range(5):  # readers keep asking for it: 404s, cached as "not found"
        assert http.get(f"/tweets/{deleted['tweet_id']}").status_code == 404
    assert http.get(f"/tweets/{uuid.uuid4()}").status_code == 404
    hot = {entry["key"] for entry in http.get("/stats").json()["hot_keys"]}
    assert f"tweet:{kept['tweet_id']}" in hot
    assert f"tweet:{deleted['tweet_id']}" not in hot
