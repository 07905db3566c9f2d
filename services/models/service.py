"""Shared models in the database: create a versioned training job, list, resolve, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from services.corpus.service import CorpusError
from shared.config import Settings
from shared.db.models import Avatar, Corpus, Job, SharedModel, utcnow
from shared.db.session import session_scope
from shared.jobs import JobService
from shared.queue import celery_app
from shared.tenants import operator_tenant_id
from talkinghead.sharedmodels.contract import SharedModelError
from talkinghead.sharedmodels.registry import get_kind

MANIFEST = "manifest.json"


def model_prefix(kind: str, version: int) -> str:
    """Where one version of a shared model lives in the object store."""
    return f"models/{kind}/v{version:04d}"


def create_model(
    settings: Settings, kind_name: str, corpus_name: str, overrides: dict[str, Any]
) -> SharedModel:
    """Validate and record the next version of `kind_name` and start its training job."""
    kind = get_kind(kind_name)  # SharedModelError("unknown_model_kind") when absent
    config = kind.config(overrides)
    with session_scope(settings.database_url) as s:
        corpus = s.scalar(select(Corpus).where(Corpus.name == corpus_name))
        if corpus is None or corpus.deleted_at is not None:
            raise CorpusError("corpus_not_found", f"no corpus named {corpus_name!r}")
        job = s.scalar(select(Job).where(Job.resource_id == corpus.id))
        if job is None or job.status != "ready":
            state = job.status if job else "missing"
            raise CorpusError("corpus_not_ready", f"corpus {corpus_name!r} is {state}, not ready")
        latest = s.scalar(
            select(func.max(SharedModel.version)).where(SharedModel.kind == kind.name)
        )
        tenant = operator_tenant_id(s)
        model = SharedModel(
            tenant_id=tenant,
            kind=kind.name,
            family=kind.family,
            version=(latest or 0) + 1,
            corpus_id=corpus.id,
            corpus_name=corpus.name,
            licences=sorted(corpus.stats.get("licences", [])),
            config=config,
            metrics={},
        )
        s.add(model)
        s.flush()
        job_row = Job(tenant_id=tenant, kind="model", resource_id=model.id)
        s.add(job_row)
        s.flush()
        job_id = job_row.id
        s.expunge(model)
    JobService(settings, celery_app).dispatch(job_id)
    return model


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`KIND`, `KIND:VERSION` or `KIND@VERSION` → (kind, version or None for the latest)."""
    for sep in (":", "@"):
        if sep in ref:
            kind, _, version = ref.partition(sep)
            if not version.isdigit():
                raise SharedModelError("invalid_model_ref", f"{ref!r}: the version is a number")
            return kind, int(version)
    return ref, None


def resolve_model(settings: Settings, ref: str) -> tuple[SharedModel, Job | None]:
    """The model a reference names (an id, KIND or KIND:VERSION); latest ready if no version."""
    with session_scope(settings.database_url) as s:
        if ref.startswith("md_"):
            model = s.get(SharedModel, ref)
        else:
            kind, version = parse_ref(ref)
            query = select(SharedModel).where(
                SharedModel.kind == kind, SharedModel.deleted_at.is_(None)
            )
            if version is not None:
                query = query.where(SharedModel.version == version)
            else:  # the latest version that finished training
                ready = select(Job.resource_id).where(Job.kind == "model", Job.status == "ready")
                query = query.where(SharedModel.id.in_(ready))
            model = s.scalar(query.order_by(SharedModel.version.desc()).limit(1))
        if model is None or model.deleted_at is not None:
            raise SharedModelError("model_not_found", f"no shared model {ref!r}")
        job = s.scalar(select(Job).where(Job.resource_id == model.id))
        s.expunge(model)
        if job is not None:
            s.expunge(job)
        return model, job


def require_ready(settings: Settings, ref: str) -> SharedModel:
    """The model `ref` names, which must have finished training (what avatars build with)."""
    model, job = resolve_model(settings, ref)
    if job is None or job.status != "ready":
        state = job.status if job else "missing"
        raise SharedModelError("model_not_ready", f"shared model {ref!r} is {state}")
    return model


def model_view(model: SharedModel, job: Job | None) -> dict[str, Any]:
    """What `models list|show` print."""
    return {
        "id": model.id,
        "kind": model.kind,
        "family": model.family,
        "version": model.version,
        "status": job.status if job else "unknown",
        "progress": round(job.progress, 3) if job else 0.0,
        "error": {"code": job.error_code, "message": job.error_message}
        if job and job.error_code
        else None,
        "corpus": {"id": model.corpus_id, "name": model.corpus_name},
        "licences": model.licences,
        "config": model.config,
        "metrics": model.metrics,
        "manifest": model.manifest_key,
        "created_at": model.created_at.isoformat(),
    }


def list_models(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    """Every live model (optionally of one kind), newest version first."""
    with session_scope(settings.database_url) as s:
        query = select(SharedModel).where(SharedModel.deleted_at.is_(None))
        if kind:
            query = query.where(SharedModel.kind == kind)
        models = s.scalars(query.order_by(SharedModel.kind, SharedModel.version.desc())).all()
        jobs = {
            j.resource_id: j
            for j in s.scalars(select(Job).where(Job.resource_id.in_([m.id for m in models])))
        }
        return [model_view(m, jobs.get(m.id)) for m in models]


def avatars_using(settings: Settings, model_id: str) -> list[str]:
    """Ids of live avatars built with the model."""
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(Avatar.id, Avatar.models).where(
                Avatar.deleted_at.is_(None), Avatar.models.is_not(None)
            )
        ).all()
        return [avatar_id for avatar_id, models in rows if model_id in (models or [])]


def delete_model(settings: Settings, ref: str) -> dict[str, Any]:
    """Cancel the model's job, remove its objects and mark it deleted; names its avatars."""
    from shared.storage import build_store

    model, job = resolve_model(settings, ref)
    if job is not None:
        JobService(settings, celery_app).cancel(job.id)
    removed = build_store(settings).delete_prefix(model_prefix(model.kind, model.version) + "/")
    with session_scope(settings.database_url) as s:
        row = s.get(SharedModel, model.id)
        assert row is not None
        row.deleted_at = utcnow()
    return {
        "id": model.id,
        "objects_removed": removed,
        "avatars": avatars_using(settings, model.id),
    }


def models_trained_on(settings: Settings, corpus_id: str) -> list[dict[str, Any]]:
    """Live models trained on a corpus (what deleting its clips affects)."""
    with session_scope(settings.database_url) as s:
        models = s.scalars(
            select(SharedModel).where(
                SharedModel.corpus_id == corpus_id, SharedModel.deleted_at.is_(None)
            )
        ).all()
        return [{"id": m.id, "kind": m.kind, "version": m.version} for m in models]
