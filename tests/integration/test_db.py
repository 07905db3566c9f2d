"""The DB layer and job state machine on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from services.reconciler import reconcile_once
from shared.config import Settings
from shared.db.migrate import downgrade, upgrade
from shared.db.models import Artifact, Avatar, Job, WebhookDelivery, utcnow
from shared.db.session import engine_for, session_scope
from shared.jobs import JobService, StepResult
from shared.queue import configure_celery
from shared.tenants import authenticate, create_tenant, issue_key, revoke_key
from tests.fixtures.servers import postgres_database

TABLES = {
    "tenants",
    "api_keys",
    "avatars",
    "renders",
    "jobs",
    "artifacts",
    "webhook_deliveries",
    "idempotency_records",
    "uploads",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each engine."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        upgrade(url)
        yield url
    else:
        with postgres_database() as url:
            upgrade(url)
            yield url
            engine_for(url).dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings on that database with fast heartbeats."""
    return Settings(
        database_url=db_url,
        data_dir=tmp_path,
        heartbeat_interval_s=0.05,
        heartbeat_stale_s=0.3,
        enqueue_grace_s=0.0,
        max_attempts=3,
    )


class RecordingCelery(Celery):
    """A Celery app on the in-memory broker that records what was sent."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("test")
        configure_celery(settings.model_copy(update={"redis_url": ""}), self)
        self.sent: list[tuple[str, list[object]]] = []

    def send_task(self, name: str, args: object = None, **kw: object) -> None:  # type: ignore[override]
        self.sent.append((name, list(args or [])))  # type: ignore[call-overload]


def make_avatar_job(url: str, callback: str | None = "https://example.com/hook") -> tuple[str, str]:
    """A tenant with one queued avatar job; returns (tenant_id, job_id)."""
    with session_scope(url) as s:
        tenant, _ = create_tenant(s, f"t-{time.monotonic_ns()}")
        av = Avatar(
            tenant_id=tenant.id,
            renderer="meanframe",
            preset="cpu-quick",
            consent=True,
            consent_key_id="k",
            source_key="x",
            callback_url=callback,
            meta={"a": 1},
        )
        s.add(av)
        s.flush()
        job = Job(tenant_id=tenant.id, kind="avatar", resource_id=av.id)
        s.add(job)
        s.flush()
        return tenant.id, job.id


def test_migrations_apply_and_roll_back(db_url: str) -> None:
    assert set(inspect(engine_for(db_url)).get_table_names()) >= TABLES
    downgrade(db_url, "base")
    assert not TABLES & set(inspect(engine_for(db_url)).get_table_names())
    upgrade(db_url)
    assert set(inspect(engine_for(db_url)).get_table_names()) >= TABLES


def test_keys_are_stored_as_digests_and_revocable(db_url: str) -> None:
    with session_scope(db_url) as s:
        tenant, plain = create_tenant(s, "acme")
        row, second = issue_key(s, tenant.id, "ci")
        assert plain not in {k.digest for k in s.scalars(select(type(row)))}
        assert authenticate(s, plain) is not None
        assert revoke_key(s, tenant.id, row.id)
    with session_scope(db_url) as s:
        assert authenticate(s, second) is None
        assert authenticate(s, plain) is not None
        assert authenticate(s, plain + "x") is None
        assert not revoke_key(s, "tn_other", row.id)


def test_artifact_kind_is_unique_per_resource(db_url: str) -> None:
    tenant_id, _ = make_avatar_job(db_url)
    with session_scope(db_url) as s:
        s.add(
            Artifact(
                tenant_id=tenant_id, resource_id="av_1", kind="probe", key="k", size=1, sha256="0"
            )
        )
    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        s.add(
            Artifact(
                tenant_id=tenant_id, resource_id="av_1", kind="probe", key="k2", size=1, sha256="0"
            )
        )


def test_lease_is_exclusive_until_the_heartbeat_goes_stale(settings: Settings) -> None:
    _, job_id = make_avatar_job(settings.database_url)
    jobs = JobService(settings, RecordingCelery(settings))
    first = jobs.claim(job_id, 0, "w1")
    assert first is not None and first.status == "ingesting"
    assert jobs.claim(job_id, 0, "w2") is None
    assert jobs.claim(job_id, 1, "w2") is None  # a message for a step that has not come
    time.sleep(settings.heartbeat_stale_s + 0.1)
    second = jobs.claim(job_id, 0, "w2")
    assert second is not None and second.attempts == 2
    # The first holder lost the lease: its completion must not count.
    assert not jobs.complete_step(first, "w1", StepResult())
    assert jobs.complete_step(second, "w2", StepResult(progress=0.1))
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.status, job.segment, job.attempts) == (
            "preprocessing",
            1,
            0,
        )


def test_too_many_attempts_fails_the_job(settings: Settings) -> None:
    _, job_id = make_avatar_job(settings.database_url, callback=None)
    jobs = JobService(settings, RecordingCelery(settings))
    for n in range(settings.max_attempts):
        assert jobs.claim(job_id, 0, f"w{n}") is not None
        jobs.release(job_id, f"w{n}")
    assert jobs.claim(job_id, 0, "last") is None
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.status, job.error_code) == ("failed", "too_many_attempts")


def test_terminal_state_is_reached_exactly_once(settings: Settings) -> None:
    _, job_id = make_avatar_job(settings.database_url)
    celery = RecordingCelery(settings)
    jobs = JobService(settings, celery)
    barrier = threading.Barrier(6)
    wins: list[bool] = []

    def race(status: str) -> None:
        barrier.wait()
        wins.append(jobs.finish(job_id, status, error=("x", "y") if status == "failed" else None))

    threads = [
        threading.Thread(target=race, args=("ready" if i % 2 else "failed",)) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
        delivery = s.scalars(select(WebhookDelivery)).one()
        assert delivery.payload["metadata"] == {"a": 1}
    assert [name for name, _ in celery.sent] == ["talkinghead.webhook"]


def test_reconciler_requeues_lost_work(settings: Settings) -> None:
    celery = RecordingCelery(settings)
    jobs = JobService(settings, celery)
    _, never = make_avatar_job(settings.database_url)
    _, stale = make_avatar_job(settings.database_url)
    _, fresh = make_avatar_job(settings.database_url)
    assert jobs.claim(stale, 0, "dead-worker") is not None
    assert jobs.claim(fresh, 0, "live-worker") is not None
    time.sleep(settings.heartbeat_stale_s + 0.1)
    jobs.heartbeat(fresh, "live-worker")
    counts = reconcile_once(settings, celery)
    assert counts["never_enqueued"] == 1 and counts["stale_heartbeat"] == 1
    sent = {args[0] for _, args in celery.sent}
    assert sent == {never, stale}
    # A second sweep right away finds nothing new to do.
    celery.sent.clear()
    counts = reconcile_once(settings, celery)
    assert counts["never_enqueued"] == counts["stale_heartbeat"] == 0
    with session_scope(settings.database_url) as s:
        job = s.get(Job, stale)
        assert job is not None and job.lease_owner is None


def test_due_webhooks_are_requeued(settings: Settings) -> None:
    celery = RecordingCelery(settings)
    tenant_id, _ = make_avatar_job(settings.database_url)
    with session_scope(settings.database_url) as s:
        s.add(
            WebhookDelivery(
                tenant_id=tenant_id,
                resource_id="r1",
                event="avatar.ready",
                url="u",
                payload={},
                next_attempt_at=utcnow() - timedelta(seconds=1),
            )
        )
        s.add(
            WebhookDelivery(
                tenant_id=tenant_id,
                resource_id="r2",
                event="avatar.ready",
                url="u",
                payload={},
                next_attempt_at=utcnow() + timedelta(hours=1),
            )
        )
    assert reconcile_once(settings, celery)["webhook_due"] == 1
