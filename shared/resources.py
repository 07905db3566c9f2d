"""Turn database rows into the public API's views (used by the API and by webhooks)."""

from __future__ import annotations

from shared import schemas
from shared.db.models import Avatar, Job, Render

# The stage of a finished render's job once retention takes its objects: `expiring` while they
# are removed, `expired` after. The status (done, failed) stays, so the outcome is still told.
RENDER_EXPIRING = "expiring"
RENDER_EXPIRED = "expired"
EXPIRED_STAGES = (RENDER_EXPIRING, RENDER_EXPIRED)


def render_expired(job: Job) -> bool:
    """Whether retention removed, or is removing, the render's objects."""
    return job.stage in EXPIRED_STAGES


def job_error(job: Job) -> dict[str, str] | None:
    """The job's error as `{code, message}`, if it failed."""
    if job.error_code is None or job.status != "failed":
        return None
    return {"code": job.error_code, "message": job.error_message or ""}


def avatar_view(avatar: Avatar, job: Job) -> schemas.Avatar:
    """The public representation of an avatar."""
    return schemas.Avatar(
        id=avatar.id,
        name=avatar.name,
        renderer=avatar.renderer,
        preset=avatar.preset,
        source=avatar.source,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        error=job_error(job),
        metrics=avatar.metrics,
        metadata=avatar.meta,
        callback_url=avatar.callback_url,
        consent=avatar.consent,
        consent_at=avatar.consent_at,
        corpus_opt_in=bool(avatar.corpus_opt_in),
        created_at=avatar.created_at,
        updated_at=job.updated_at,
    )


def render_view(render: Render, job: Job, base_url: str) -> schemas.Render:
    """The public representation of a render; the video URL is API-served."""
    served = job.status == "done" and not render_expired(job)
    video_url = f"{base_url}/v1/renders/{render.id}/video" if served else None
    return schemas.Render(
        id=render.id,
        avatar_id=render.avatar_id,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        error=job_error(job),
        options=render.options,
        metadata=render.meta,
        callback_url=render.callback_url,
        video_url=video_url,
        created_at=render.created_at,
        updated_at=job.updated_at,
    )


def job_event(resource_id: str, job: Job) -> schemas.JobEvent:
    """The SSE payload for a job's current state."""
    return schemas.JobEvent(
        id=resource_id,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        error=job_error(job),
        updated_at=job.updated_at,
    )
