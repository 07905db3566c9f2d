"""Retention: remove the objects of old finished renders and of abandoned uploads.

A render expires in three crash-safe steps: its job's stage becomes `expiring` (from then on
the API answers 410, so nobody trusts a half-deleted video), its objects are removed, then the
stage becomes `expired`. Every sweep first finishes the `expiring` renders an earlier sweep
left, whatever their age. An unconsumed upload is already refused by the API once its slot
closed, which is the mark here: its object goes first, its row after, and a sweep after a
crash in between removes both again (deleting a missing object is no error).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import Job, Render, Upload, utcnow
from shared.db.session import session_scope
from shared.jobs import TERMINAL
from shared.objects import remove_owned, render_objects
from shared.resources import EXPIRED_STAGES, RENDER_EXPIRED, RENDER_EXPIRING
from shared.storage import ObjectStore, build_store

log = logging.getLogger(__name__)

# At most this many renders and uploads per sweep, so a first sweep over years of history
# never holds up the reconciler's other rules for long; a full sweep asks for another soon.
SWEEP_LIMIT = 500
_BATCH = 100


@dataclass
class SweepCounts:
    """What one sweep expired; `backlog` when it stopped at its limit with more to do."""

    renders: int = 0
    uploads: int = 0
    backlog: bool = False


def _mark_renders(url: str, cutoff: datetime, now: datetime, limit: int) -> int:
    """Mark up to `limit` renders finished before `cutoff` as `expiring`."""
    with session_scope(url) as s:
        job_ids = s.scalars(
            select(Job.id)
            .join(Render, Render.id == Job.resource_id)
            .where(
                Job.kind == "render",
                Job.status.in_(TERMINAL),
                Job.finished_at <= cutoff,
                Job.stage.not_in(EXPIRED_STAGES),
                Render.deleted_at.is_(None),
            )
            .order_by(Job.finished_at)
            .limit(limit)
        ).all()
        if job_ids:
            s.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.stage.not_in(EXPIRED_STAGES))
                .values(stage=RENDER_EXPIRING, updated_at=now, version=Job.version + 1)
            )
    return len(job_ids)


def _finish_renders(url: str, store: ObjectStore, now: datetime, limit: int) -> int:
    """Remove the objects of up to `limit` `expiring` renders, then mark them `expired`."""
    with session_scope(url) as s:
        renders = s.scalars(
            select(Render)
            .join(Job, Job.resource_id == Render.id)
            .where(Job.kind == "render", Job.stage == RENDER_EXPIRING)
            .limit(limit)
        ).all()
        doomed = [(render.id, render_objects(render)) for render in renders]
    for render_id, objects in doomed:
        remove_owned(store, objects)
        with session_scope(url) as s:
            s.execute(
                update(Job)
                .where(Job.resource_id == render_id, Job.stage == RENDER_EXPIRING)
                .values(stage=RENDER_EXPIRED, updated_at=now, version=Job.version + 1)
            )
            # only now: a sweep that crashed before this still knew where the video was
            s.execute(update(Render).where(Render.id == render_id).values(video_key=None))
    return len(doomed)


def expire_renders(
    settings: Settings, store: ObjectStore, now: datetime, limit: int = SWEEP_LIMIT
) -> int:
    """Expire renders finished more than `render_retention_s` ago; returns how many."""
    done = 0
    while done < limit:
        batch = min(_BATCH, limit - done)
        if settings.render_retention_s:
            cutoff = now - timedelta(seconds=settings.render_retention_s)
            _mark_renders(settings.database_url, cutoff, now, batch)
        # also with retention off: renders a crashed sweep marked are finished
        finished = _finish_renders(settings.database_url, store, now, batch)
        done += finished
        if finished < batch:
            break
    return done


def _backgrounds_in_use(s: Session, tenant_ids: set[str]) -> set[str]:
    """Uploads that unfinished renders of these tenants use as their background image."""
    if not tenant_ids:
        return set()
    options = s.scalars(
        select(Render.options)
        .join(Job, Job.resource_id == Render.id)
        .where(Render.tenant_id.in_(tenant_ids), Job.status.not_in(TERMINAL))
    ).all()
    backgrounds = (opts.get("background") or {} for opts in options)
    return {str(b["upload_id"]) for b in backgrounds if b.get("upload_id")}


def expire_uploads(
    settings: Settings, store: ObjectStore, now: datetime, limit: int = SWEEP_LIMIT
) -> int:
    """Remove uploads nothing consumed, created more than `upload_retention_s` ago."""
    if not settings.upload_retention_s:
        return 0
    cutoff = now - timedelta(seconds=settings.upload_retention_s)
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(Upload.id, Upload.tenant_id, Upload.key, Upload.purpose)
            .where(
                Upload.consumed_at.is_(None),
                Upload.expires_at <= now,  # the slot is closed: no new avatar or render can use it
                Upload.created_at <= cutoff,
            )
            .order_by(Upload.created_at)
            .limit(limit)
        ).all()
        # an image backs renders without being consumed; keep it until those renders finish
        in_use = _backgrounds_in_use(s, {r.tenant_id for r in rows if r.purpose == "image"})
    expired = 0
    for upload_id, _, key, _ in rows:
        if upload_id in in_use:
            continue
        store.delete(key)
        with session_scope(settings.database_url) as s:
            s.execute(delete(Upload).where(Upload.id == upload_id, Upload.consumed_at.is_(None)))
        expired += 1
    return expired


def sweep_expired(
    settings: Settings, store: ObjectStore, now: datetime | None = None, limit: int = SWEEP_LIMIT
) -> SweepCounts:
    """One retention sweep over renders and uploads (`now` is a parameter for tests)."""
    now = now or utcnow()
    counts = SweepCounts(
        renders=expire_renders(settings, store, now, limit),
        uploads=expire_uploads(settings, store, now, limit),
    )
    counts.backlog = counts.renders >= limit or counts.uploads >= limit
    if counts.renders or counts.uploads:
        log.info(
            "retention sweep",
            extra={
                "fields": {"renders_expired": counts.renders, "uploads_expired": counts.uploads}
            },
        )
    return counts


SWEEP_STORAGE_RETRY_S = 3.0  # how long one sweep waits for an unreachable store


class RetentionSchedule:
    """Runs `sweep_expired` every `retention_interval_s`, and at every call while behind."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._next = clock()  # the first call sweeps
        self._store: ObjectStore | None = None

    def run_if_due(self) -> SweepCounts | None:
        """Sweep when due; None when it was not."""
        started = self.clock()
        if started < self._next:
            return None
        # set first, so a failing sweep (store away) waits a whole interval before retrying
        self._next = started + self.settings.retention_interval_s
        if self._store is None:
            # A short budget: the reconciler runs this sweep between its own, and a store
            # outage must not hold those up for TH_STORAGE_RETRY_S; the next sweep resumes.
            budget = min(self.settings.storage_retry_s, SWEEP_STORAGE_RETRY_S)
            self._store = build_store(self.settings, retry_s=budget)
        counts = sweep_expired(self.settings, self._store)
        if counts.backlog:
            self._next = started
        return counts
