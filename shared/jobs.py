"""Durable job state: pipelines, leases, transitions and exactly-once terminal states."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import (
    TERMINAL_STATUSES,
    Avatar,
    Job,
    JobStatus,
    Render,
    Tenant,
    WebhookDelivery,
    utcnow,
)
from shared.db.session import session_scope
from shared.limits import QUOTA_KINDS, WAITING_STAGE, count_jobs, lock_tenant, tenant_limits
from shared.resources import avatar_view, render_view
from shared.telemetry import JOB_DEFERRALS, JOB_FAILURES, JOB_TRANSITIONS, STAGE_DURATION
from talkinghead.families.contract import AVATAR_STAGES, VIDEO_STAGES

log = logging.getLogger(__name__)

# Each kind's stages in order; the job's status names the stage it is in. An avatar job
# carries its family's stages (pinned at creation); this table serves jobs made before that.
CORPUS_STAGES = ("scanning", "building", "indexing")
MODEL_STAGES = ("fitting", "publishing")
PIPELINES: dict[str, tuple[str, ...]] = {
    "avatar": VIDEO_STAGES,
    "render": ("rendering", "encoding"),
    "corpus": CORPUS_STAGES,
    "model": MODEL_STAGES,
}
# Every state of each kind, over all registered families (metrics, docs).
KIND_STATES: dict[str, tuple[str, ...]] = {
    "avatar": ("queued", *AVATAR_STAGES, "ready", "failed", "cancelled"),
    "render": ("queued", "rendering", "encoding", "done", "failed", "cancelled"),
    "corpus": ("queued", *CORPUS_STAGES, "ready", "failed", "cancelled"),
    "model": ("queued", *MODEL_STAGES, "ready", "failed", "cancelled"),
}
SUCCESS = {
    "avatar": JobStatus.ready.value,
    "render": JobStatus.done.value,
    "corpus": JobStatus.ready.value,
    "model": JobStatus.ready.value,
}
STAGE_TASKS = {
    "ingesting": "talkinghead.ingest",
    "preprocessing": "talkinghead.preprocess",
    "preparing": "talkinghead.prepare",
    "training": "talkinghead.train_segment",
    "exporting": "talkinghead.export",
    "rendering": "talkinghead.render",
    "encoding": "talkinghead.encode",
    "scanning": "talkinghead.corpus_scan",
    "building": "talkinghead.corpus_build",
    "indexing": "talkinghead.corpus_index",
    "fitting": "talkinghead.model_segment",
    "publishing": "talkinghead.model_publish",
}
TERMINAL = tuple(s.value for s in TERMINAL_STATUSES)


class JobError(Exception):
    """A failure the user must see: ends the job `failed` with a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JobGone(Exception):
    """The job was cancelled, deleted or taken over: stop without touching it."""


class JobWaiting(Exception):
    """The step waits on work fanned out to other tasks; the last of them wakes it again."""


@dataclass
class StepResult:
    """What a stage body asks for next: another segment, the next stage, or success."""

    state: dict[str, Any] = field(default_factory=dict)
    progress: float | None = None
    again: bool = False  # run another segment of the same stage
    metrics: dict[str, Any] | None = None


def job_stages(job: Job) -> tuple[str, ...]:
    """The job's stages in order."""
    return tuple(job.stages) if job.stages else PIPELINES[job.kind]


def next_status(job: Job, status: str | None = None) -> str:
    """The status after `status` (default: the job's) finishes; the first stage after queued."""
    status = job.status if status is None else status
    kind = job.kind
    stages = job_stages(job)
    if status == JobStatus.queued.value:
        return stages[0]
    idx = stages.index(status)
    return stages[idx + 1] if idx + 1 < len(stages) else SUCCESS[kind]


def task_name_for(job: Job) -> str | None:
    """The Celery task that runs the job's current step, or None when terminal."""
    if job.status in TERMINAL:
        return None
    status = next_status(job) if job.status == "queued" else job.status
    return STAGE_TASKS[status]


class JobService:
    """Every state change of a job goes through here, as a conditional update."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self.db_url = settings.database_url

    # -- enqueueing -------------------------------------------------------------------
    def dispatch(self, job_id: str) -> bool:
        """Send the message for the job's current step and record that it was sent."""
        with session_scope(self.db_url) as s:
            job = s.get(Job, job_id)
            if job is None or (name := task_name_for(job)) is None:
                return False
            step = job.segment
        self.celery.send_task(name, args=[job_id, step])
        with session_scope(self.db_url) as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.segment == step, Job.enqueued_at.is_(None))
                .values(enqueued_at=utcnow())
            )
        return True

    # -- leases -----------------------------------------------------------------------
    def claim(self, job_id: str, step: int, owner: str) -> Job | None:
        """Lease `job_id` at `step`; None if stale, terminal or held by a live worker."""
        now = utcnow()
        stale = now - timedelta(seconds=self.settings.heartbeat_stale_s)
        with session_scope(self.db_url) as s:
            job = s.get(Job, job_id)
            if job is None or job.segment != step or job.status in TERMINAL:
                return None
            if self._defer_start(s, job, now):
                JOB_DEFERRALS.labels(job.kind).inc()
                log.info(
                    "job waits for a running slot of its tenant",
                    extra={"fields": {"job_id": job_id, "tenant_id": job.tenant_id}},
                )
                return None
            status = next_status(job) if job.status == "queued" else job.status
            res = s.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.segment == step,
                    Job.status.not_in(TERMINAL),
                    or_(Job.lease_owner.is_(None), Job.heartbeat_at < stale),
                )
                .values(
                    lease_owner=owner,
                    heartbeat_at=now,
                    attempts=Job.attempts + 1,
                    status=status,
                    stage=status if job.status == "queued" else Job.stage,
                    started_at=job.started_at or now,
                    updated_at=now,
                    version=Job.version + 1,
                )
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            if job.status == "queued":
                JOB_TRANSITIONS.labels(job.kind, status).inc()
            s.refresh(job)
            s.expunge(job)
        if job.attempts > self.settings.max_attempts:
            self.finish(
                job_id,
                JobStatus.failed.value,
                owner=owner,
                error=("too_many_attempts", f"gave up after {job.attempts - 1} attempts"),
            )
            return None
        return job

    def _defer_start(self, s: Session, job: Job, now: datetime) -> bool:
        """Whether a queued job must wait because its tenant has its running jobs' limit.

        A waiting job stays queued in stage `waiting`, marked enqueued without a message (as
        `wait` does): the finish of one of the tenant's jobs sends it again (`start_waiting`),
        and should that message be lost, the reconciler's lost-message rule does.
        """
        if job.status != JobStatus.queued.value or job.kind not in QUOTA_KINDS:
            return False
        cap = tenant_limits(s, self.settings, job.tenant_id).max_running_jobs
        if not cap:
            return False
        lock_tenant(s, job.tenant_id)  # held until this claim commits: one start at a time
        if count_jobs(s, job.tenant_id, running=True) < cap:
            return False
        s.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.segment == job.segment,
                Job.status == JobStatus.queued.value,
                Job.lease_owner.is_(None),
            )
            .values(enqueued_at=now, **self._waiting_values(job, now))
        )
        return True

    @staticmethod
    def _waiting_values(job: Job, now: datetime) -> dict[str, Any]:
        # the stage tells the tenant why the job has not started; a job put back again
        # changes nothing they can see, so followers get no event for it
        if job.stage == WAITING_STAGE:
            return {}
        return {"stage": WAITING_STAGE, "updated_at": now, "version": Job.version + 1}

    def start_waiting(self, tenant_id: str) -> list[str]:
        """Send the tenant's oldest waiting jobs, as many as it has running slots free."""
        with session_scope(self.db_url) as s:
            cap = tenant_limits(s, self.settings, tenant_id).max_running_jobs
            if not cap:
                return []
            free = cap - count_jobs(s, tenant_id, running=True)
            if free <= 0:
                return []
            waiting = s.scalars(
                select(Job.id)
                .where(
                    Job.tenant_id == tenant_id,
                    Job.status == JobStatus.queued.value,
                    Job.stage == WAITING_STAGE,  # the others' messages are on their way
                    Job.kind.in_(QUOTA_KINDS),
                    Job.lease_owner.is_(None),
                )
                .order_by(Job.created_at, Job.id)
                .limit(free)
            ).all()
        for job_id in waiting:
            self.dispatch(job_id)
        return list(waiting)

    def heartbeat(
        self, job_id: str, owner: str, progress: float | None = None, stage: str | None = None
    ) -> None:
        """Prove the lease holder is alive; raises JobGone if it lost the job."""
        now = utcnow()
        values: dict[str, Any] = {"heartbeat_at": now}
        if progress is not None:
            values.update(
                progress=max(0.0, min(1.0, progress)), updated_at=now, version=Job.version + 1
            )
        if stage is not None:
            values.update(stage=stage, updated_at=now, version=Job.version + 1)
        with session_scope(self.db_url) as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.status.not_in(TERMINAL))
                .values(**values)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise JobGone(job_id)

    def release(self, job_id: str, owner: str) -> None:
        """Give the lease back so a retry can take it at once."""
        with session_scope(self.db_url) as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner)
                .values(lease_owner=None, enqueued_at=None)
            )

    def wait(self, job_id: str, owner: str) -> None:
        """Give the lease back but stay enqueued: the step runs again when woken.

        Whoever finishes the awaited work dispatches the step; should that message be lost,
        the reconciler's lost-message rule sends it again.
        """
        with session_scope(self.db_url) as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner)
                .values(lease_owner=None, enqueued_at=utcnow(), attempts=0)
            )

    # -- transitions ------------------------------------------------------------------
    def complete_step(self, job: Job, owner: str, result: StepResult) -> bool:
        """Record a finished step and move to the next segment, stage or success."""
        now = utcnow()
        new_status = job.status if result.again else next_status(job)
        if new_status in TERMINAL:
            return self.finish(
                job.id,
                new_status,
                owner=owner,
                step=job.segment,
                state=result.state,
                metrics=result.metrics,
            )
        values: dict[str, Any] = {
            "status": new_status,
            "stage": new_status,
            "segment": job.segment + 1,
            "attempts": 0,  # attempts count per step: a long pipeline is not a retry loop
            "lease_owner": None,
            "enqueued_at": None,
            "state": {**job.state, **result.state},
            "updated_at": now,
            "version": Job.version + 1,
        }
        if result.progress is not None:
            values["progress"] = result.progress
        with session_scope(self.db_url) as s:
            res = s.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.segment == job.segment,
                    Job.lease_owner == owner,
                    Job.status.not_in(TERMINAL),
                )
                .values(**values)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if result.metrics:
                self._store_metrics(s, job, result.metrics)
        if new_status != job.status:
            JOB_TRANSITIONS.labels(job.kind, new_status).inc()
            self._observe_stage(job, now)
        self.dispatch(job.id)
        return True

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        owner: str | None = None,
        step: int | None = None,
        error: tuple[str, str] | None = None,
        state: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> bool:
        """Move a job to a terminal state exactly once, recording its webhook in the same commit."""
        now = utcnow()
        with session_scope(self.db_url) as s:
            job = s.get(Job, job_id)
            if job is None:
                return False
            conds = [Job.id == job_id, Job.status.not_in(TERMINAL)]
            if owner is not None:
                conds.append(Job.lease_owner == owner)
            if step is not None:
                conds.append(Job.segment == step)
            values: dict[str, Any] = {
                "status": status,
                "stage": status,
                "lease_owner": None,
                "finished_at": now,
                "updated_at": now,
                "version": Job.version + 1,
                "segment": Job.segment + 1,
            }
            if status in (JobStatus.ready.value, JobStatus.done.value):
                values["progress"] = 1.0
            if error is not None:
                values.update(error_code=error[0], error_message=error[1][:2000])
            if state:
                values["state"] = {**job.state, **state}
            res = s.execute(update(Job).where(*conds).values(**values))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return False
            s.refresh(job)
            if metrics:
                self._store_metrics(s, job, metrics)
            delivery_id = self._record_webhook(s, job)
        JOB_TRANSITIONS.labels(job.kind, status).inc()
        if error is not None:
            JOB_FAILURES.labels(job.kind, error[0]).inc()
        log.info("job %s", status, extra={"fields": {"job_id": job_id, "error": error}})
        if delivery_id:
            self.celery.send_task("talkinghead.webhook", args=[delivery_id])
        if job.kind in QUOTA_KINDS:
            try:
                self.start_waiting(job.tenant_id)  # a running slot may have come free
            except Exception:  # the reconciler's lost-message rule sends them later
                log.warning("could not start the tenant's waiting jobs", exc_info=True)
        return True

    def cancel(self, job_id: str) -> bool:
        """Cancel unfinished work; the running task notices at its next heartbeat."""
        return self.finish(
            job_id, JobStatus.cancelled.value, error=("cancelled", "cancelled by the caller")
        )

    # -- helpers ----------------------------------------------------------------------
    def _store_metrics(self, s: Session, job: Job, metrics: dict[str, Any]) -> None:
        if job.kind == "avatar":
            avatar = s.get(Avatar, job.resource_id)
            if avatar is not None:
                avatar.metrics = {**avatar.metrics, **metrics}

    def _observe_stage(self, job: Job, now: Any) -> None:
        start = job.started_at or job.created_at
        STAGE_DURATION.labels(job.kind, job.status).observe((now - start).total_seconds())

    def _record_webhook(self, s: Session, job: Job) -> str | None:
        resource: Avatar | Render | None = (
            s.get(Avatar, job.resource_id)
            if job.kind == "avatar"
            else s.get(Render, job.resource_id)
        )
        if resource is None or not resource.callback_url:
            return None
        exists = s.scalar(
            select(WebhookDelivery.id).where(
                WebhookDelivery.resource_id == job.resource_id,
                WebhookDelivery.event == f"{job.kind}.{job.status}",
            )
        )
        if exists:
            return None
        view = (
            avatar_view(resource, job)
            if isinstance(resource, Avatar)
            else render_view(resource, job, self.settings.public_base_url)
        )
        tenant = s.get(Tenant, job.tenant_id)
        assert tenant is not None
        delivery = WebhookDelivery(
            tenant_id=job.tenant_id,
            resource_id=job.resource_id,
            event=f"{job.kind}.{job.status}",
            url=resource.callback_url,
            payload={
                "event": f"{job.kind}.{job.status}",
                "type": job.kind,
                "data": view.model_dump(mode="json"),
                "metadata": resource.meta,
            },
        )
        s.add(delivery)
        s.flush()
        return delivery.id
