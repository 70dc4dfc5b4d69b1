"""The boto3 session and botocore config that the source and the stream follower both build."""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from pydantic import SecretStr

from tiered_cache.redaction import redact_urls_in

from .settings import RetryMode

__all__ = [
    "AwsConnection",
    "client_config",
    "client_options",
    "credentials",
    "hide_endpoint_secrets",
    "session_for",
]


class _BotocoreClient(Protocol):
    """What :func:`hide_endpoint_secrets` uses of a botocore or aiobotocore client."""

    @property
    def meta(self) -> Any: ...


Client = TypeVar("Client", bound=_BotocoreClient)


class AwsConnection(Protocol):
    """The connection fields shared by the source's and the stream follower's settings."""

    @property
    def region(self) -> str | None: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def aws_access_key_id(self) -> str | None: ...
    @property
    def aws_secret_access_key(self) -> SecretStr | None: ...
    @property
    def aws_session_token(self) -> SecretStr | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def max_attempts(self) -> int: ...


def session_for(settings: AwsConnection) -> boto3.session.Session:
    """A boto3 session of its own (boto3's default session is shared and not thread-safe to
    set up), with the settings' credentials if given, else whatever boto3 finds."""
    return boto3.session.Session(
        **credentials(settings), region_name=settings.region, profile_name=settings.profile
    )


class Credentials(TypedDict):
    """The credential arguments of boto3's ``Session`` and aiobotocore's ``create_client``."""

    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_session_token: str | None


def credentials(settings: AwsConnection) -> Credentials:
    """The settings' credentials as boto3's and aiobotocore's keyword arguments (``None``:
    whatever the client finds)."""
    secret = settings.aws_secret_access_key
    token = settings.aws_session_token
    return Credentials(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        aws_session_token=token.get_secret_value() if token else None,
    )


def client_config(settings: AwsConnection, retry_mode: RetryMode) -> Config:
    """Short timeouts (a down endpoint fails a call quickly) and botocore's retries."""
    return Config(**client_options(settings, retry_mode))


def client_options(settings: AwsConnection, retry_mode: RetryMode) -> dict[str, Any]:
    """The arguments of botocore's ``Config`` (and aiobotocore's ``AioConfig``) for
    ``settings``: the one place both clients take their timeouts and retries from."""
    return {
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "retries": {"mode": retry_mode, "total_max_attempts": settings.max_attempts},
    }


def hide_endpoint_secrets(client: Client) -> Client:
    """``client``, whose failed calls raise errors that show its endpoint without a password.

    botocore's connection errors (``EndpointConnectionError``, ``ConnectTimeoutError``,
    ``ReadTimeoutError``, ...) quote the request's URL whole in their text and keep it in their
    ``kwargs``: an ``endpoint_url`` such as ``http://user:secret@host`` showed its password in
    every error chained from them, the source's and the stream follower's messages and logs.
    botocore (and aiobotocore) emit ``after-call-error`` with the exception before raising it:
    the one place every call of every client made here goes through. A client given by the
    user is left as given.
    """
    client.meta.events.register("after-call-error", _hide_urls)
    return client


def _hide_urls(exception: BaseException, **_: Any) -> None:
    exception.args = tuple(
        redact_urls_in(arg) if isinstance(arg, str) else arg for arg in exception.args
    )
    if isinstance(exception, BotoCoreError):  # pickled and re-formatted from its kwargs
        exception.kwargs = {
            name: redact_urls_in(value) if isinstance(value, str) else value
            for name, value in exception.kwargs.items()
        }
