"""Per-tenant limits: job quotas and request rates, defaults from settings, overrides per tenant."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import ACTIVE_JOB_SQL, Job, JobStatus, Tenant

log = logging.getLogger(__name__)

# The jobs tenants submit; operator jobs (corpora, shared models) are never held back.
QUOTA_KINDS = ("avatar", "render")
# The stage of a queued job held back by its tenant's running-jobs limit.
WAITING_STAGE = "waiting"


class LimitOverrides(BaseModel):
    """The limits an operator set for one tenant; a missing key falls back to the default."""

    model_config = ConfigDict(extra="forbid")

    max_running_jobs: int | None = Field(None, ge=0)
    max_queued_jobs: int | None = Field(None, ge=0)
    requests_per_second: float | None = Field(None, ge=0, allow_inf_nan=False)
    burst: int | None = Field(None, ge=1)

    def stored(self) -> dict[str, Any] | None:
        """The JSON kept in `tenants.limits`: the keys set, or None when none is."""
        return self.model_dump(exclude_none=True) or None


class TenantLimits(BaseModel):
    """The limits in force for one tenant; 0 means no limit (a burst is at least 1)."""

    model_config = ConfigDict(frozen=True)

    max_running_jobs: int = Field(ge=0)
    max_queued_jobs: int = Field(ge=0)
    requests_per_second: float = Field(ge=0, allow_inf_nan=False)
    burst: int = Field(ge=1)


LIMIT_NAMES: tuple[str, ...] = tuple(TenantLimits.model_fields)


def default_limits(settings: Settings) -> TenantLimits:
    """The limits of a tenant without overrides."""
    return TenantLimits(
        max_running_jobs=settings.tenant_max_running_jobs,
        max_queued_jobs=settings.tenant_max_queued_jobs,
        requests_per_second=settings.tenant_requests_per_second,
        burst=settings.tenant_burst,
    )


@lru_cache(maxsize=1024)
def _parse_stored(text: str) -> LimitOverrides:
    # Cached by the stored JSON: the API reads it on every request, and a bad value (written
    # by hand, not by the CLI) is then reported once per process rather than per request.
    try:
        return LimitOverrides.model_validate_json(text)
    except ValidationError as exc:
        log.warning("ignoring invalid tenant limits %s: %s", text, exc.errors(include_url=False))
        return LimitOverrides()


def parse_overrides(raw: dict[str, Any] | None) -> LimitOverrides:
    """The overrides stored for a tenant; an invalid value counts as none."""
    if not raw:
        return LimitOverrides()
    return _parse_stored(json.dumps(raw, sort_keys=True))


def resolve_limits(settings: Settings, raw: dict[str, Any] | None) -> TenantLimits:
    """The defaults with a tenant's stored overrides applied."""
    overrides = parse_overrides(raw).model_dump(exclude_none=True)
    return default_limits(settings).model_copy(update=overrides)


def tenant_limits(session: Session, settings: Settings, tenant_id: str) -> TenantLimits:
    """The limits in force for `tenant_id` (the defaults for an unknown tenant)."""
    raw = session.scalar(select(Tenant.limits).where(Tenant.id == tenant_id))
    return resolve_limits(settings, raw)


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise quota decisions of one tenant until the transaction ends.

    A no-op UPDATE rather than SELECT ... FOR UPDATE: SQLite has no row locks, and this
    takes its write lock up front too, so both engines count and act as one step.
    """
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(limits=Tenant.limits))


def count_jobs(session: Session, tenant_id: str, *, running: bool) -> int:
    """The tenant's quota jobs that are queued, or (`running`) started and unfinished."""
    queued = Job.status == JobStatus.queued.value
    query = (
        select(func.count())
        .select_from(Job)
        .where(
            Job.tenant_id == tenant_id,
            # the partial index's own condition, as literal SQL, so PostgreSQL's planner
            # matches it even when the statement is prepared with parameters
            text(ACTIVE_JOB_SQL),
            ~queued if running else queued,
            Job.kind.in_(QUOTA_KINDS),
        )
    )
    return session.scalar(query) or 0
