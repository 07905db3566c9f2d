"""Corpus jobs in the database: start or resume a build, lease clips, record outcomes."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import Corpus, CorpusClip, Job, JobStatus, utcnow
from shared.db.session import session_scope
from shared.jobs import TERMINAL, JobService
from shared.queue import celery_app
from shared.tenants import operator_tenant_id

CLIP_DONE = ("accepted", "refused", "duplicate", "removed")
CLIP_TASK = "talkinghead.corpus_clip"


class CorpusError(ValueError):
    """An operator request about corpora that cannot be done; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def corpus_prefix(name: str) -> str:
    """Where a corpus' shards, index and clip tars live in the object store."""
    return f"corpora/{name}"


def start_build(
    settings: Settings, name: str, source: str, config: dict[str, Any]
) -> tuple[str, str]:
    """Create the corpus `name` and its job, or resume it; returns (corpus id, job id).

    A corpus that exists is built again from the same SOURCE: clips already finished are kept,
    new files are added, and a finished or failed job starts over at the scan.
    """
    with session_scope(settings.database_url) as s:
        corpus = s.scalar(select(Corpus).where(Corpus.name == name))
        if corpus is not None and corpus.deleted_at is not None:
            raise CorpusError("corpus_deleted", f"corpus {name!r} was deleted; choose a new name")
        if corpus is not None and corpus.source != source:
            raise CorpusError(
                "corpus_exists",
                f"corpus {name!r} is built from {corpus.source!r}; give a new name for {source!r}",
            )
        if corpus is None:
            tenant = operator_tenant_id(s)
            corpus = Corpus(tenant_id=tenant, name=name, source=source, prefix=corpus_prefix(name))
            corpus.config = config
            s.add(corpus)
            s.flush()
            job = Job(tenant_id=tenant, kind="corpus", resource_id=corpus.id)
            s.add(job)
            s.flush()
        else:
            corpus.config = config
            found = s.scalar(select(Job).where(Job.resource_id == corpus.id))
            assert found is not None
            if found.status in TERMINAL:
                restart(found)
            job = found
        corpus_id, job_id = corpus.id, job.id
    JobService(settings, celery_app).dispatch(job_id)
    return corpus_id, job_id


def restart(job: Job) -> None:
    """Put a finished job back to its first stage (a new step, so old messages are void)."""
    now = utcnow()
    job.status = JobStatus.queued.value
    job.stage = JobStatus.queued.value
    job.segment += 1
    job.attempts = 0
    job.progress = 0.0
    job.error_code = job.error_message = None
    job.lease_owner = None
    job.enqueued_at = job.finished_at = None
    job.updated_at = now
    job.version += 1


def dispatch_clips(settings: Settings, corpus_id: str) -> tuple[int, int]:
    """Send a task for every clip that needs one; returns (sent, clips not finished).

    A clip needs one when it was never sent, when its message may be lost (sent longer ago
    than the broker's visibility timeout twice), or when its worker stopped heartbeating.
    """
    now = utcnow()
    lost = now - timedelta(
        seconds=max(2 * settings.visibility_timeout_s, settings.heartbeat_stale_s)
    )
    stale = now - timedelta(seconds=settings.heartbeat_stale_s)
    with session_scope(settings.database_url) as s:
        open_count = s.scalar(
            select(func.count())
            .select_from(CorpusClip)
            .where(CorpusClip.corpus_id == corpus_id, CorpusClip.status.not_in(CLIP_DONE))
        )
        due = s.scalars(
            select(CorpusClip.id).where(
                CorpusClip.corpus_id == corpus_id,
                or_(
                    (CorpusClip.status == "pending")
                    & or_(CorpusClip.enqueued_at.is_(None), CorpusClip.enqueued_at < lost),
                    (CorpusClip.status == "running") & (CorpusClip.heartbeat_at < stale),
                ),
            )
        ).all()
    for clip_id in due:
        celery_app.send_task(CLIP_TASK, args=[clip_id])
        with session_scope(settings.database_url) as s:
            s.execute(update(CorpusClip).where(CorpusClip.id == clip_id).values(enqueued_at=now))
    return len(due), int(open_count or 0)


def claim_clip(settings: Settings, clip_id: str, owner: str) -> CorpusClip | Literal["busy"] | None:
    """Lease a clip for processing: the row, "busy" if a live worker holds it, None if done."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.heartbeat_stale_s)
    with session_scope(settings.database_url) as s:
        clip = s.get(CorpusClip, clip_id)
        if clip is None or clip.status in CLIP_DONE:
            return None
        corpus = s.get(Corpus, clip.corpus_id)
        if corpus is None or corpus.deleted_at is not None:
            return None
        res = s.execute(
            update(CorpusClip)
            .where(
                CorpusClip.id == clip_id,
                CorpusClip.status.not_in(CLIP_DONE),
                or_(CorpusClip.lease_owner.is_(None), CorpusClip.heartbeat_at < stale),
            )
            .values(
                status="running",
                lease_owner=owner,
                heartbeat_at=now,
                attempts=CorpusClip.attempts + 1,
            )
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return "busy"
        s.refresh(clip)
        s.expunge(clip)
        return clip


def heartbeat_clip(settings: Settings, clip_id: str, owner: str) -> bool:
    """Prove the clip's holder is alive; False when it lost the lease."""
    with session_scope(settings.database_url) as s:
        res = s.execute(
            update(CorpusClip)
            .where(CorpusClip.id == clip_id, CorpusClip.lease_owner == owner)
            .values(heartbeat_at=utcnow())
        )
        return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def release_clip(settings: Settings, clip_id: str, owner: str) -> None:
    """Give a clip back after a crash in its step so a retry can take it at once."""
    with session_scope(settings.database_url) as s:
        s.execute(
            update(CorpusClip)
            .where(CorpusClip.id == clip_id, CorpusClip.lease_owner == owner)
            .values(status="pending", lease_owner=None, enqueued_at=None)
        )


def finish_clip(settings: Settings, clip_id: str, owner: str, **values: Any) -> bool:
    """Record a clip's outcome once; False if another worker took it meanwhile."""
    values.update(lease_owner=None, finished_at=utcnow(), completions=CorpusClip.completions + 1)
    with session_scope(settings.database_url) as s:
        res = s.execute(
            update(CorpusClip)
            .where(
                CorpusClip.id == clip_id,
                CorpusClip.lease_owner == owner,
                CorpusClip.status == "running",
            )
            .values(**values)
        )
        return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def duplicate_of(settings: Settings, clip: CorpusClip, sha256: str) -> str | None:
    """The source of another clip of the corpus with the same content, if one came first."""
    with session_scope(settings.database_url) as s:
        return s.scalar(
            select(CorpusClip.source).where(
                CorpusClip.corpus_id == clip.corpus_id,
                CorpusClip.sha256 == sha256,
                CorpusClip.id != clip.id,
                or_(
                    CorpusClip.status.in_(("accepted", "refused")),
                    (CorpusClip.status == "running") & (CorpusClip.id < clip.id),
                ),
            )
        )


def set_sha(settings: Settings, clip_id: str, owner: str, sha256: str) -> None:
    """Record a leased clip's content hash (duplicates are found by it)."""
    with session_scope(settings.database_url) as s:
        s.execute(
            update(CorpusClip)
            .where(CorpusClip.id == clip_id, CorpusClip.lease_owner == owner)
            .values(sha256=sha256)
        )


def clip_counts(s: Session, corpus_id: str) -> dict[str, int]:
    """How many of the corpus' clips are in each status."""
    rows = s.execute(
        select(CorpusClip.status, func.count())
        .where(CorpusClip.corpus_id == corpus_id)
        .group_by(CorpusClip.status)
    ).all()
    return {status: int(n) for status, n in rows}


def wake_when_done(settings: Settings, corpus_id: str) -> bool:
    """Update the build's progress; when no clip is left, wake the waiting build step."""
    with session_scope(settings.database_url) as s:
        counts = clip_counts(s, corpus_id)
        total = sum(counts.values())
        finished = sum(counts.get(k, 0) for k in CLIP_DONE)
        job = s.scalar(select(Job).where(Job.resource_id == corpus_id))
        if job is None or job.status != "building":
            return False
        s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "building")
            .values(
                progress=0.05 + 0.85 * finished / max(1, total),
                updated_at=utcnow(),
                version=Job.version + 1,
            )
        )
        job_id, idle = job.id, job.lease_owner is None
    if finished < total or not idle:
        return False
    return JobService(settings, celery_app).dispatch(job_id)


def add_clips(settings: Settings, corpus_id: str, entries: list[Any]) -> int:
    """Insert the listed files that the corpus does not have yet; returns how many were new."""
    with session_scope(settings.database_url) as s:
        known = set(s.scalars(select(CorpusClip.source).where(CorpusClip.corpus_id == corpus_id)))
        new = [e for e in entries if e.uri not in known]
        for e in new:
            s.add(
                CorpusClip(
                    corpus_id=corpus_id,
                    source=e.uri,
                    identity=e.identity,
                    speaker=e.speaker,
                    language=e.language,
                    licence=e.licence,
                    info={},
                )
            )
        try:
            s.flush()
        except IntegrityError:  # a concurrent scan inserted them first: same rows
            s.rollback()
            return 0
        return len(new)


def clip_report(settings: Settings, corpus_id: str) -> list[dict[str, Any]]:
    """Every source of the corpus with its outcome (the per-clip report)."""
    with session_scope(settings.database_url) as s:
        rows = s.scalars(
            select(CorpusClip).where(CorpusClip.corpus_id == corpus_id).order_by(CorpusClip.source)
        ).all()
        return [
            {
                "source": r.source,
                "identity": r.identity,
                "language": r.language,
                "status": r.status,
                "code": r.code,
                "message": r.message,
                "utterances": r.utterances,
                "seconds": round(r.seconds, 3),
                "sha256": r.sha256,
                "attempts": r.attempts,
                "completions": r.completions,
                "refused_parts": r.info.get("refused", []),
                "elapsed_s": r.info.get("elapsed_s"),
                "source_s": r.info.get("source_s"),
            }
            for r in rows
        ]


def status_counts(report: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and by refusal code."""
    return {
        "by_status": dict(Counter(r["status"] for r in report)),
        "by_code": dict(Counter(r["code"] for r in report if r["code"])),
    }


def remove_identity(settings: Settings, corpus_id: str, identity: str) -> dict[str, Any]:
    """Hard-delete one identity: its clip objects go, its rows stay as `removed` (so a rescan
    of the same source does not add it back), and the shards are rebuilt without it."""
    from shared.storage import build_store

    store = build_store(settings)
    with session_scope(settings.database_url) as s:
        clips = s.scalars(
            select(CorpusClip).where(
                CorpusClip.corpus_id == corpus_id, CorpusClip.identity == identity
            )
        ).all()
        if not clips:
            raise CorpusError("identity_not_found", f"the corpus has no identity {identity!r}")
        keys = [c.key for c in clips if c.key]
        for clip in clips:
            clip.status, clip.key, clip.code = "removed", None, "removed"
            clip.message = "removed by the operator"
            clip.utterances, clip.seconds = 0, 0.0
        job = s.scalar(select(Job).where(Job.resource_id == corpus_id))
        rebuild = job is not None and job.status in TERMINAL
        if job is not None and rebuild:
            restart(job)
        job_id = job.id if job else None
    for key in keys:
        store.delete(key)
    if rebuild and job_id:
        JobService(settings, celery_app).dispatch(job_id)
    return {"identity": identity, "clips_removed": len(clips), "rebuilding": rebuild}


def delete_corpus(settings: Settings, corpus_id: str) -> dict[str, Any]:
    """Hard-delete a corpus: cancel its job, remove every object and its clip rows."""
    from sqlalchemy import delete

    from shared.storage import build_store

    with session_scope(settings.database_url) as s:
        corpus = s.get(Corpus, corpus_id)
        if corpus is None:
            raise CorpusError("corpus_not_found", f"no corpus {corpus_id}")
        prefix = corpus.prefix
        job_id = s.scalar(select(Job.id).where(Job.resource_id == corpus_id))
    if job_id:
        JobService(settings, celery_app).cancel(job_id)
    removed = build_store(settings).delete_prefix(prefix + "/")
    with session_scope(settings.database_url) as s:
        s.execute(delete(CorpusClip).where(CorpusClip.corpus_id == corpus_id))
        corpus = s.get(Corpus, corpus_id)
        assert corpus is not None
        corpus.deleted_at = utcnow()
        corpus.stats = {}
        corpus.name = f"{corpus.name[:150]}.deleted.{corpus.id}"  # the name can be used again
    return {"corpus": corpus_id, "objects_removed": removed}


def opted_in_avatars(settings: Settings) -> list[Any]:
    """Tenants' avatar videos whose tenant opted them into corpora (never any other)."""
    from services.corpus.sources import SourceEntry
    from shared.db.models import Avatar

    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(Avatar.id, Avatar.tenant_id, Avatar.source_key).where(
                Avatar.corpus_opt_in.is_(True),
                Avatar.deleted_at.is_(None),
                Avatar.source == "video",
            )
        ).all()
    return [
        SourceEntry(
            uri=f"store://{key}",
            identity=f"avatar-{avatar_id}",
            speaker=f"avatar-{avatar_id}",
            language="und",
            licence=f"opted in by tenant {tenant_id}",
        )
        for avatar_id, tenant_id, key in rows
    ]
