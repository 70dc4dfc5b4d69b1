"""The HTTP service through a real client (httpx) against uvicorn, moto and redis-server."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from tiered_cache_dynamodb.testing import ThrottleInjector, instant_aiobotocore_retries

from examples.tweets.embedded import Environment
from examples.tweets.tests.http import create_tweet
from tiered_cache.testing.polling import until


def _stored_text(env: Environment, tweet_id: str) -> str | None:
    """The text in DynamoDB itself, past every tier.

    Read with a client of its own: the app's client emulates a per-key read capacity of two
    reads a second, and this check must not spend (or be refused) the app's budget for the key.
    """
    client, _ = env.new_client()
    try:
        item = client.get_item(
            TableName=env.table, Key={"tweet_id": {"S": tweet_id}}, ConsistentRead=True
        ).get("Item")
    finally:
        client.close()
    return None if item is None else item["text"]["S"]


def test_tweets_create_then_get_twice_second_from_memory(http: httpx.Client) -> None:
    created = create_tweet(http, "Example tweet.")
    assert uuid.UUID(created["tweet_id"]).version == 4
    assert created["text"] == "Example tweet."
    assert created["created"].endswith("+00:00")
    before = http.get("/stats").json()
    first = http.get(f"/tweets/{created['tweet_id']}")
    second = http.get(f"/tweets/{created['tweet_id']}")
    after = http.get("/stats").json()
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == created
    assert after["source_reads"] - before["source_reads"] == 1
    assert after["tiers"]["memory"]["hits"] - before["tiers"]["memory"]["hits"] == 1


def test_tweets_unknown_id_is_404_and_bad_id_422(http: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    response = http.get(f"/tweets/{missing}")
    assert response.status_code == 404
    assert missing in response.json()["detail"]
    assert http.put(f"/tweets/{missing}", json={"text": "x"}).status_code == 404
    assert http.delete(f"/tweets/{missing}").status_code == 404
    assert http.get("/tweets/not-a-uuid").status_code == 422


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("x" * 281, "at most 280")],
)
def test_tweets_bad_text_is_422_and_nothing_is_written(
    http: httpx.Client, tweets_env: Environment, text: str, message: str
) -> None:
    tweet = create_tweet(http, "original")
    response = http.put(f"/tweets/{tweet['tweet_id']}", json={"text": text})
    assert response.status_code == 422
    assert message in response.text
    assert http.get(f"/tweets/{tweet['tweet_id']}").json()["text"] == "original"
    assert _stored_text(tweets_env, tweet["tweet_id"]) == "original"

    count = tweets_env.client.scan(TableName=tweets_env.table, Select="COUNT")["Count"]
    rejected = http.post("/tweets", json={"text": text})
    assert rejected.status_code == 422
    assert message in rejected.text
    assert tweets_env.client.scan(TableName=tweets_env.table, Select="COUNT")["Count"] == count


def test_tweets_280_characters_are_accepted(http: httpx.Client) -> None:
    assert create_tweet(http, "é" * 280)["text"] == "é" * 280


def test_tweets_update_writes_through(http: httpx.Client, tweets_env: Environment) -> None:
    tweet = create_tweet(http, "before")
    http.get(f"/tweets/{tweet['tweet_id']}")  # cached in memory and Redis
    response = http.put(f"/tweets/{tweet['tweet_id']}", json={"text": "after"})
    assert response.status_code == 200
    assert response.json() == {**tweet, "text": "after"}
    before = http.get("/stats").json()["source_reads"]
    assert http.get(f"/tweets/{tweet['tweet_id']}").json()["text"] == "after"
    assert http.get("/stats").json()["source_reads"] == before  # served by a tier
    assert _stored_text(tweets_env, tweet["tweet_id"]) == "after"


def test_tweets_delete_removes_from_table_and_tiers(
    http: httpx.Client, tweets_env: Environment
) -> None:
    tweet = create_tweet(http)
    assert http.get(f"/tweets/{tweet['tweet_id']}").status_code == 200  # now cached
    assert http.delete(f"/tweets/{tweet['tweet_id']}").status_code == 204
    assert http.get(f"/tweets/{tweet['tweet_id']}").status_code == 404
    assert _stored_text(tweets_env, tweet["tweet_id"]) is None
    assert http.delete(f"/tweets/{tweet['tweet_id']}").status_code == 404


def test_tweets_list_is_one_get_many(http: httpx.Client) -> None:
    tweets = [create_tweet(http, f"tweet {i}") for i in range(3)]
    http.get(f"/tweets/{tweets[0]['tweet_id']}")  # one of them is cached already
    missing = str(uuid.uuid4())
    ids = [t["tweet_id"] for t in tweets] + [missing]
    before = http.get("/stats").json()["cache"]
    response = http.get("/tweets", params={"ids": ",".join(ids)})
    after = http.get("/stats").json()["cache"]
    assert response.status_code == 200
    body = response.json()
    assert body["tweets"] == tweets
    assert body["missing"] == [missing]
    assert after["loads"] - before["loads"] == 1  # one BatchGetItem for the three uncached
    assert after["keys_loaded"] - before["keys_loaded"] == 3


def test_tweets_list_rejects_bad_ids(http: httpx.Client) -> None:
    assert "not tweet ids" in http.get("/tweets", params={"ids": "abc"}).text
    too_many = ",".join(str(uuid.uuid4()) for _ in range(101))
    response = http.get("/tweets", params={"ids": too_many})
    assert response.status_code == 422
    assert "at most 100" in response.text
    assert http.get("/tweets", params={"ids": ","}).status_code == 422
    assert http.get("/tweets").status_code == 422


def test_tweets_stats_report_hot_keys_and_units_saved(http: httpx.Client) -> None:
    tweet = create_tweet(http)
    for _ in range(5):
        http.get(f"/tweets/{tweet['tweet_id']}")
    stats = http.get("/stats").json()
    assert set(stats["tiers"]) == {"memory", "redis"}
    assert stats["hot_keys"]  # which keys depends on the whole module's reads
    assert all(entry["key"].startswith("tweet:") for entry in stats["hot_keys"])
    assert all(entry["reads_per_second"] > 0 for entry in stats["hot_keys"])
    assert stats["read_capacity_units_saved"] == stats["source_reads_saved"] * 0.5
    assert stats["source_reads_saved"] >= 4


def test_tweets_throttled_dynamodb_is_503(http: httpx.Client, tweets_app: Any) -> None:
    tweet = create_tweet(http)
    # The app's own capacity emulation (2 reads/s per item) is lifted for this test: the
    # throttled attempts below would drain the item's bucket, and the read after them would
    # then be throttled by the emulation rather than served.
    emulation: ThrottleInjector | None = tweets_app.state.throttle
    client = tweets_app.state.dynamodb  # the app's aiobotocore client
    if emulation is not None:
        emulation.unregister()
    injector = ThrottleInjector(rate=1.0).register_aio(client)
    try:
        with instant_aiobotocore_retries():
            response = http.get(f"/tweets/{tweet['tweet_id']}")
    finally:
        injector.unregister()
        if emulation is not None:
            emulation.register_aio(client)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "throttl" in response.json()["detail"].lower()
    assert injector.throttled >= 1
    # The key rests (a tenth of throttle_backoff at first, within the Retry-After): 503 at once, no
    # request, then read again once the rest is over.
    path = f"/tweets/{tweet['tweet_id']}"
    until(lambda: http.get(path).status_code == 200, "the tweet served after its rest")
