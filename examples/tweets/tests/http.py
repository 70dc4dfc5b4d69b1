"""A helper the HTTP tests of the tweet service share (the ``http`` fixture is in conftest)."""

from __future__ import annotations

import httpx


def create_tweet(http: httpx.Client, text: str = "hello") -> dict[str, str]:
    """POST a tweet and return it; the status must be 201."""
    response = http.post("/tweets", json={"text": text})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body
