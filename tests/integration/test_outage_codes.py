"""An outage that outlasts its retry budget in a step fails the job with the service's code."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.exceptions
from botocore.exceptions import EndpointConnectionError
from sqlalchemy import update

from services.runner import JobContext, run_step
from shared.config import Settings
from shared.db.migrate import upgrade
from shared.db.models import Job
from shared.db.session import engine_for, session_scope
from shared.jobs import StepResult
from shared.outages import ServiceUnavailable
from shared.queue import configure_celery
from tests.fixtures.servers import redis_server
from tests.integration.test_db import make_avatar_job

BUDGET_S = 0.5
BACKOFF_S = 0.05
MAX_ATTEMPTS = 3
TASK = "talkinghead.ingest"
OWNER = "test-host:1:outage"


@dataclass
class Harness:
    """Settings on a migrated SQLite database, and the Redis its Celery messages go to."""

    settings: Settings
    broker: redis.Redis

    def messages(self) -> list[str]:
        """The queues holding messages (Celery's Redis transport keeps each in a list)."""
        return [str(k) for k in self.broker.keys("*") if self.broker.type(k) == b"list"]


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A Redis of this module's own: nothing else consumes or sends there."""
    with redis_server() as url:
        yield url


@pytest.fixture
def harness(tmp_path: Path, broker_url: str) -> Iterator[Harness]:
    """A fresh database, an empty broker and a short outage budget."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=url,
        redis_url=broker_url,
        storage_backend="local",
        outage_retry_s=BUDGET_S,
        outage_backoff_s=BACKOFF_S,
        max_attempts=MAX_ATTEMPTS,
    )
    configure_celery(settings)
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    yield Harness(settings, client)
    client.close()
    engine_for(url).dispose()


def queued_job(settings: Settings, attempts: int = 0) -> str:
    """A tenant's queued avatar job (no callback) with `attempts` already spent."""
    _, job_id = make_avatar_job(settings.database_url, callback=None)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(attempts=attempts))
    return job_id


def job_row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def assert_failed(h: Harness, job_id: str, code: str, attempts: int = 1) -> Job:
    """The job is terminal `failed` with `code`, its lease given back, and nothing re-sent."""
    job = job_row(h.settings, job_id)
    assert (job.status, job.stage, job.error_code) == ("failed", "failed", code)
    assert job.error_message
    assert job.lease_owner is None
    assert job.finished_at is not None
    assert job.segment == 1  # the step was closed, so a late redelivery cannot claim it
    assert job.attempts == attempts
    assert h.messages() == []  # a failed job sends neither a retry nor a webhook (none set)
    return job


def test_a_broker_outage_past_the_budget_fails_the_job_broker_unavailable(
    harness: Harness,
) -> None:
    job_id = queued_job(harness.settings)
    calls: list[float] = []

    def body(ctx: JobContext) -> StepResult:
        calls.append(time.monotonic())
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1")

    started = time.monotonic()
    outcome = run_step(body, TASK, job_id, 0, OWNER, harness.settings)
    elapsed = time.monotonic() - started

    assert outcome == "failed"
    job = assert_failed(harness, job_id, "broker_unavailable")
    assert "broker" in (job.error_message or "")
    # The step was rerun with backoff (not in a hot loop) until the budget was spent, then
    # given up on: the job fails in a bounded time instead of waiting forever.
    assert len(calls) > 1
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert min(gaps) >= BACKOFF_S * 0.9, gaps
    assert BUDGET_S <= elapsed < 10, elapsed


def test_a_storage_outage_past_the_stores_budget_fails_the_job_storage_unavailable(
    harness: Harness,
) -> None:
    # The store retries S3 calls itself (TH_STORAGE_RETRY_S) and raises ServiceUnavailable
    # once its budget is spent; the step must not retry that again, but record its code.
    job_id = queued_job(harness.settings)
    calls: list[int] = []

    def body(ctx: JobContext) -> StepResult:
        calls.append(1)
        down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        raise ServiceUnavailable("storage", 1.0, down) from down

    outcome = run_step(body, TASK, job_id, 0, OWNER, harness.settings)

    assert outcome == "failed"
    job = assert_failed(harness, job_id, "storage_unavailable")
    assert "127.0.0.1:1" in (job.error_message or "")
    assert calls == [1]


def test_a_bug_on_the_last_attempt_is_an_internal_error_not_an_outage(harness: Harness) -> None:
    job_id = queued_job(harness.settings, attempts=MAX_ATTEMPTS - 1)
    calls: list[int] = []

    def body(ctx: JobContext) -> StepResult:
        calls.append(1)
        raise ValueError("a plain bug")

    outcome = run_step(body, TASK, job_id, 0, OWNER, harness.settings)

    assert outcome == "failed"
    job = assert_failed(harness, job_id, "internal_error", attempts=MAX_ATTEMPTS)
    assert job.error_message == "ValueError: a plain bug"
    assert calls == [1]  # a bug is not ridden through like an outage
