"""Re-enqueue what the queue lost: never-enqueued jobs, stale leases, lost messages, webhooks;
and, less often, expire old renders and uploads (services/retention.py)."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy import and_, or_, select, update

from services.retention import RetentionSchedule
from shared.config import Settings, get_settings
from shared.db.models import Job, WebhookDelivery, utcnow
from shared.db.session import session_scope
from shared.jobs import TERMINAL, JobService
from shared.queue import celery_app
from shared.telemetry import RECONCILER_ACTIONS, configure_logging, serve_metrics

log = logging.getLogger(__name__)


def reconcile_once(settings: Settings, celery: Celery = celery_app) -> dict[str, int]:
    """One sweep; returns how many items each rule re-enqueued."""
    jobs = JobService(settings, celery)
    now = utcnow()
    grace = now - timedelta(seconds=settings.enqueue_grace_s)
    stale = now - timedelta(seconds=settings.heartbeat_stale_s)
    lost = now - timedelta(
        seconds=max(2 * settings.visibility_timeout_s, settings.heartbeat_stale_s)
    )
    counts = {"never_enqueued": 0, "stale_heartbeat": 0, "lost_message": 0, "webhook_due": 0}
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(Job.id, Job.segment, Job.lease_owner, Job.enqueued_at).where(
                Job.status.not_in(TERMINAL),
                or_(
                    and_(Job.enqueued_at.is_(None), Job.updated_at < grace),
                    and_(Job.lease_owner.is_not(None), Job.heartbeat_at < stale),
                    and_(Job.lease_owner.is_(None), Job.enqueued_at < lost),
                ),
            )
        ).all()
    for job_id, step, owner, enqueued_at in rows:
        reason = (
            "never_enqueued"
            if enqueued_at is None and owner is None
            else "stale_heartbeat"
            if owner is not None
            else "lost_message"
        )
        with session_scope(settings.database_url) as s:
            # Conditional, so two reconcilers (or a worker that came back) never both act.
            cond = [Job.id == job_id, Job.segment == step, Job.status.not_in(TERMINAL)]
            if owner is not None:
                cond += [Job.lease_owner == owner, Job.heartbeat_at < stale]
            res = s.execute(update(Job).where(*cond).values(lease_owner=None, enqueued_at=None))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                continue
        jobs.dispatch(job_id)
        counts[reason] += 1
        RECONCILER_ACTIONS.labels(reason).inc()
        log.info("re-enqueued job", extra={"fields": {"job_id": job_id, "reason": reason}})
    with session_scope(settings.database_url) as s:
        due = s.scalars(
            select(WebhookDelivery.id).where(
                or_(
                    and_(
                        WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now
                    ),
                    and_(
                        WebhookDelivery.status == "sending",
                        WebhookDelivery.claimed_at < now - timedelta(seconds=120),
                    ),
                )
            )
        ).all()
    for delivery_id in due:
        celery.send_task("talkinghead.webhook", args=[delivery_id])
        counts["webhook_due"] += 1
        RECONCILER_ACTIONS.labels("webhook_due").inc()
    return counts


def run_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    """Sweep every `reconcile_interval_s` (retention: `retention_interval_s`) until `stop`."""
    stop = stop or threading.Event()
    retention = RetentionSchedule(settings)
    while not stop.is_set():
        try:
            reconcile_once(settings)
        except Exception:  # the DB or broker may be briefly away; try again next tick
            log.exception("reconcile sweep failed")
        try:
            retention.run_if_due()
        except Exception:  # the store may be briefly away; a later sweep finishes the work
            log.exception("retention sweep failed")
        stop.wait(settings.reconcile_interval_s)


def main() -> None:
    """Entry point: `python -m services.reconciler`."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve_metrics(settings.worker_metrics_port)  # th_reconciler_actions_total for Prometheus
    run_forever(settings, stop)


if __name__ == "__main__":
    main()
