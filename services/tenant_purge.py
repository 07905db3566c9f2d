"""The operator's hard delete of a tenant: its jobs, objects, corpus clips, Redis keys and rows.

Safe to crash anywhere and to run again. The tenant is locked out and its avatars and renders
hidden first; then its work is cancelled and its objects, corpus clips and Redis keys removed,
all steps a rerun repeats; last, one transaction deletes every row, the tenant's own with them.
While the tenant row exists a rerun therefore does the whole delete again (finding less each
time); once it is gone, a rerun by id still sweeps what a late writer left under the tenant's
prefix and in Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Table, delete, or_, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import (
    ApiKey,
    Artifact,
    Avatar,
    Base,
    CorpusClip,
    Job,
    Render,
    Tenant,
    Upload,
    utcnow,
)
from shared.db.session import session_scope
from shared.exports import export_prefix
from shared.jobs import TERMINAL, JobService
from shared.objects import outside, tenant_prefix
from shared.storage import ObjectStore
from shared.tenants import OPERATOR_TENANT

log = logging.getLogger(__name__)

_REDIS_BATCH = 500


class RedisKeys(Protocol):
    """The part of a redis client the purge uses."""

    def scan_iter(self, match: str, count: int) -> Iterable[Any]: ...

    def delete(self, *names: Any) -> Any: ...


class PurgeRefused(ValueError):
    """A tenant that must not be deleted; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class PurgeReport:
    """What one run removed; `name` is None when no tenant row was left to remove."""

    tenant_id: str
    name: str | None = None
    jobs_cancelled: int = 0
    objects_removed: int = 0
    corpus_identities_removed: int = 0
    redis_keys_removed: int = 0
    rows_removed: dict[str, int] = field(default_factory=dict)

    @property
    def found_anything(self) -> bool:
        """Whether the run found any trace of the tenant."""
        return bool(self.name or self.objects_removed or self.redis_keys_removed)


@dataclass
class _Holdings:
    """What the tenant owns outside its rows, read once the tenant is locked out."""

    live_job_ids: list[str]
    prefixes: list[str]
    keys: list[str]  # objects rows name outside those prefixes
    clip_filter: ColumnElement[bool]  # corpus clips made from its avatars' videos


def resolve_tenant(settings: Settings, ref: str) -> tuple[str, str | None]:
    """(id, name) of the tenant with id or name `ref`; `(ref, None)` when none matches."""
    with session_scope(settings.database_url) as s:
        # an id wins over a name, should a tenant be named like another's id
        for column in (Tenant.id, Tenant.name):
            found = s.execute(select(Tenant.id, Tenant.name).where(column == ref)).first()
            if found is not None:
                return found[0], found[1]
    return ref, None


def _avatar_identity(avatar_id: str) -> str:
    # the identity `services.corpus.service.opted_in_avatars` gives an avatar's clips
    return f"avatar-{avatar_id}"


def _lock_out(s: Session, tenant_id: str) -> None:
    """Revoke every key and hide every avatar and render, so nothing new starts or is served."""
    now = utcnow()
    s.execute(
        update(ApiKey)
        .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    for model in (Avatar, Render):
        s.execute(
            update(model)
            .where(model.tenant_id == tenant_id, model.deleted_at.is_(None))
            .values(deleted_at=now)
        )


def _holdings(s: Session, tenant_id: str) -> _Holdings:
    """The tenant's live jobs, object prefixes, stray keys and corpus clips."""
    avatar_ids = list(s.scalars(select(Avatar.id).where(Avatar.tenant_id == tenant_id)))
    # exports are keyed by avatar id alone; everything else lives under the tenant's prefix
    prefixes = [tenant_prefix(tenant_id), *(export_prefix(a) for a in avatar_ids)]
    named = [
        *s.scalars(select(Avatar.source_key).where(Avatar.tenant_id == tenant_id)),
        *s.scalars(select(Render.audio_key).where(Render.tenant_id == tenant_id)),
        *s.scalars(select(Render.video_key).where(Render.tenant_id == tenant_id)),
        *s.scalars(select(Upload.key).where(Upload.tenant_id == tenant_id)),
        *s.scalars(select(Artifact.key).where(Artifact.tenant_id == tenant_id)),
    ]
    keys = sorted({k for key in named for k in outside(key, prefixes)})
    live = s.scalars(
        select(Job.id).where(Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL))
    ).all()
    clip_filter = or_(
        CorpusClip.identity.in_([_avatar_identity(a) for a in avatar_ids]),
        CorpusClip.source.startswith(f"store://{tenant_prefix(tenant_id)}", autoescape=True),
    )
    return _Holdings(list(live), prefixes, keys, clip_filter)


def _remove_corpus_clips(settings: Settings, clip_filter: ColumnElement[bool]) -> int:
    """Take the tenant's identities out of every corpus (objects go, shards are rebuilt)."""
    from services.corpus.service import remove_identity

    with session_scope(settings.database_url) as s:
        pairs = s.execute(
            select(CorpusClip.corpus_id, CorpusClip.identity)
            .where(clip_filter, CorpusClip.status != "removed")
            .distinct()
        ).all()
    for corpus_id, identity in pairs:
        remove_identity(settings, corpus_id, identity)
    return len(pairs)


def _remove_objects(store: ObjectStore, prefixes: list[str], keys: list[str]) -> int:
    """Delete the prefixes and single keys; returns how many objects there were."""
    removed = sum(store.delete_prefix(prefix) for prefix in prefixes)
    for key in keys:
        if store.exists(key):
            store.delete(key)
            removed += 1
    return removed


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def remove_tenant_redis_keys(client: RedisKeys, tenant_id: str) -> int:
    """Delete every Redis key whose name holds the tenant id (rate limits, counters, caches).

    Tenant ids are long and random, so no other tenant's key (nor a Celery queue) matches.
    """
    removed = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"*{_glob_escape(tenant_id)}*", count=_REDIS_BATCH):
        batch.append(key)
        if len(batch) >= _REDIS_BATCH:
            removed += int(client.delete(*batch))
            batch = []
    if batch:
        removed += int(client.delete(*batch))
    return removed


def _ownership(table: Table, tenant_id: str) -> ColumnElement[bool] | None:
    """Which rows of `table` the tenant owns: by a tenant column, or through a foreign key."""
    if table.name == Tenant.__tablename__:
        return table.c.id == tenant_id
    if "tenant_id" in table.c:
        return table.c.tenant_id == tenant_id
    for fk in table.foreign_keys:
        parent = fk.column.table
        owned = _ownership(parent, tenant_id) if parent is not table else None
        if owned is not None:
            return fk.parent.in_(select(fk.column).where(owned))
    return None


def _delete_rows(s: Session, tenant_id: str, clip_filter: ColumnElement[bool]) -> dict[str, int]:
    """Delete every row the tenant owns in every table, children first, the tenant last."""
    # clips of its avatars sit in the operator's corpora, so no foreign key leads to them
    gone = s.execute(delete(CorpusClip).where(clip_filter))
    counts = {CorpusClip.__tablename__: gone.rowcount}  # type: ignore[attr-defined]
    for table in reversed(Base.metadata.sorted_tables):
        owned = _ownership(table, tenant_id)
        if owned is not None:
            gone = s.execute(table.delete().where(owned))
            counts[table.name] = counts.get(table.name, 0) + gone.rowcount  # type: ignore[attr-defined]
    return {name: n for name, n in counts.items() if n}


def _remove_redis_keys(redis: RedisKeys | None, tenant_id: str) -> int:
    return 0 if redis is None else remove_tenant_redis_keys(redis, tenant_id)


def purge_tenant(
    settings: Settings,
    tenant_id: str,
    *,
    store: ObjectStore,
    jobs: JobService,
    redis: RedisKeys | None,
    grace_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> PurgeReport:
    """Hard-delete the tenant `tenant_id` and everything it owns; see the module docstring.

    `grace_s`: how long to wait after cancelling running jobs, so that their tasks notice at
    their next heartbeat and stop writing before the objects are removed.
    """
    report = PurgeReport(tenant_id)
    with session_scope(settings.database_url) as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is not None and tenant.name == OPERATOR_TENANT:
            raise PurgeRefused("operator_tenant", "the operator tenant owns corpora and models")
        if tenant is not None:
            report.name = tenant.name
            _lock_out(s, tenant_id)
    if report.name is None:  # deleted already: only what a late writer may have left
        report.objects_removed = _remove_objects(store, [tenant_prefix(tenant_id)], [])
        report.redis_keys_removed = _remove_redis_keys(redis, tenant_id)
        return report
    with session_scope(settings.database_url) as s:
        holdings = _holdings(s, tenant_id)
    report.jobs_cancelled = sum(jobs.cancel(job_id) for job_id in holdings.live_job_ids)
    if holdings.live_job_ids and grace_s > 0:
        sleep(grace_s)
    report.corpus_identities_removed = _remove_corpus_clips(settings, holdings.clip_filter)
    report.objects_removed = _remove_objects(store, holdings.prefixes, holdings.keys)
    report.redis_keys_removed = _remove_redis_keys(redis, tenant_id)
    with session_scope(settings.database_url) as s:
        report.rows_removed = _delete_rows(s, tenant_id, holdings.clip_filter)
    log.info(
        "tenant purged",
        extra={"fields": {"tenant_id": tenant_id, "rows": report.rows_removed}},
    )
    return report
