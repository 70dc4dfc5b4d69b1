"""The test helpers themselves: MotoDynamoDB and instant_botocore_retries."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from tiered_cache_dynamodb import DynamoDBSourceSettings, create_table
from tiered_cache_dynamodb.testing import MotoDynamoDB, instant_botocore_retries


def test_moto_server_lifecycle_and_kwargs() -> None:
    moto = MotoDynamoDB(region="eu-central-1")
    with pytest.raises(RuntimeError, match="not running"):
        _ = moto.endpoint_url
    with moto:
        assert moto.endpoint_url.startswith("http://127.0.0.1:")
        assert not moto.endpoint_url.endswith(":0")
        settings = moto.settings(table="tbl", key="id")
        assert isinstance(settings, DynamoDBSourceSettings)
        assert settings.region == "eu-central-1"
        assert settings.endpoint_url == moto.endpoint_url
        assert moto.client_kwargs()["region_name"] == "eu-central-1"
        client = moto.client()
        create_table(client, "tbl-lifecycle", "id")
        assert "tbl-lifecycle" in client.list_tables()["TableNames"]
        client.close()
    moto.stop()  # idempotent


def test_reset_drops_every_table() -> None:
    # In a child process: moto's state is process-wide, and a reset here would drop the
    # tables of every other test's server too.
    script = textwrap.dedent(
        """
        from tiered_cache_dynamodb import create_table
        from tiered_cache_dynamodb.testing import MotoDynamoDB
        with MotoDynamoDB() as moto:
            client = moto.client()
            create_table(client, "tbl-reset", "id")
            before = client.list_tables()["TableNames"]
            moto.reset()
            print(before, client.list_tables()["TableNames"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "['tbl-reset'] []"


def test_a_missing_moto_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moto.server", None)
    with pytest.raises(RuntimeError, match=r"pip install 'tiered-cache-dynamodb\[test\]'"):
        MotoDynamoDB().start()


def test_instant_retries_restore_botocore_sleep() -> None:
    from botocore import endpoint

    original = endpoint.__dict__["time"]
    recorded: list[float] = []
    with instant_botocore_retries(recorded.append) as delays:
        endpoint.__dict__["time"].sleep(0.25)
        assert endpoint.__dict__["time"].monotonic() > 0  # everything else is the real module
    assert delays == [0.25]
    assert recorded == [0.25]
    assert endpoint.__dict__["time"] is original
