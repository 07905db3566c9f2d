"""SQLAlchemy 2 models: tenants, keys, avatars, renders, jobs, artifacts, webhooks, uploads,
corpora and shared models."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    """A short, prefixed, random identifier (e.g. `av_3f2a...`)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime that always comes back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class JobKind(str, enum.Enum):
    """What a job produces."""

    avatar = "avatar"
    render = "render"
    corpus = "corpus"  # operator job: a corpus built from a source of talking videos
    model = "model"  # operator job: a shared model trained from a corpus


class JobStatus(str, enum.Enum):
    """The fixed states of jobs; an avatar's stages in between come from its renderer family."""

    queued = "queued"
    ready = "ready"
    rendering = "rendering"
    encoding = "encoding"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset(
    {JobStatus.ready, JobStatus.done, JobStatus.failed, JobStatus.cancelled}
)
# The same, as the SQL condition of the partial index on unfinished jobs.
ACTIVE_JOB_SQL = "status NOT IN ('ready', 'done', 'failed', 'cancelled')"


class Base(DeclarativeBase):
    """Declarative base with a JSON type map."""

    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Tenant(Base):
    """An isolated customer; owns keys, avatars and renders."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tn"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The operator's overrides of the default limits (shared/limits.py); None: all defaults.
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class ApiKey(Base):
    """An API key, stored only as its SHA-256 digest."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Avatar(Base):
    """A person's avatar and the consent recorded when it was requested."""

    __tablename__ = "avatars"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("av"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    renderer: Mapped[str] = mapped_column(String(40))
    preset: Mapped[str] = mapped_column(String(40))
    consent: Mapped[bool] = mapped_column(Boolean)
    consent_at: Mapped[datetime] = mapped_column(default=utcnow)
    consent_key_id: Mapped[str] = mapped_column(String(40))
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source_key: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(10), default="video", server_default="video")
    # Shared models (ids) the avatar was built with; a deleted model lists its avatars.
    models: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # The tenant agreed that this avatar's video may join a training corpus.
    corpus_opt_in: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_avatars_tenant_created", "tenant_id", "created_at"),)


class Render(Base):
    """A request to make a talking video of an avatar from audio."""

    __tablename__ = "renders"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rn"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"), index=True)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    audio_key: Mapped[str] = mapped_column(Text)
    video_key: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_renders_tenant_created", "tenant_id", "created_at"),)


class Job(Base):
    """The durable state of the work behind one avatar or render (not Celery's)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(40), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued.value, index=True)
    stage: Mapped[str] = mapped_column(String(40), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    segment: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(60), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The stages of this job, pinned from its family at creation; None for older jobs.
    stages: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(80), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    # Tenant quotas count a tenant's unfinished jobs on every submission and job start; a
    # partial index keeps that cheap however many finished jobs the table holds.
    __table_args__ = (
        Index(
            "ix_jobs_tenant_active",
            "tenant_id",
            "status",
            postgresql_where=text(ACTIVE_JOB_SQL),
            sqlite_where=text(ACTIVE_JOB_SQL),
        ),
    )


class Artifact(Base):
    """An object a job wrote to the store; one per (resource, kind)."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("art"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    resource_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("resource_id", "kind", name="uq_artifact_resource_kind"),)


class WebhookDelivery(Base):
    """One webhook event for a terminal state, with its delivery attempts."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    resource_id: Mapped[str] = mapped_column(String(40), index=True)
    event: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    log: Mapped[dict[str, Any]] = mapped_column(default=dict)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (UniqueConstraint("resource_id", "event", name="uq_webhook_resource_event"),)


class IdempotencyRecord(Base):
    """Maps a tenant's Idempotency-Key to the request it first created."""

    __tablename__ = "idempotency_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    scope: Mapped[str] = mapped_column(String(80))
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("tenant_id", "scope", "key", name="uq_idem_tenant_key"),)


class Upload(Base):
    """A presigned upload slot; its object becomes an avatar's video or a render's audio."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("up"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(20))
    max_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    consumed_at: Mapped[datetime | None] = mapped_column(default=None)


class Corpus(Base):
    """A multi-speaker training corpus, built by an operator job from a source of videos."""

    __tablename__ = "corpora"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cp"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)  # the SOURCE as the operator gave it
    prefix: Mapped[str] = mapped_column(Text)  # where shards and index live in the store
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class CorpusClip(Base):
    """One source file of a corpus: its tags, its lease while processed, and its outcome."""

    __tablename__ = "corpus_clips"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cc"))
    corpus_id: Mapped[str] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(Text)  # file:// or s3:// URI
    identity: Mapped[str] = mapped_column(String(200))
    speaker: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(40))
    licence: Mapped[str] = mapped_column(Text)
    # pending -> running -> accepted | refused | duplicate
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    code: Mapped[str | None] = mapped_column(String(60), default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    key: Mapped[str | None] = mapped_column(Text, default=None)  # the clip tar in the store
    utterances: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)  # refused parts, timings
    lease_owner: Mapped[str | None] = mapped_column(String(80), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times processing started
    completions: Mapped[int] = mapped_column(Integer, default=0)  # times it was finished
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (UniqueConstraint("corpus_id", "source", name="uq_corpus_clip_source"),)


class SharedModel(Base):
    """A versioned model trained from a corpus (e.g. a motion generator), used by avatars."""

    __tablename__ = "shared_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("md"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(60))
    family: Mapped[str] = mapped_column(String(40), default="")
    version: Mapped[int] = mapped_column(Integer)
    # Not a foreign key: a model outlives its corpus and still names what it learnt from.
    corpus_id: Mapped[str] = mapped_column(String(40), index=True)
    corpus_name: Mapped[str] = mapped_column(String(200))
    licences: Mapped[list[str]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    manifest_key: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (UniqueConstraint("kind", "version", name="uq_shared_model_version"),)
