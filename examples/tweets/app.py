"""A small asyncio HTTP service over :class:`~examples.tweets.async_repository.AsyncTweetRepository`
(FastAPI, ``async def`` routes on an :class:`~tiered_cache.AsyncTieredCache`).

    python -m examples.tweets.app [--config FILE] [--port 8000]

Routes: ``POST /tweets``, ``GET /tweets/{id}``, ``GET /tweets?ids=a,b`` (one ``get_many``),
``PUT``/``DELETE /tweets/{id}`` (through the cache's write path) and ``GET /stats``.

Bad input is refused before anything is written: an unknown id is a 404, an id that is not a
UUID, or an empty, over-long or invalid (a lone surrogate) text, a 422 with a message saying
which. Ids are normalized once, here at the edge: any spelling of a UUID (upper case,
``urn:uuid:...``, without dashes, in braces) is read under the canonical one, so it finds the
same tweet, and the same cache key, in every route. A throttled DynamoDB
(after botocore's retries) is a 503 with ``Retry-After``; any other DynamoDB failure a 502.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from tiered_cache_dynamodb import AsyncDynamoDBSource
from tiered_cache_dynamodb.testing import ThrottleInjector

from tiered_cache import AsyncTieredCache, SourceError, SourceThrottled

from .async_repository import AsyncTweetRepository
from .repository import MAX_BATCH, MAX_LENGTH, TweetNotFound, check_text, plain

logger = logging.getLogger(__name__)

THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)


class TweetIn(BaseModel):
    """The body of ``POST /tweets`` and ``PUT /tweets/{id}``."""

    text: str = Field(description=f"The tweet, 1 to {MAX_LENGTH} characters.")

    @field_validator("text")
    @classmethod
    def _valid(cls, text: str) -> str:
        return check_text(text)


class Tweet(BaseModel):
    """A tweet as the API returns it."""

    tweet_id: str
    text: str
    created: str


class TweetList(BaseModel):
    """The answer of ``GET /tweets?ids=...``: the tweets found, in the order asked, and the rest."""

    tweets: list[Tweet]
    missing: list[str]


def _tweet(item: dict[str, Any]) -> Tweet:
    return Tweet.model_validate(plain(item))


def get_repository(request: Request) -> AsyncTweetRepository:
    """The app's repository, made by its lifespan (a FastAPI dependency)."""
    repository: AsyncTweetRepository = request.app.state.tweets
    return repository


def get_async_cache(request: Request) -> AsyncTieredCache:
    """The app's chain, made by its lifespan (a FastAPI dependency)."""
    cache: AsyncTieredCache = request.app.state.cache
    return cache


Tweets = Annotated[AsyncTweetRepository, Depends(get_repository)]
Cache = Annotated[AsyncTieredCache, Depends(get_async_cache)]


def create_app(
    build_cache: Callable[[], AsyncTieredCache],
    *,
    table: str = "tweet",
    emulated_read_rate: float | None = None,
) -> FastAPI:
    """The service. Its lifespan builds the async chain with ``build_cache`` (its DynamoDB
    source on aiobotocore), connects the source's client, closes both at shutdown, and makes
    one repository over them; routes receive the repository and the chain as dependencies.

    ``emulated_read_rate``: reads per item per second the app's DynamoDB client allows, as the
    embedded environment emulates provisioned capacity (``app.state.throttle`` holds the hook).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        cache = build_cache()
        try:
            source = cache.source
            if not isinstance(source, AsyncDynamoDBSource):
                raise TypeError("the tweet service needs the dynamodb source on aiobotocore")
            # The client is made on this loop, the one it will serve on.
            client = await source.get_client()
            app.state.cache = cache
            app.state.dynamodb = client
            app.state.throttle = (
                None
                if emulated_read_rate is None
                else ThrottleInjector(per_key_rate=emulated_read_rate).register_aio(client)
            )
            # One repository for the app's life: decorating its loader compiles a function.
            app.state.tweets = AsyncTweetRepository(cache, client, table=table)
            yield {}
        finally:
            await cache.aclose()

    app = FastAPI(
        title="tweets", summary="Tweets in DynamoDB behind a tiered cache.", lifespan=lifespan
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes each bad input, and a text holding a lone surrogate
        # cannot be encoded in it (a 500 instead of the 422): say what is wrong, not what came.
        problems = [
            {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": problems})

    @app.exception_handler(TweetNotFound)
    async def not_found(request: Request, exc: TweetNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(SourceThrottled)
    async def throttled(request: Request, exc: SourceThrottled) -> JSONResponse:
        return _throttled_response(str(exc))

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in THROTTLING_CODES:
            return _throttled_response(f"DynamoDB is throttling reads of this tweet ({code})")
        logger.error("DynamoDB request failed: %s", exc)
        return JSONResponse(status_code=502, content={"detail": f"DynamoDB failed: {code}"})

    @app.exception_handler(SourceError)
    @app.exception_handler(BotoCoreError)
    async def source_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("DynamoDB request failed: %s", exc)
        return JSONResponse(status_code=502, content={"detail": "DynamoDB is unavailable"})

    # `async def` routes on the event loop: a hit is answered without a thread, a miss awaits
    # one load per tweet however many requests miss it (on aiobotocore: no thread either).

    @app.post("/tweets", status_code=201)
    async def create_tweet(body: TweetIn, repository: Tweets) -> Tweet:
        return _tweet(await repository.create(body.text))

    @app.get("/tweets/{tweet_id}")
    async def get_tweet(tweet_id: UUID, repository: Tweets) -> Tweet:
        item = await repository.get(str(tweet_id))
        if item is None:
            raise TweetNotFound(str(tweet_id))
        return _tweet(item)

    @app.get("/tweets")
    async def get_tweets(
        ids: Annotated[str, Query(description="Comma-separated tweet ids (at most 100).")],
        repository: Tweets,
    ) -> TweetList:
        try:
            wanted = normalize_ids(ids)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        found = await repository.get_many(wanted)
        return TweetList(
            tweets=[_tweet(item) for item in found.values() if item is not None],
            missing=[tweet_id for tweet_id, item in found.items() if item is None],
        )

    @app.put("/tweets/{tweet_id}")
    async def update_tweet(tweet_id: UUID, body: TweetIn, repository: Tweets) -> Tweet:
        return _tweet(await repository.update(str(tweet_id), body.text))

    @app.delete("/tweets/{tweet_id}", status_code=204)
    async def delete_tweet(tweet_id: UUID, repository: Tweets) -> None:
        await repository.delete(str(tweet_id))

    @app.get("/stats")
    async def stats(cache: Cache) -> dict[str, Any]:
        snapshot = cache.stats()
        # The hot-key list counts reads, and a deleted tweet may still be read (404s): list
        # only the keys whose tweet the tiers hold now. lookup_many never loads.
        held = await cache.lookup_many(key for key, _ in snapshot["hot_keys"])
        return cache_report(
            snapshot, live={key for key, entry in held.items() if entry.value is not None}
        )

    return app


def cache_report(snapshot: dict[str, Any], live: set[str] | None = None) -> dict[str, Any]:
    """The parts of ``cache.stats()`` an operator looks at first, with the read capacity units
    saved as the DynamoDB source computes them from the sizes of the items it read.

    ``live``: the hot keys to keep (those of tweets that still exist); none: all of them.
    """
    if live is not None:
        hot = [(key, rate) for key, rate in snapshot["hot_keys"] if key in live]
        snapshot = {**snapshot, "hot_keys": hot}
    saved = int(snapshot.get("source_reads_saved", 0))
    source = snapshot.get("source") or {}
    return {
        "tiers": {
            tier["name"]: {key: tier[key] for key in ("hits", "misses", "fills", "errors")}
            for tier in snapshot["tiers"]
        },
        "hot_keys": [{"key": key, "reads_per_second": rate} for key, rate in snapshot["hot_keys"]],
        "source_reads": snapshot["keys_loaded"],
        "source_reads_saved": saved,
        "read_capacity_units_saved": source.get("read_units_saved", 0.0),
        "cache": snapshot,
    }


def normalize_ids(ids: str) -> list[str]:
    """The distinct canonical ids of a comma-separated list, in order; ``ValueError`` saying
    what is wrong (no id, too many, or which ones are not UUIDs)."""
    given = [part.strip() for part in ids.split(",") if part.strip()]
    if not given:
        raise ValueError("ids must name at least one tweet id")
    canonical: list[str] = []
    bad: list[str] = []
    for tweet_id in given:
        try:
            canonical.append(normalize_id(tweet_id))
        except ValueError:
            bad.append(tweet_id)
    if bad:
        raise ValueError(f"not tweet ids (UUIDs): {', '.join(bad[:5])}")
    distinct = list(dict.fromkeys(canonical))
    if len(distinct) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} ids at a time, got {len(distinct)}")
    return distinct


def normalize_id(tweet_id: str) -> str:
    """The canonical spelling of a tweet id (lower case, dashed), as the path routes get it
    from FastAPI's ``UUID`` type; ``ValueError`` if it is not a UUID."""
    return str(UUID(tweet_id))


def _throttled_response(message: str) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": message}, headers={"Retry-After": "1"})


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from .embedded import environment

    parser = argparse.ArgumentParser(description="Serve the tweet example over HTTP.")
    parser.add_argument("--config", help="TOML file with a [tiered_cache] table")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with environment(args.config) as env:
        print(env.describe())
        settings = env.settings
        app = create_app(
            lambda: AsyncTieredCache.from_settings(settings),
            table=env.table,
            emulated_read_rate=env.emulated_read_rate,
        )
        uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
