"""The URL-hiding rule applied to messages written by others (botocore's, quoting a URL)."""

from __future__ import annotations

from tiered_cache.redaction import redact_urls_in


def test_every_url_in_a_message_loses_its_password_and_keeps_the_rest() -> None:
    text = (
        'Could not connect to the endpoint URL: "http://user:s3cret@127.0.0.1:8000/" '
        "(proxy https://:t0ken@proxy:3128, then redis://h:6379/0)"
    )
    assert redact_urls_in(text) == (
        'Could not connect to the endpoint URL: "http://user:***@127.0.0.1:8000/" '
        "(proxy https://:***@proxy:3128, then redis://h:6379/0)"
    )


def test_a_message_without_a_url_is_left_as_it_is() -> None:
    text = "user:pass@host is not a URL here, and neither is a:b"
    assert redact_urls_in(text) == text
