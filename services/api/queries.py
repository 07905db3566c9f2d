"""Tenant-scoped lookups shared by the routes; soft-deleted rows are invisible."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from services.api.errors import ApiError
from shared.db.models import Avatar, Job, Render


def not_found(what: str, resource_id: str) -> ApiError:
    """404 for a resource the caller cannot see (missing, deleted or another tenant's)."""
    return ApiError(404, "not_found", f"no {what} {resource_id[:60]!r}")


# Built once: constructing a statement costs more than running it from the compiled cache.
_AVATAR_WITH_JOB = (
    select(Avatar, Job)
    .join(Job, Job.resource_id == Avatar.id)
    .where(
        Avatar.id == bindparam("resource_id"),
        Avatar.tenant_id == bindparam("tenant_id"),
        Avatar.deleted_at.is_(None),
    )
)
_RENDER_WITH_JOB = (
    select(Render, Job)
    .join(Job, Job.resource_id == Render.id)
    .where(
        Render.id == bindparam("resource_id"),
        Render.tenant_id == bindparam("tenant_id"),
        Render.deleted_at.is_(None),
    )
)


def find_avatar(session: Session, tenant_id: str, avatar_id: str) -> tuple[Avatar, Job] | None:
    """The live avatar and its job, or None."""
    params = {"resource_id": avatar_id, "tenant_id": tenant_id}
    row = session.execute(_AVATAR_WITH_JOB, params).first()
    return None if row is None else (row[0], row[1])


def get_avatar(session: Session, tenant_id: str, avatar_id: str) -> tuple[Avatar, Job]:
    """The live avatar and its job; 404 otherwise."""
    found = find_avatar(session, tenant_id, avatar_id)
    if found is None:
        raise not_found("avatar", avatar_id)
    return found


def find_render(session: Session, tenant_id: str, render_id: str) -> tuple[Render, Job] | None:
    """The live render and its job, or None."""
    params = {"resource_id": render_id, "tenant_id": tenant_id}
    row = session.execute(_RENDER_WITH_JOB, params).first()
    return None if row is None else (row[0], row[1])


def get_render(session: Session, tenant_id: str, render_id: str) -> tuple[Render, Job]:
    """The live render and its job; 404 otherwise."""
    found = find_render(session, tenant_id, render_id)
    if found is None:
        raise not_found("render", render_id)
    return found
