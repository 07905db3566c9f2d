"""Deleting avatars and renders: cancel their work, hide the rows, remove the objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.api.queries import get_avatar, get_render, not_found
from shared.db.models import Avatar, IdempotencyRecord, Job, Render, utcnow
from shared.jobs import TERMINAL, JobService
from shared.objects import Owned, avatar_objects, remove_owned, render_objects
from shared.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Doomed:
    """What one deletion must cancel and remove, read before anything changes."""

    resource_ids: list[str]
    live_job_ids: list[str]
    objects: Owned


def _carry_out(
    session: Session,
    store: ObjectStore,
    jobs: JobService,
    model: type[Avatar | Render],
    tenant_id: str,
    primary_id: str,
    doomed: _Doomed,
) -> None:
    # end the read transaction first: SQLite cannot upgrade a stale read to a write
    session.commit()
    for job_id in doomed.live_job_ids:
        jobs.cancel(job_id)
    now = utcnow()
    hidden = session.execute(
        update(model)
        .where(model.id == primary_id, model.tenant_id == tenant_id, model.deleted_at.is_(None))
        .values(deleted_at=now)
    )
    if hidden.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise not_found(model.__name__.lower(), primary_id)
    session.execute(
        update(Render)
        .where(Render.id.in_(doomed.resource_ids), Render.deleted_at.is_(None))
        .values(deleted_at=now)
    )
    # the Idempotency-Key of a deleted resource may be used again
    session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.tenant_id == tenant_id,
            IdempotencyRecord.resource_id.in_(doomed.resource_ids),
        )
    )
    session.commit()
    remove_owned(store, doomed.objects)


def delete_avatar(
    session: Session, store: ObjectStore, jobs: JobService, tenant_id: str, avatar_id: str
) -> None:
    """Cancel the avatar's job and its renders' jobs, hide them all, delete their objects."""
    avatar, job = get_avatar(session, tenant_id, avatar_id)
    renders = session.execute(
        select(Render, Job)
        .join(Job, Job.resource_id == Render.id)
        .where(Render.avatar_id == avatar.id, Render.deleted_at.is_(None))
    ).all()
    objects = avatar_objects(avatar)
    for render, _ in renders:
        objects.add(render_objects(render))
    doomed = _Doomed(
        resource_ids=[avatar.id, *(r.id for r, _ in renders)],
        live_job_ids=[j.id for j in (job, *(j for _, j in renders)) if j.status not in TERMINAL],
        objects=objects,
    )
    _carry_out(session, store, jobs, Avatar, tenant_id, avatar.id, doomed)


def delete_render(
    session: Session, store: ObjectStore, jobs: JobService, tenant_id: str, render_id: str
) -> None:
    """Cancel the render's job, hide it, delete its objects."""
    render, job = get_render(session, tenant_id, render_id)
    doomed = _Doomed(
        resource_ids=[render.id],
        live_job_ids=[job.id] if job.status not in TERMINAL else [],
        objects=render_objects(render),
    )
    _carry_out(session, store, jobs, Render, tenant_id, render.id, doomed)
