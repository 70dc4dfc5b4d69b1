"""Synthetic read workloads for benchmarks, tests and the example app (stdlib only).

Every generator is deterministic for a given ``seed``:

- :func:`zipf_keys`: keys drawn from a fixed Zipf law (rank ``r`` is read with probability
  proportional to ``1 / r ** alpha``).
- :func:`scan`: one-off keys, each read once (a batch job walking a table).
- :func:`tweet_requests`: a timeline: tweets keep arriving, each with a Zipf-distributed base
  popularity that decays with the tweet's age, and now and then a new tweet goes viral: it
  jumps to rank 1 at once and then fades.

And traces that stress what a Zipf law does not:

- :func:`loop_keys`: the same keys read in a loop (a loop slightly larger than the cache
  defeats LRU entirely).
- :func:`hot_set_under_scan`: a small hot set read throughout a long scan of one-off keys.
- :func:`shifting_zipf`: a Zipf law whose hot set changes halfway through.
- :func:`recency_biased`: each read re-references a recent key with high probability (the
  shape of a database's page references).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "TweetWorkload",
    "hot_set_under_scan",
    "loop_keys",
    "recency_biased",
    "scan",
    "shifting_zipf",
    "tweet_requests",
    "zipf_cdf",
    "zipf_keys",
]


def zipf_cdf(n_keys: int, alpha: float) -> list[float]:
    """The cumulative weights of ranks ``1..n_keys`` under a Zipf law of exponent ``alpha``."""
    if n_keys < 1:
        raise ValueError("n_keys must be at least 1")
    return list(itertools.accumulate(1.0 / (rank**alpha) for rank in range(1, n_keys + 1)))


def zipf_keys(
    n_keys: int, alpha: float, n_requests: int, seed: int = 0, *, prefix: str = "key:"
) -> Iterator[str]:
    """``n_requests`` keys ``f"{prefix}{rank}"`` (rank 0 is the most popular) from a Zipf law."""
    cdf = zipf_cdf(n_keys, alpha)
    total = cdf[-1]
    rng = random.Random(seed)
    draw = rng.random
    find = bisect.bisect_left
    names = [f"{prefix}{rank}" for rank in range(n_keys)]
    last = n_keys - 1
    for _ in range(n_requests):
        yield names[min(find(cdf, draw() * total), last)]


def scan(n_keys: int, *, start: int = 0, prefix: str = "scan:") -> Iterator[str]:
    """``n_keys`` distinct keys, each read once, in order."""
    for index in range(start, start + n_keys):
        yield f"{prefix}{index}"


def loop_keys(n_keys: int, n_requests: int, *, prefix: str = "loop:") -> Iterator[str]:
    """``n_requests`` reads of keys ``0..n_keys-1`` in order, over and over."""
    if n_keys < 1:
        raise ValueError("n_keys must be at least 1")
    for index in range(n_requests):
        yield f"{prefix}{index % n_keys}"


def hot_set_under_scan(
    n_hot: int, n_requests: int, scan_share: float = 0.5, seed: int = 0, *, alpha: float = 0.8
) -> Iterator[str]:
    """Reads of ``n_hot`` keys (a Zipf law of ``alpha``) with a share ``scan_share`` of one-off
    scan keys mixed in from start to end."""
    rng = random.Random(seed)
    hot = zipf_keys(n_hot, alpha, n_requests, seed=seed + 1, prefix="hot:")
    scanned = scan(n_requests)
    draw = rng.random
    for _ in range(n_requests):
        yield next(scanned) if draw() < scan_share else next(hot)


def shifting_zipf(
    n_keys: int, alpha: float, n_requests: int, seed: int = 0, *, shift_at: float = 0.5
) -> Iterator[str]:
    """A Zipf law over ``n_keys`` keys for the first ``shift_at`` of the reads (half by default);
    the rest follows the same law over a shuffled key space, so the hot set changes at once."""
    first = int(n_requests * shift_at)
    yield from zipf_keys(n_keys, alpha, first, seed=seed)
    names = [f"key:{rank}" for rank in range(n_keys)]
    random.Random(seed + 1).shuffle(names)
    for key in zipf_keys(n_keys, alpha, n_requests - first, seed=seed + 2):
        yield names[int(key[4:])]


def recency_biased(
    n_requests: int,
    reuse: float = 0.8,
    mean_distance: float = 300.0,
    n_keys: int = 1_000_000,
    seed: int = 0,
) -> Iterator[str]:
    """Each read re-references, with probability ``reuse``, the key read a geometric number of
    reads ago (mean ``mean_distance``); otherwise it reads a key drawn from a Zipf law of
    exponent 0.6 over ``n_keys`` keys (a long, flat tail)."""
    rng = random.Random(seed)
    draw = rng.random
    fresh = zipf_keys(n_keys, 0.6, n_requests, seed=seed + 1, prefix="page:")
    history: list[str] = []
    ratio = 1.0 - 1.0 / mean_distance
    log_ratio = math.log(ratio)
    for _ in range(n_requests):
        if history and draw() < reuse:
            distance = 1 + int(math.log(1.0 - draw()) / log_ratio)
            key = history[-min(distance, len(history))]
        else:
            key = next(fresh)
        history.append(key)
        yield key


@dataclass(frozen=True)
class TweetWorkload:
    """Parameters of :func:`tweet_requests`.

    Attributes:
        rate: reads per second (the timestamps advance by ``1 / rate``).
        tweets_per_second: new tweets per second of workload time.
        initial_tweets: tweets already posted when the workload starts (ages spread over the
            recent past), so that the popularity mix is steady from the first read.
        alpha: exponent of the Zipf law that a tweet's base popularity is drawn from.
        half_life: seconds after which an ordinary tweet is read half as much.
        viral_every: mean seconds between two viral tweets (Poisson arrivals).
        viral_boost: a viral tweet starts at this multiple of the current top tweet's share.
        viral_half_life: seconds after which a viral tweet is read half as much.
        epoch: seconds between two recomputations of the popularity table (ordinary tweets'
            decay is applied per epoch; viral tweets decay continuously).
        max_live: most tweets kept in the popularity table (the least popular are dropped).
    """

    rate: float = 1000.0
    tweets_per_second: float = 20.0
    initial_tweets: int = 20_000
    alpha: float = 1.0
    half_life: float = 600.0
    viral_every: float = 60.0
    viral_boost: float = 2.0
    viral_half_life: float = 60.0
    epoch: float = 5.0
    max_live: int = 30_000


def tweet_requests(  # noqa: PLR0915 - one generator loop reads best in one piece
    n_requests: int,
    seed: int = 0,
    workload: TweetWorkload | None = None,
    *,
    start: float = 0.0,
    prefix: str = "tweet:",
) -> Iterator[tuple[float, str]]:
    """``(timestamp, key)`` reads of a tweet timeline; see :class:`TweetWorkload`.

    A tweet ``i`` posted at ``t_i`` with base weight ``b_i = u ** -alpha`` (``u`` uniform over
    the ranks ``1..initial_tweets``) is read in proportion to ``b_i * 2 ** (-(t - t_i) /
    half_life)``. A viral tweet takes a share ``boost * top_share * 2 ** (-age /
    viral_half_life)`` of all reads, so it is the most read key the moment it appears.
    """
    w = workload or TweetWorkload()
    rng = random.Random(seed)
    draw = rng.random
    ranks = w.initial_tweets

    def base_weight() -> float:
        return float(rng.randint(1, ranks) ** -w.alpha)

    # Live ordinary tweets: id -> (posted_at, base weight).
    tweets: dict[int, tuple[float, float]] = {}
    next_id = 0
    for index in range(w.initial_tweets):
        # Spread the backlog's ages evenly over a few half-lives.
        tweets[next_id] = (start - (index / w.initial_tweets) * 4 * w.half_life, base_weight())
        next_id += 1
    virals: list[tuple[float, int, float]] = []  # (went_viral_at, id, peak share)
    next_post = start + rng.expovariate(w.tweets_per_second)
    next_viral = start + rng.expovariate(1.0 / w.viral_every)
    step = 1.0 / w.rate
    now = start
    names: list[str] = []
    cdf: list[float] = []
    top_share = 0.0
    next_epoch = now  # recompute the table before the first read

    for _ in range(n_requests):
        if now >= next_epoch:
            scored = [
                (base * 2.0 ** (-(now - posted) / w.half_life), tweet_id)
                for tweet_id, (posted, base) in tweets.items()
            ]
            if len(scored) > w.max_live:
                scored.sort(reverse=True)
                for _, dropped in scored[w.max_live :]:
                    del tweets[dropped]
                del scored[w.max_live :]
            total = sum(score for score, _ in scored)
            names = [f"{prefix}{tweet_id}" for _, tweet_id in scored]
            cdf = list(itertools.accumulate(score / total for score, _ in scored))
            top_share = max(score for score, _ in scored) / total
            # A viral tweet below a thousandth of the top share is an ordinary old tweet now.
            virals = [
                viral
                for viral in virals
                if viral[2] * 2.0 ** (-(now - viral[0]) / w.viral_half_life) > top_share / 1000
            ]
            next_epoch = now + w.epoch
        while next_post <= now:
            tweets[next_id] = (next_post, base_weight())
            next_id += 1
            next_post += rng.expovariate(w.tweets_per_second)
        if next_viral <= now:
            virals.append((now, next_id, w.viral_boost * top_share))
            next_id += 1
            next_viral = now + rng.expovariate(1.0 / w.viral_every)
        key = None
        if virals:
            pick = draw()
            for went_viral_at, tweet_id, peak in virals:
                share = peak * 2.0 ** (-(now - went_viral_at) / w.viral_half_life)
                if pick < share:
                    key = f"{prefix}{tweet_id}"
                    break
                pick -= share
        if key is None:
            index = bisect.bisect_left(cdf, draw())
            key = names[min(index, len(names) - 1)]
        yield now, key
        now += step
