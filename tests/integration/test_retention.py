"""Retention on PostgreSQL and a real S3 server: old renders and uploads go, fresh ones stay."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from services.api.app import create_app
from services.reconciler import run_forever
from services.retention import RetentionSchedule, SweepCounts, sweep_expired
from shared.config import Settings
from shared.db.models import Base, Job, Render, Upload, utcnow
from shared.db.session import engine_for, session_scope
from shared.outages import ServiceUnavailable
from shared.storage import ObjectStore, build_store
from tests.fixtures.seaweed import S3Server
from tests.fixtures.servers import free_port, wait_for
from tests.fixtures.tenant_data import DAY, Seeder, TenantData, migrated_postgres, s3_settings

RETENTION = {"render_retention_s": 30 * 86400, "upload_retention_s": 7 * 86400}


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One migrated database for the module; each test empties it first."""
    with migrated_postgres() as url:
        yield url


@pytest.fixture
def settings(pg_url: str, s3_server: S3Server, tmp_path: Path) -> Settings:
    """Settings with 30-day renders and 7-day uploads, on an empty database and a new bucket."""
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine_for(pg_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    return s3_settings(pg_url, s3_server, data_dir=tmp_path, **RETENTION)


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    """The settings' bucket."""
    return build_store(settings)


def tenant(seed: Seeder) -> TenantData:
    return seed.tenant(f"acme-{uuid.uuid4().hex[:8]}")


def render_keys(data: TenantData, render_id: str) -> set[str]:
    return {k for k in data.objects if f"/renders/{render_id}/" in k}


def job_of(settings: Settings, resource_id: str) -> Job:
    with session_scope(settings.database_url) as s:
        job = s.scalars(select(Job).where(Job.resource_id == resource_id)).one()
        s.expunge(job)
        return job


def render_row(settings: Settings, render_id: str) -> Render:
    with session_scope(settings.database_url) as s:
        row = s.get(Render, render_id)
        assert row is not None
        s.expunge(row)
        return row


def finish_job(settings: Settings, resource_id: str, when: datetime) -> None:
    with session_scope(settings.database_url) as s:
        s.execute(
            update(Job)
            .where(Job.resource_id == resource_id)
            .values(status="done", stage="done", finished_at=when)
        )


def test_a_sweep_removes_expired_objects_and_keeps_fresh_ones(
    settings: Settings, store: ObjectStore
) -> None:
    now = utcnow()
    seed = Seeder(settings, store, now)
    t = tenant(seed)
    avatar = seed.avatar(t)
    audio_upload = seed.upload(t, "audio", created_ago=32 * DAY, consumed=True)
    audio_key = seed.upload_key(t, audio_upload)
    old = seed.render(t, avatar, finished_ago=31 * DAY, audio_key=audio_key)
    old_failed = seed.render(t, avatar, status="failed", finished_ago=31 * DAY)
    fresh = seed.render(t, avatar, finished_ago=29 * DAY)
    background = seed.upload(t, "image", created_ago=8 * DAY)
    running = seed.render(t, avatar, status="rendering", background_upload=background)
    abandoned = seed.upload(t, "video", created_ago=8 * DAY)
    recent = seed.upload(t, "video", created_ago=6 * DAY)
    before = set(store.list(""))
    assert before == set(t.objects)

    counts = sweep_expired(settings, store, now=now)

    assert counts == SweepCounts(renders=2, uploads=1, backlog=False)
    removed = render_keys(t, old) | {audio_key} | render_keys(t, old_failed)
    removed.add(seed.upload_key(t, abandoned))
    assert set(store.list("")) == before - removed
    assert seed.upload_key(t, recent) in before - removed  # kept: not old enough
    assert seed.upload_key(t, background) in before - removed  # kept: a running render uses it
    for render_id, status in ((old, "done"), (old_failed, "failed")):
        job = job_of(settings, render_id)
        assert (job.status, job.stage) == (status, "expired")
        assert render_row(settings, render_id).video_key is None
    assert job_of(settings, fresh).stage == "done"
    assert render_row(settings, fresh).video_key is not None
    with session_scope(settings.database_url) as s:
        uploads = set(s.scalars(select(Upload.id)))
    assert uploads == {audio_upload, background, recent}
    assert sweep_expired(settings, store, now=now) == SweepCounts()

    # once the render that used it finished, the background image goes too
    finish_job(settings, running, now)
    assert sweep_expired(settings, store, now=now) == SweepCounts(renders=0, uploads=1)
    assert seed.upload_key(t, background) not in store.list("")


def test_the_next_sweep_finishes_what_a_crashed_sweep_left(
    settings: Settings, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    seed = Seeder(settings, store, now)
    t = tenant(seed)
    avatar = seed.avatar(t)
    renders = [seed.render(t, avatar, finished_ago=31 * DAY) for _ in range(2)]
    real_delete_prefix = store.delete_prefix
    calls: list[str] = []

    def crash_on_second(prefix: str) -> int:
        calls.append(prefix)
        if len(calls) == 2:
            raise ConnectionError("the store went away")
        return real_delete_prefix(prefix)

    monkeypatch.setattr(store, "delete_prefix", crash_on_second)
    with pytest.raises(ConnectionError):
        sweep_expired(settings, store, now=now)
    monkeypatch.undo()

    stages = {r: job_of(settings, r).stage for r in renders}
    assert sorted(stages.values()) == ["expired", "expiring"]
    half_done = next(r for r, stage in stages.items() if stage == "expiring")
    # marked before anything was removed: its video is still there but no longer served
    assert render_keys(t, half_done) <= set(store.list(""))
    assert render_row(settings, half_done).video_key is not None

    # even with retention switched off meanwhile, a sweep finishes a marked render
    off = settings.model_copy(update={"render_retention_s": 0})
    assert sweep_expired(off, store, now=now).renders == 1
    assert job_of(settings, half_done).stage == "expired"
    assert not render_keys(t, half_done) & set(store.list(""))


def test_the_api_answers_410_for_an_expired_video(settings: Settings, store: ObjectStore) -> None:
    now = utcnow()
    seed = Seeder(settings, store, now)
    t = tenant(seed)
    other = tenant(seed)
    avatar = seed.avatar(t)
    old = seed.render(t, avatar, finished_ago=31 * DAY)
    fresh = seed.render(t, avatar, finished_ago=DAY)
    assert sweep_expired(settings, store, now=now).renders == 1
    auth = {"Authorization": f"Bearer {t.key}"}

    with TestClient(create_app(settings)) as client:
        for query in ("", "?redirect=true"):
            gone = client.get(f"/v1/renders/{old}/video{query}", headers=auth)
            assert gone.status_code == 410, gone.text
            assert gone.headers["content-type"].startswith("application/problem+json")
            assert gone.json()["code"] == "render_expired"
            assert gone.json()["status"] == 410
        view = client.get(f"/v1/renders/{old}", headers=auth).json()
        assert (view["status"], view["stage"], view["video_url"]) == ("done", "expired", None)
        video = client.get(f"/v1/renders/{fresh}/video", headers=auth)
        assert video.status_code == 200 and video.content == b"\x00" * 2048
        # another tenant still cannot tell the render exists
        hidden = client.get(
            f"/v1/renders/{old}/video", headers={"Authorization": f"Bearer {other.key}"}
        )
        assert hidden.status_code == 404


def test_the_schedule_sweeps_once_per_interval(settings: Settings) -> None:
    clock = [1000.0]
    every_minute = settings.model_copy(update={"retention_interval_s": 60.0})
    schedule = RetentionSchedule(every_minute, clock=lambda: clock[0])
    assert schedule.run_if_due() == SweepCounts()
    clock[0] += 59.0
    assert schedule.run_if_due() is None
    clock[0] += 1.0
    assert schedule.run_if_due() == SweepCounts()


def test_the_reconciler_runs_the_sweep(settings: Settings, store: ObjectStore) -> None:
    seed = Seeder(settings, store, utcnow())
    t = tenant(seed)
    old = seed.render(t, seed.avatar(t), finished_ago=31 * DAY)
    quick = settings.model_copy(update={"reconcile_interval_s": 0.05})
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(quick, stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: job_of(settings, old).stage == "expired", 20, "the reconciler's sweep")
    finally:
        stop.set()
        thread.join(10)
    assert not render_keys(t, old) & set(store.list(""))


def test_a_store_outage_fails_the_sweep_fast_and_the_next_one_resumes(
    settings: Settings, store: ObjectStore
) -> None:
    """The reconciler's loop is not held for TH_STORAGE_RETRY_S while the store is away."""
    seed = Seeder(settings, store, utcnow())
    t = tenant(seed)
    old = seed.render(t, seed.avatar(t), finished_ago=31 * DAY)
    away = settings.model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}", "storage_retry_s": 60.0}
    )
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        RetentionSchedule(away).run_if_due()
    assert caught.value.code == "storage_unavailable"
    assert time.monotonic() - started < 30.0  # the sweep's own budget, not the 60 s above
    assert render_keys(t, old) <= set(store.list(""))  # nothing was lost meanwhile
    assert RetentionSchedule(settings).run_if_due() == SweepCounts(renders=1, uploads=0)
    assert job_of(settings, old).stage == "expired"
    assert not render_keys(t, old) & set(store.list(""))
