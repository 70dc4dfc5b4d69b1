"""The boto3 session and botocore config that the source and the stream follower both build."""

from __future__ import annotations

from typing import Any, Protocol, TypedDict

import boto3
from botocore.config import Config
from pydantic import SecretStr

from .settings import RetryMode

__all__ = ["AwsConnection", "client_config", "client_options", "credentials", "session_for"]


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
