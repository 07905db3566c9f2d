"""Run one job step as a Celery task: lease, heartbeat, idempotent artifacts, transitions."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Task
from sqlalchemy import select

from shared.config import Settings, get_settings
from shared.db.models import Artifact, Avatar, Job, Render
from shared.db.session import session_scope
from shared.jobs import JobError, JobGone, JobService, JobWaiting, StepResult
from shared.outages import BROKER, DATABASE, ServiceUnavailable, outage_of, retry_through_outage
from shared.queue import celery_app
from shared.storage import ObjectStore, build_store
from shared.telemetry import TASK_DURATION, job_id_var

log = logging.getLogger(__name__)


class JobContext:
    """What a step body sees: its job, settings, store, scratch dir and progress reporting."""

    def __init__(self, job: Job, owner: str, jobs: JobService, store: ObjectStore) -> None:
        self.job = job
        self.owner = owner
        self.jobs = jobs
        self.store = store
        self.settings: Settings = jobs.settings
        self.workdir = Path(tempfile.mkdtemp(prefix=f"th-{job.id}-"))
        self._gone = threading.Event()
        self._progress: float | None = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat_loop, daemon=True)

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> JobContext:
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._beat.join(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.jobs.heartbeat(self.job.id, self.owner, progress=self._progress)
            except JobGone:
                self._gone.set()
                return
            except Exception:  # a DB hiccup must not kill the step; the next beat retries
                log.warning("heartbeat failed", exc_info=True)

    # -- helpers for bodies -----------------------------------------------------------
    def check(self) -> None:
        """Raise JobGone if the job was cancelled or taken over."""
        if self._gone.is_set():
            raise JobGone(self.job.id)

    def progress(self, value: float) -> None:
        """Report progress now (also checks for cancellation)."""
        self.check()
        self._progress = value
        try:
            self.jobs.heartbeat(self.job.id, self.owner, progress=value)
        except JobGone:
            self._gone.set()
            raise

    def pause(self) -> None:
        """Test hook: slow a step down by `TH_TASK_DELAY_S`, heartbeating meanwhile."""
        deadline = time.monotonic() + self.settings.task_delay_s
        while time.monotonic() < deadline:
            self.check()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def fetch(self, key: str, name: str) -> Path:
        """Download an object into the scratch dir."""
        path = self.workdir / name
        self.store.download(key, path)
        return path

    def resource(self) -> Avatar | Render:
        """The avatar or render this job works for."""
        with session_scope(self.settings.database_url) as s:
            row: Avatar | Render | None = (
                s.get(Avatar, self.job.resource_id)
                if self.job.kind == "avatar"
                else s.get(Render, self.job.resource_id)
            )
            if row is None or row.deleted_at is not None:
                raise JobGone(self.job.id)
            s.expunge(row)
            return row

    def artifact(self, kind: str) -> Artifact | None:
        """The artifact of `kind` already recorded for this resource, if any."""
        with session_scope(self.settings.database_url) as s:
            row = s.scalar(
                select(Artifact).where(
                    Artifact.resource_id == self.job.resource_id, Artifact.kind == kind
                )
            )
            if row is not None:
                s.expunge(row)
            return row

    def save_artifact(
        self,
        kind: str,
        key: str,
        path: Path,
        info: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Artifact:
        """Store a file and record it; re-running the step replaces, never duplicates."""
        self.check()
        size = self.store.put_file(key, path, content_type=content_type)
        # Verify before recording: a later stage trusts what the artifact row says.
        stored = self.store.size(key)
        if stored != size:
            raise RuntimeError(f"{key}: stored {stored} bytes of {size}")
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        with session_scope(self.settings.database_url) as s:
            row = s.scalar(
                select(Artifact).where(
                    Artifact.resource_id == self.job.resource_id, Artifact.kind == kind
                )
            )
            if row is None:
                row = Artifact(
                    tenant_id=self.job.tenant_id,
                    resource_id=self.job.resource_id,
                    kind=kind,
                    key=key,
                    size=size,
                    sha256="",
                )
                s.add(row)
            row.key, row.size, row.sha256, row.info = key, size, digest.hexdigest(), info or {}
            s.flush()
            s.expunge(row)
            return row


StepBody = Callable[[JobContext], StepResult]
_DB_AND_BROKER = frozenset({DATABASE, BROKER})


def _run_body(body: StepBody, job: Job, owner: str, jobs: JobService) -> StepResult:
    """Run the step; while the database or broker is briefly away, again from its checkpoint.

    Steps are idempotent by job id, so a rerun of a half-done step is safe; the lease stays
    ours meanwhile (if the reconciler takes it over, the next heartbeat says JobGone).
    """
    settings = jobs.settings

    def attempt() -> StepResult:
        with JobContext(job, owner, jobs, build_store(settings)) as ctx:
            result = body(ctx)
            ctx.check()
            return result

    return retry_through_outage(
        attempt,
        settings.outage_retry_s,
        settings.outage_backoff_s,
        only=_DB_AND_BROKER,
        what=f"step {job.segment} of job {job.id}",
    )


def _record(call: Callable[[], bool], settings: Settings) -> bool:
    """Record a step's outcome, riding through a database outage.

    A broker outage after the commit only delays the next message: the reconciler sends
    jobs that were never enqueued, and webhook deliveries that are due.
    """
    try:
        return retry_through_outage(
            call,
            settings.outage_retry_s,
            settings.outage_backoff_s,
            only=frozenset({DATABASE}),
            what="record the step's outcome",
        )
    except Exception as exc:
        if outage_of(exc) != BROKER:
            raise
        log.warning("outcome recorded; its message waits for the reconciler (broker away)")
        return True


def worker_owner(task: Task) -> str:
    """A lease owner id unique to this task execution."""
    return f"{socket.gethostname()}:{os.getpid()}:{task.request.id}"


def run_step(
    body: StepBody,
    task_name: str,
    job_id: str,
    step: int,
    owner: str,
    settings: Settings | None = None,
) -> str:
    """Claim the job at `step`, run `body`, and record the outcome; returns the outcome."""
    settings = settings or get_settings()
    jobs = JobService(settings, celery_app)
    token = job_id_var.set(job_id)
    started = time.perf_counter()
    outcome = "skipped"
    try:
        job = retry_through_outage(
            lambda: jobs.claim(job_id, step, owner),
            settings.outage_retry_s,
            settings.outage_backoff_s,
            only=frozenset({DATABASE}),
            what=f"claim job {job_id}",
        )
        if job is None:
            return outcome
        try:
            result = _run_body(body, job, owner, jobs)
            done = _record(lambda: jobs.complete_step(job, owner, result), settings)
            outcome = "ok" if done else "lost"
        except JobGone:
            outcome = "gone"
        except JobWaiting:
            jobs.wait(job_id, owner)
            outcome = "waiting"
        except (JobError, ServiceUnavailable) as exc:
            # ServiceUnavailable: an outage outlasted its retry budget; a code, not a traceback.
            error = (exc.code, exc.message if isinstance(exc, JobError) else str(exc))
            _record(
                lambda: jobs.finish(job_id, "failed", owner=owner, step=step, error=error),
                settings,
            )
            outcome = "failed"
        except Exception as exc:
            log.exception("step crashed")
            if job.attempts >= settings.max_attempts:
                jobs.finish(
                    job_id,
                    "failed",
                    owner=owner,
                    step=step,
                    error=("internal_error", f"{type(exc).__name__}: {exc}"),
                )
                outcome = "failed"
            else:
                # Give the lease back and run the step again from its last checkpoint.
                jobs.release(job_id, owner)
                jobs.dispatch(job_id)
                outcome = "retry"
        return outcome
    finally:
        TASK_DURATION.labels(task_name, outcome).observe(time.perf_counter() - started)
        job_id_var.reset(token)


def stage_task(name: str) -> Callable[[StepBody], Task]:
    """Register `body` as the Celery task `name` taking (job_id, step)."""

    def register(body: StepBody) -> Task:
        @celery_app.task(name=name, bind=True)
        def task(self: Task, job_id: str, step: int) -> str:
            return run_step(body, name, job_id, step, worker_owner(self))

        task.__doc__ = body.__doc__
        return task

    return register
