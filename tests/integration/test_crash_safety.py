"""Crash safety with real Celery worker processes: every job ends once, with no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.webhooks.sender import sign
from shared.config import Settings
from shared.db.migrate import upgrade
from shared.db.models import Artifact, Avatar, Job, Tenant, WebhookDelivery
from shared.db.session import session_scope
from shared.jobs import JobService
from shared.queue import celery_app, configure_celery
from shared.storage import build_store, tenant_key
from shared.tenants import create_tenant
from tests.conftest import make_face_video
from tests.fixtures.webhooks import WebhookReceiver, running_receiver
from tests.fixtures.workers import children, start_reconciler, start_worker, stop

AVATAR_ARTIFACTS = {"video", "audio", "dataset", "renderer"}


@dataclass
class Platform:
    """Env, settings and helpers shared by the crash tests."""

    env: dict[str, str]
    settings: Settings
    tenant_id: str
    video: Path
    logs: Path
    hook: WebhookReceiver


@pytest.fixture(scope="module")
def platform(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A data dir, a tenant and a webhook receiver; workers are started by each test."""
    root = tmp_path_factory.mktemp("crash")
    env = {
        "TH_DATA_DIR": str(root / "data"),
        "TH_REDIS_URL": redis_url,
        "TH_VISIBILITY_TIMEOUT_S": "3",
        "TH_HEARTBEAT_INTERVAL_S": "0.2",
        "TH_HEARTBEAT_STALE_S": "2",
        "TH_RECONCILE_INTERVAL_S": "0.5",
        "TH_ENQUEUE_GRACE_S": "1",
        "TH_TASK_DELAY_S": "1.5",
        "TH_SEGMENT_FRAMES": "40",
        "TH_ALLOW_PRIVATE_CALLBACKS": "true",
        "TH_WEBHOOK_BACKOFF_S": "0.2",
        "TH_LOG_JSON": "false",
    }
    settings = Settings(**{k[3:].lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as s:
        tenant, _ = create_tenant(s, "crash-tests")
        tenant_id = tenant.id
    with running_receiver() as hook:
        yield Platform(env, settings, tenant_id, make_face_video(root / "v.mp4"), root, hook)


def commit_avatar(
    settings: Settings, tenant_id: str, video: Path, callback: str
) -> tuple[str, str]:
    """Store a source video and commit an avatar + job, as the API does; returns (avatar, job)."""
    store = build_store(settings)
    with session_scope(settings.database_url) as s:
        av = Avatar(
            tenant_id=tenant_id,
            renderer="meanframe",
            preset="cpu-quick",
            consent=True,
            consent_key_id="test",
            source_key="",
            callback_url=callback,
            meta={"case": "crash"},
        )
        s.add(av)
        s.flush()
        av.source_key = tenant_key(tenant_id, "avatars", av.id, "source", "video")
        store.put_file(av.source_key, video)
        job = Job(tenant_id=tenant_id, kind="avatar", resource_id=av.id)
        s.add(job)
        s.flush()
        return av.id, job.id


def create_avatar(p: Platform) -> tuple[str, str]:
    """Commit an avatar and enqueue its job."""
    ids = commit_avatar(p.settings, p.tenant_id, p.video, p.hook.url)  # type: ignore[attr-defined]
    configure_celery(p.settings)
    JobService(p.settings, celery_app).dispatch(ids[1])
    return ids


def job_row(p: Platform, job_id: str) -> Job:
    with session_scope(p.settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def wait_job(p: Platform, job_id: str, pred: object, timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_row(p, job_id)
        if pred(job):  # type: ignore[operator]
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stuck at {job_row(p, job_id).status}; see {p.logs}")


def assert_finished_once(p: Platform, avatar_id: str, job_id: str) -> None:
    """Ready, one artifact per kind, one job row, exactly one correctly signed webhook call."""
    job = wait_job(p, job_id, lambda j: j.status in ("ready", "failed", "cancelled"), 90)
    assert (job.status, job.error_code) == ("ready", None)
    with session_scope(p.settings.database_url) as s:
        kinds = s.execute(
            select(Artifact.kind, func.count())
            .where(Artifact.resource_id == avatar_id)
            .group_by(Artifact.kind)
        ).all()
        assert dict(kinds) == dict.fromkeys(AVATAR_ARTIFACTS, 1)
        assert (
            s.scalar(select(func.count()).select_from(Job).where(Job.resource_id == avatar_id)) == 1
        )
        assert (
            s.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.resource_id == avatar_id)
            )
            == 1
        )
        secret = s.get(Tenant, p.tenant_id).webhook_secret  # type: ignore[union-attr]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        mine = [c for c in p.hook.calls if c.json()["data"]["id"] == avatar_id]
        if mine:
            break
        time.sleep(0.1)
    time.sleep(1.0)  # room for a duplicate to show up, if the platform were to send one
    mine = [c for c in p.hook.calls if c.json()["data"]["id"] == avatar_id]
    assert len(mine) == 1
    assert mine[0].headers["X-Signature"] == sign(secret, mine[0].body)
    assert mine[0].json()["metadata"] == {"case": "crash"}
    assert mine[0].json()["data"]["status"] == "ready"


def in_training(job: Job) -> bool:
    return job.status == "training" and job.lease_owner is not None


def test_child_process_killed_mid_task(platform: Platform) -> None:
    worker = start_worker(platform.env, platform.logs / "a-worker.log")
    reconciler = start_reconciler(platform.env, platform.logs / "a-reconciler.log")
    try:
        avatar_id, job_id = create_avatar(platform)
        wait_job(platform, job_id, in_training, 60)
        pool = children(worker.pid)
        assert pool, "the prefork worker has no child process"
        for pid in pool:
            os.kill(pid, signal.SIGKILL)
        assert_finished_once(platform, avatar_id, job_id)
        assert job_row(platform, job_id).state["step"] == 110
    finally:
        stop(worker)
        stop(reconciler)


def test_whole_worker_killed_and_replaced(platform: Platform) -> None:
    worker = start_worker(platform.env, platform.logs / "b-worker1.log", name="b1")
    reconciler = start_reconciler(platform.env, platform.logs / "b-reconciler.log")
    replacement = None
    try:
        avatar_id, job_id = create_avatar(platform)
        wait_job(platform, job_id, in_training, 60)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        replacement = start_worker(platform.env, platform.logs / "b-worker2.log", name="b2")
        assert_finished_once(platform, avatar_id, job_id)
    finally:
        stop(worker)
        if replacement is not None:
            stop(replacement)
        stop(reconciler)


CREATOR = """
import os, signal, sys
from pathlib import Path
from shared.config import get_settings
from tests.integration.test_crash_safety import commit_avatar
ids = commit_avatar(get_settings(), sys.argv[1], Path(sys.argv[2]), sys.argv[3])
print(*ids, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies after the commit, before the enqueue
"""


def test_process_dies_between_commit_and_enqueue(platform: Platform) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CREATOR, platform.tenant_id, str(platform.video), platform.hook.url],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **platform.env},
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    avatar_id, job_id = proc.stdout.split()
    assert job_row(platform, job_id).enqueued_at is None
    worker = start_worker(platform.env, platform.logs / "c-worker.log", name="c1")
    reconciler = start_reconciler(platform.env, platform.logs / "c-reconciler.log")
    try:
        assert_finished_once(platform, avatar_id, job_id)
    finally:
        stop(worker)
        stop(reconciler)
