"""The URL-hiding rule applied to messages written by others (botocore's, quoting a URL)."""

from __future__ import annotations

import pytest

from tiered_cache.redaction import redact_url, redact_urls_in


def test_every_url_in_a_message_loses_its_password_and_keeps_the_rest() -> None:
    text = (
        'Could not connect to the endpoint URL: "http://user:s3cret@127.0.0.1:8000/" '
        "(proxy https://:t0ken@proxy:3128, then redis://h:6379/0)"
    )
    assert redact_urls_in(text) == (
        'Could not connect to the endpoint URL: "http://***@127.0.0.1:8000/" '
        "(proxy https://***@proxy:3128, then redis://h:6379/0)"
    )


def test_a_message_without_a_url_is_left_as_it_is() -> None:
    text = "user:pass@host is not a URL here, and neither is a:b"
    assert redact_urls_in(text) == text


# The user of a URL is no less a secret than its password: an AWS access key id in an
# endpoint (``https://AKIA...:...@host``), a Redis ACL user, a token given alone.
USER = "AKIAUSERDONOTLEAK01"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"ftp://{USER}:pw@x", "ftp://***@x"),
        (f"redis://{USER}:pw@h:6379/0", "redis://***@h:6379/0"),
        (f"redis://{USER}@h:6379/0", "redis://***@h:6379/0"),
        (f"redis://{USER}:@h:6379/0", "redis://***@h:6379/0"),
        (f"https://{USER}:pw@dynamodb.local:8000/", "https://***@dynamodb.local:8000/"),
        (f"{USER}:pw@localhost:6379/0", "***@localhost:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_a_url_is_shown_without_its_whole_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    if "://" in url:  # in a message, a URL is found by its scheme
        assert USER not in redact_urls_in(f"cannot reach {url} now")
