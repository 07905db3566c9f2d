"""Job quotas at submission: a tenant's queued avatars and renders stay within its limit.

Only the queue is limited here. How many of a tenant's jobs run at once is limited where they
start (`JobService.claim`): a job over that limit waits, queued, for one of them to finish.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.api.errors import ApiError
from shared.config import Settings
from shared.limits import count_jobs, lock_tenant, tenant_limits
from shared.telemetry import REFUSED_REQUESTS


def check_queued_quota(session: Session, settings: Settings, tenant_id: str, *, lock: bool) -> None:
    """429 `too_many_queued_jobs` when the tenant already has its limit of queued jobs.

    With `lock`, the tenant stays locked until the session's transaction ends, so that two
    concurrent submissions cannot both take the last place in the queue.
    """
    limit = tenant_limits(session, settings, tenant_id).max_queued_jobs
    if not limit:
        return
    if lock:
        lock_tenant(session, tenant_id)
    queued = count_jobs(session, tenant_id, running=False)
    if queued < limit:
        return
    REFUSED_REQUESTS.labels("queued_jobs").inc()
    raise ApiError(
        429,
        "too_many_queued_jobs",
        f"this tenant has {queued} jobs waiting to start, its limit is {limit}; "
        "submit again once some have started or were cancelled",
        headers={"Retry-After": str(settings.quota_retry_after_s)},
    )
