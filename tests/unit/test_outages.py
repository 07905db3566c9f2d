"""Telling an outage from a bug, and riding through one within a budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import sqlalchemy.exc
from botocore.exceptions import ClientError, EndpointConnectionError
from fastapi.testclient import TestClient

from services.api.app import create_app
from shared.config import Settings
from shared.outages import ServiceUnavailable, outage_of, retry_through_outage
from tests.fixtures.servers import free_port


def _wrapped(inner: Exception) -> RuntimeError:
    """An error raised while handling `inner`, as boto3's upload wrapper does."""
    try:
        raise inner
    except Exception:
        try:
            raise RuntimeError("upload failed")  # the implicit __context__ is the point
        except RuntimeError as outer:
            return outer


def test_each_service_outage_is_recognised_and_bugs_are_not() -> None:
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert outage_of(refused) == "database"
    assert outage_of(redis.exceptions.ConnectionError("refused")) == "broker"
    assert outage_of(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) == "storage"
    assert outage_of(_wrapped(EndpointConnectionError(endpoint_url="http://x"))) == "storage"
    busy = ClientError({"ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")  # type: ignore[typeddict-item]
    assert outage_of(busy) == "storage"
    denied = ClientError({"ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")  # type: ignore[typeddict-item]
    assert outage_of(denied) is None
    assert outage_of(ValueError("a bug")) is None


def test_a_short_outage_is_ridden_through() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("refused")
        return "ok"

    assert retry_through_outage(flaky, budget_s=5, backoff_s=0.01) == "ok"
    assert len(calls) == 3


def test_an_outage_past_the_budget_names_the_service() -> None:
    def down() -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(ServiceUnavailable) as caught:
        retry_through_outage(down, budget_s=0.05, backoff_s=0.01)
    assert caught.value.code == "storage_unavailable"


def test_bugs_and_other_services_are_not_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        retry_through_outage(broken, budget_s=5, backoff_s=0.01)
    assert calls == [1]

    def broker_down() -> None:
        calls.append(1)
        raise redis.exceptions.ConnectionError("refused")

    with pytest.raises(redis.exceptions.ConnectionError):
        retry_through_outage(broker_down, budget_s=5, backoff_s=0.01, only=frozenset({"storage"}))
    assert calls == [1, 1]


def test_the_api_answers_503_with_the_service_while_the_database_is_away(tmp_path: Path) -> None:
    """An unreachable database is a 503 `database_unavailable` with Retry-After, never a 500."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
        redis_url="",
        storage_backend="local",
        public_base_url="http://testserver",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/v1/avatars", headers={"Authorization": "Bearer th_some_key"})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) > 0
