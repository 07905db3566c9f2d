"""Creating avatars and renders: validate, stream the media into the store, commit once.

Everything here is blocking and runs in a worker thread. A refused request leaves no row and
no object behind: the object is written only after the cheap checks, and deleted again on any
later failure; rows are written in a single transaction together with the idempotency record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.api.deps import Principal
from services.api.errors import ApiError, validation_error
from services.api.media import SNIFF_BYTES, MediaKind, SniffedStream, check_head
from services.api.multipart import FormSpec, StreamingForm
from services.api.queries import find_avatar, find_render, not_found
from shared import schemas
from shared.config import Settings
from shared.db.models import (
    Avatar,
    IdempotencyRecord,
    Job,
    JobStatus,
    Render,
    Upload,
    new_id,
    utcnow,
)
from shared.jobs import PIPELINES, JobService
from shared.netguard import ForbiddenTarget, check_callback_url
from shared.resources import avatar_view, render_view
from shared.storage import ObjectNotFound, ObjectStore, ObjectTooLarge, tenant_key
from talkinghead.families.contract import SOURCES
from talkinghead.families.registry import get_family

log = logging.getLogger(__name__)

METADATA_MAX_BYTES = 4096
AVATAR_JSON_MAX_BYTES = 64 * 1024
RENDER_JSON_MAX_BYTES = 8 * 1024 * 1024  # per-frame pose and eye lists can be long
FIELD_MAX_BYTES = 64 * 1024
OPTIONS_FIELD_MAX_BYTES = 8 * 1024 * 1024
RENDER_OPTION_FIELDS = ("resolution", "background", "pose", "eyes")
# Stands in for `upload_id` when a multipart form is validated with the JSON models.
_FORM_UPLOAD_ID = "multipart"
_CONSENT_DETAIL = "consent must be true: attest that the person in the video or photo agreed"

# The avatar's source is one file part: `video` or `image` (what the avatar is made from).
AVATAR_FORM = FormSpec(
    file_fields=SOURCES,
    field_limits=dict.fromkeys(
        ("consent", "name", "renderer", "preset", "callback_url", "metadata"), FIELD_MAX_BYTES
    ),
    too_large_codes={"metadata": "metadata_too_large"},
    second_file_code="multiple_sources",
)
RENDER_FORM = FormSpec(
    file_fields=("audio",),
    field_limits={
        "callback_url": FIELD_MAX_BYTES,
        "metadata": FIELD_MAX_BYTES,
        "resolution": FIELD_MAX_BYTES,
        "background": FIELD_MAX_BYTES,
        "options": OPTIONS_FIELD_MAX_BYTES,
        "pose": OPTIONS_FIELD_MAX_BYTES,
        "eyes": OPTIONS_FIELD_MAX_BYTES,
    },
    too_large_codes={"metadata": "metadata_too_large"},
)

_BOOL = TypeAdapter(bool)
V = TypeVar("V", bound=BaseModel)


@dataclass
class Intake:
    """What creating a resource needs, bound to the caller."""

    settings: Settings
    store: ObjectStore
    jobs: JobService
    sessions: sessionmaker[Session]
    principal: Principal
    checked_callbacks: set[str] = field(default_factory=set)  # resolve each URL once

    @property
    def tenant_id(self) -> str:
        """The caller's tenant."""
        return self.principal.tenant_id


@dataclass(frozen=True)
class Created(Generic[V]):
    """A created (or, for a repeated Idempotency-Key, the earlier) resource."""

    view: V
    job_id: str | None = None  # the new job to enqueue; None for a replay

    @property
    def replayed(self) -> bool:
        """Whether an earlier request with the same Idempotency-Key made the resource."""
        return self.job_id is None


class _UploadTaken(Exception):
    """The upload was consumed by a concurrent request between our check and our update."""


# -- field checks ----------------------------------------------------------------------
def check_metadata(metadata: Mapping[str, Any]) -> None:
    """422 `metadata_too_large` above 4 KiB of JSON."""
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > METADATA_MAX_BYTES:
        raise ApiError(
            422, "metadata_too_large", f"metadata is {size} bytes of JSON; at most 4096 allowed"
        )


def callback_or_none(url: str | None) -> str | None:
    """An empty callback (as HTML forms send for blank fields) means no callback."""
    return (url or "").strip() or None


def check_callback(intake: Intake, url: str | None) -> None:
    """422 `callback_url_forbidden` unless the URL is http(s) to an allowed address."""
    url = callback_or_none(url)
    if url is None or url in intake.checked_callbacks:
        return
    try:
        check_callback_url(url, allow_private=intake.settings.allow_private_callbacks)
    except ForbiddenTarget as exc:
        raise ApiError(422, "callback_url_forbidden", str(exc)) from None
    intake.checked_callbacks.add(url)


def check_source(renderer: str, source: str) -> None:
    """422 `unsupported_source` unless the renderer family makes avatars from this source kind."""
    accepted = get_family(renderer).sources
    if source not in accepted:
        raise ApiError(
            422,
            "unsupported_source",
            f"renderer {renderer!r} accepts {' or '.join(sorted(accepted))} sources only, "
            f"not {source}",
        )


def _source_missing() -> ApiError:
    return ApiError(
        422, "source_required", "send the portrait as one file part: `video` or `image`"
    )


def _consent_required() -> ApiError:
    return ApiError(422, "consent_required", _CONSENT_DETAIL)


def _check_consent(fields: Mapping[str, str], *, final: bool) -> None:
    raw = fields.get("consent")
    if raw is None:
        if final:
            raise _consent_required()
        return
    try:
        given = _BOOL.validate_python(raw.strip())
    except ValidationError as exc:
        raise validation_error(exc, ("consent",)) from None
    if not given:
        raise _consent_required()


def _json_field(name: str, raw: str, *, text_fallback: bool) -> Any:
    """A form field holding JSON; plain text passes through where a bare string is allowed."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        if text_fallback:
            return raw
        raise ApiError(422, "validation_error", f"{name}: not valid JSON") from None


def parse_json_body(model: type[V], body: bytes) -> V:
    """Validate a JSON request body; a missing `consent` is `consent_required`."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "missing" and tuple(e["loc"]) == ("consent",) for e in exc.errors()):
            raise _consent_required() from None
        raise validation_error(exc) from None


def avatar_fields(intake: Intake, fields: Mapping[str, str], *, final: bool) -> AvatarFields:
    """Validate the avatar form fields seen so far (all of them when `final`)."""
    _check_consent(fields, final=final)
    data: dict[str, Any] = {
        k: fields[k] for k in ("name", "renderer", "preset", "callback_url") if k in fields
    }
    if "metadata" in fields:
        data["metadata"] = _json_field("metadata", fields["metadata"], text_fallback=False)
    try:
        model = schemas.AvatarCreate.model_validate(
            {**data, "consent": True, "upload_id": _FORM_UPLOAD_ID}
        )
    except ValidationError as exc:
        raise validation_error(exc) from None
    check_metadata(model.metadata)
    if "callback_url" in fields:
        check_callback(intake, model.callback_url)
    return AvatarFields.from_model(model)


def render_fields(intake: Intake, fields: Mapping[str, str]) -> RenderFields:
    """Validate the render form fields seen so far."""
    prefix: tuple[str, ...] = ()
    options_data: dict[str, Any] = {}
    if "options" in fields:
        given = _json_field("options", fields["options"], text_fallback=False)
        if not isinstance(given, dict):
            raise ApiError(422, "validation_error", "options: must be a JSON object")
        options_data.update(given)
        prefix = ("options",)
    for name in RENDER_OPTION_FIELDS:
        if name in fields:  # individual fields override the same key in `options`
            options_data[name] = _json_field(name, fields[name], text_fallback=True)
            prefix = ()
    try:
        options = schemas.RenderOptions.model_validate(options_data)
    except ValidationError as exc:
        raise validation_error(exc, prefix) from None
    data: dict[str, Any] = {}
    if "callback_url" in fields:
        data["callback_url"] = fields["callback_url"]
    if "metadata" in fields:
        data["metadata"] = _json_field("metadata", fields["metadata"], text_fallback=False)
    try:
        model = schemas.RenderCreate.model_validate(
            {**options.model_dump(), **data, "upload_id": _FORM_UPLOAD_ID}
        )
    except ValidationError as exc:
        raise validation_error(exc) from None
    check_metadata(model.metadata)
    check_callback(intake, model.callback_url)
    return RenderFields.from_model(model)


@dataclass(frozen=True)
class AvatarFields:
    """The validated, non-file part of an avatar request."""

    name: str
    renderer: str
    preset: str
    callback_url: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_model(cls, model: schemas.AvatarCreate) -> AvatarFields:
        """Take the fields of a validated JSON or form body; the preset must be the family's."""
        family = get_family(model.renderer)
        preset = model.preset or family.default_preset
        if preset not in family.presets:
            raise ApiError(
                422,
                "unknown_preset",
                f"preset: {model.renderer} offers {', '.join(family.presets)}, not {preset!r}",
            )
        return cls(
            model.name,
            model.renderer,
            preset,
            callback_or_none(model.callback_url),
            model.metadata,
        )

    def canonical(self) -> dict[str, Any]:
        """A stable form for request hashing."""
        return {
            "name": self.name,
            "renderer": self.renderer,
            "preset": self.preset,
            "callback_url": self.callback_url,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class RenderFields:
    """The validated, non-file part of a render request."""

    options: schemas.RenderOptions
    callback_url: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_model(cls, model: schemas.RenderCreate) -> RenderFields:
        """Take the fields of a validated JSON or form body."""
        options = schemas.RenderOptions.model_validate(
            model.model_dump(include=set(RENDER_OPTION_FIELDS))
        )
        return cls(options, callback_or_none(model.callback_url), model.metadata)

    def canonical(self) -> dict[str, Any]:
        """A stable form for request hashing."""
        return {
            "options": self.options.model_dump(mode="json"),
            "callback_url": self.callback_url,
            "metadata": self.metadata,
        }


def request_hash(payload: Mapping[str, Any]) -> str:
    """SHA-256 of a canonical JSON rendering."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- media -----------------------------------------------------------------------------
def stream_media(
    intake: Intake, key: str, chunks: Iterable[bytes], kind: MediaKind, max_bytes: int
) -> SniffedStream:
    """Sniff, hash and store a file stream; 413 past `max_bytes` (nothing is left behind)."""
    sniffed = SniffedStream(chunks, kind)
    try:
        intake.store.put_stream(
            key, iter(sniffed), content_type="application/octet-stream", max_bytes=max_bytes
        )
    except ObjectTooLarge:
        raise ApiError(
            413, "file_too_large", f"the {kind} file exceeds {max_bytes} bytes"
        ) from None
    return sniffed


def discard(store: ObjectStore, key: str) -> None:
    """Delete an object this request wrote; a failure is logged so the real error surfaces."""
    try:
        store.delete(key)
    except Exception:
        log.warning("could not delete %s", key, exc_info=True)


def _claim_upload(
    session: Session, intake: Intake, upload_id: str, kind: MediaKind, *, consume: bool
) -> Upload:
    """Check an upload slot is the tenant's, unused, complete and of the right kind."""
    now = utcnow()
    upload = session.scalar(
        select(Upload).where(Upload.id == upload_id, Upload.tenant_id == intake.tenant_id)
    )
    if (
        upload is None
        or upload.purpose != kind
        or upload.consumed_at is not None
        or upload.expires_at <= now
    ):
        raise ApiError(404, "upload_not_found", f"no unused {kind} upload {upload_id[:60]!r}")
    try:
        size = intake.store.size(upload.key)
    except ObjectNotFound:
        raise ApiError(
            409, "upload_incomplete", f"nothing has been uploaded to {upload_id!r} yet"
        ) from None
    if size > upload.max_bytes:
        raise ApiError(
            409, "upload_incomplete", f"the upload exceeds the slot's {upload.max_bytes} bytes"
        )
    check_head(kind, b"".join(intake.store.iter_range(upload.key, 0, SNIFF_BYTES - 1)))
    if consume:
        res = session.execute(
            update(Upload)
            .where(Upload.id == upload.id, Upload.consumed_at.is_(None))
            .values(consumed_at=now)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise _UploadTaken()
    return upload


def _check_background(session: Session, intake: Intake, options: schemas.RenderOptions) -> None:
    background = options.background
    if background.kind == "colour" and background.colour is None:
        raise ApiError(422, "validation_error", "background.colour: required for kind 'colour'")
    if background.kind == "image":
        if background.upload_id is None:
            raise ApiError(
                422, "validation_error", "background.upload_id: required for kind 'image'"
            )
        # an image may back many renders, so it is checked but not consumed
        _claim_upload(session, intake, background.upload_id, "image", consume=False)


# -- committing ------------------------------------------------------------------------
def _find_record(
    session: Session, intake: Intake, scope: str, key: str
) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.tenant_id == intake.tenant_id,
            IdempotencyRecord.scope == scope,
            IdempotencyRecord.key == key,
        )
    )


def _reused() -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was already used for a different request",
    )


@dataclass
class _Commit(Generic[V]):
    """One creation: the rows to insert and how to show an existing resource."""

    intake: Intake
    scope: str
    idempotency_key: str | None
    request_hash: str
    written_key: str | None  # the object this request stored, removed unless kept
    insert: Callable[[Session], tuple[V, Job]]  # adds the rows; returns the view and the job
    load: Callable[[Session, str], V | None]

    def _replay(self, session: Session) -> Created[V] | None:
        if self.idempotency_key is None:
            return None
        record = _find_record(session, self.intake, self.scope, self.idempotency_key)
        if record is None:
            return None
        if record.request_hash != self.request_hash:
            raise _reused()
        view = self.load(session, record.resource_id)
        if view is None:
            raise ApiError(
                422, "idempotency_key_reused", "the resource made with this key was deleted"
            )
        return Created(view)

    def run(self) -> Created[V]:
        keep = False
        try:
            with self.intake.sessions() as session:
                replay = self._replay(session)
                if replay is not None:
                    return replay
                try:
                    view, job = self.insert(session)
                    if self.idempotency_key is not None:
                        session.add(
                            IdempotencyRecord(
                                tenant_id=self.intake.tenant_id,
                                key=self.idempotency_key,
                                scope=self.scope,
                                request_hash=self.request_hash,
                                resource_id=job.resource_id,
                            )
                        )
                    session.commit()
                except (IntegrityError, _UploadTaken) as exc:
                    # a concurrent request with the same key may have won: answer with its
                    # resource (ours is rolled back and our object removed)
                    session.rollback()
                    with self.intake.sessions() as fresh:
                        replay = self._replay(fresh)
                    if replay is not None:
                        return replay
                    if isinstance(exc, _UploadTaken):
                        raise ApiError(
                            404, "upload_not_found", "the upload was used by another request"
                        ) from None
                    raise
            keep = True
        finally:
            if not keep and self.written_key is not None:
                discard(self.intake.store, self.written_key)
        return Created(view, job.id)


def dispatch_job(jobs: JobService, job_id: str) -> None:
    """Enqueue a committed job; a broker failure is logged, not raised."""
    try:
        jobs.dispatch(job_id)
    except Exception:
        # the job is committed; the reconciler enqueues jobs that never were
        log.warning("could not enqueue job %s", job_id, exc_info=True)


def _new_job(
    tenant_id: str, kind: str, resource_id: str, now: datetime, stages: Iterable[str]
) -> Job:
    return Job(
        tenant_id=tenant_id,
        kind=kind,
        resource_id=resource_id,
        stages=list(stages),
        status=JobStatus.queued.value,
        stage="queued",
        progress=0.0,
        created_at=now,
        updated_at=now,
    )


def _avatar_commit(
    intake: Intake,
    avatar_id: str,
    fields: AvatarFields,
    *,
    source: MediaKind,
    source_key: str | None,
    upload_id: str | None,
    idempotency_key: str | None,
    hashed: str,
) -> Created[schemas.Avatar]:
    def insert(session: Session) -> tuple[schemas.Avatar, Job]:
        key = source_key
        if upload_id is not None:
            key = _claim_upload(session, intake, upload_id, source, consume=True).key
        assert key is not None
        now = utcnow()
        avatar = Avatar(
            id=avatar_id,
            tenant_id=intake.tenant_id,
            name=fields.name,
            renderer=fields.renderer,
            preset=fields.preset,
            consent=True,
            consent_at=now,
            consent_key_id=intake.principal.key_id,
            callback_url=fields.callback_url,
            meta=fields.metadata,
            metrics={},
            source_key=key,
            source=source,
            created_at=now,
        )
        job = _new_job(
            intake.tenant_id, "avatar", avatar_id, now, get_family(fields.renderer).stages
        )
        session.add_all([avatar, job])
        session.flush()
        return avatar_view(avatar, job), job

    def load(session: Session, resource_id: str) -> schemas.Avatar | None:
        found = find_avatar(session, intake.tenant_id, resource_id)
        return None if found is None else avatar_view(*found)

    return _Commit(intake, "avatars", idempotency_key, hashed, source_key, insert, load).run()


def create_avatar_from_form(
    intake: Intake, chunks: Iterable[bytes], boundary: bytes, idempotency_key: str | None
) -> Created[schemas.Avatar]:
    """`POST /v1/avatars` with a multipart body, the video or photo streamed into the store."""
    avatar_id = new_id("av")
    form = StreamingForm(chunks, boundary, AVATAR_FORM)
    written: list[str] = []
    stored: list[tuple[MediaKind, SniffedStream]] = []

    def before_file(name: str, seen: Mapping[str, str]) -> None:
        fields = avatar_fields(intake, seen, final=False)
        if "renderer" in seen:  # else a later field may still name a family that takes it
            check_source(fields.renderer, name)

    def consume(name: str, file_chunks: Iterator[bytes]) -> None:
        kind: MediaKind = "image" if name == "image" else "video"
        key = tenant_key(intake.tenant_id, "avatars", avatar_id, "source", kind)
        written.append(key)  # before streaming: a partly written object is removed too
        limit = upload_limit(intake.settings, kind)
        stored.append((kind, stream_media(intake, key, file_chunks, kind, limit)))

    try:
        fields = form.read(before_file, consume)
        if not stored:
            raise _source_missing()
        avatar = avatar_fields(intake, fields, final=True)
        source, sniffed = stored[0]
        check_source(avatar.renderer, source)
    except BaseException:
        for key in written:
            discard(intake.store, key)
        raise
    # `video_sha256` for videos, as before photos existed, so earlier idempotency records match
    hashed = request_hash({**avatar.canonical(), f"{source}_sha256": sniffed.sha256.hexdigest()})
    return _avatar_commit(
        intake,
        avatar_id,
        avatar,
        source=source,
        source_key=written[0],
        upload_id=None,
        idempotency_key=idempotency_key,
        hashed=hashed,
    )


def _upload_source(intake: Intake, upload_id: str) -> MediaKind | None:
    """The source kind an upload holds (its purpose); None unless a video or photo upload."""
    with intake.sessions() as session:
        purpose = session.scalar(
            select(Upload.purpose).where(
                Upload.id == upload_id, Upload.tenant_id == intake.tenant_id
            )
        )
    if purpose == "image":
        return "image"
    return "video" if purpose == "video" else None


def create_avatar_from_json(
    intake: Intake, raw: bytes, idempotency_key: str | None
) -> Created[schemas.Avatar]:
    """`POST /v1/avatars` with a JSON body naming a video or photo upload."""
    body = parse_json_body(schemas.AvatarCreate, raw)
    if not body.consent:
        raise _consent_required()
    check_metadata(body.metadata)
    check_callback(intake, body.callback_url)
    fields = AvatarFields.from_model(body)
    source = _upload_source(intake, body.upload_id)
    if source is not None:  # no such upload: claiming it below answers 404
        check_source(fields.renderer, source)
    hashed = request_hash({**fields.canonical(), "upload_id": body.upload_id})
    return _avatar_commit(
        intake,
        new_id("av"),
        fields,
        source=source or "video",
        source_key=None,
        upload_id=body.upload_id,
        idempotency_key=idempotency_key,
        hashed=hashed,
    )


def require_ready_avatar(session: Session, tenant_id: str, avatar_id: str) -> None:
    """404 unless the avatar is the tenant's and live; 409 `avatar_not_ready` unless ready."""
    found = find_avatar(session, tenant_id, avatar_id)
    if found is None:
        raise not_found("avatar", avatar_id)
    if found[1].status != JobStatus.ready.value:
        raise ApiError(
            409, "avatar_not_ready", f"the avatar is {found[1].status}; renders need it ready"
        )


def _render_commit(
    intake: Intake,
    avatar_id: str,
    render_id: str,
    fields: RenderFields,
    *,
    audio_key: str | None,
    upload_id: str | None,
    idempotency_key: str | None,
    hashed: str,
) -> Created[schemas.Render]:
    base_url = intake.settings.public_base_url

    def insert(session: Session) -> tuple[schemas.Render, Job]:
        require_ready_avatar(session, intake.tenant_id, avatar_id)
        _check_background(session, intake, fields.options)
        key = audio_key
        if upload_id is not None:
            key = _claim_upload(session, intake, upload_id, "audio", consume=True).key
        assert key is not None
        now = utcnow()
        render = Render(
            id=render_id,
            tenant_id=intake.tenant_id,
            avatar_id=avatar_id,
            options=fields.options.model_dump(mode="json"),
            callback_url=fields.callback_url,
            meta=fields.metadata,
            audio_key=key,
            created_at=now,
        )
        job = _new_job(intake.tenant_id, "render", render_id, now, PIPELINES["render"])
        session.add_all([render, job])
        session.flush()
        return render_view(render, job, base_url), job

    def load(session: Session, resource_id: str) -> schemas.Render | None:
        found = find_render(session, intake.tenant_id, resource_id)
        return None if found is None else render_view(*found, base_url)

    return _Commit(
        intake, f"renders:{avatar_id}", idempotency_key, hashed, audio_key, insert, load
    ).run()


def create_render_from_form(
    intake: Intake,
    avatar_id: str,
    chunks: Iterable[bytes],
    boundary: bytes,
    idempotency_key: str | None,
) -> Created[schemas.Render]:
    """`POST /v1/avatars/{id}/renders` with a multipart body, the audio streamed."""
    with intake.sessions() as session:
        require_ready_avatar(session, intake.tenant_id, avatar_id)
    render_id = new_id("rn")
    key = tenant_key(intake.tenant_id, "renders", render_id, "audio")
    form = StreamingForm(chunks, boundary, RENDER_FORM)
    stored: list[SniffedStream] = []

    def consume(name: str, file_chunks: Iterator[bytes]) -> None:
        max_bytes = intake.settings.max_audio_bytes
        stored.append(stream_media(intake, key, file_chunks, "audio", max_bytes))

    try:
        fields = form.read(lambda name, seen: render_fields(intake, seen), consume)
        if not stored:
            raise ApiError(422, "validation_error", "audio: Field required")
        render = render_fields(intake, fields)
    except BaseException:
        discard(intake.store, key)
        raise
    hashed = request_hash({**render.canonical(), "audio_sha256": stored[0].sha256.hexdigest()})
    return _render_commit(
        intake,
        avatar_id,
        render_id,
        render,
        audio_key=key,
        upload_id=None,
        idempotency_key=idempotency_key,
        hashed=hashed,
    )


def create_render_from_json(
    intake: Intake, avatar_id: str, raw: bytes, idempotency_key: str | None
) -> Created[schemas.Render]:
    """`POST /v1/avatars/{id}/renders` with a JSON body naming an audio upload."""
    # 404 / 409 for the avatar come before complaints about the body
    with intake.sessions() as session:
        require_ready_avatar(session, intake.tenant_id, avatar_id)
    body = parse_json_body(schemas.RenderCreate, raw)
    check_metadata(body.metadata)
    check_callback(intake, body.callback_url)
    fields = RenderFields.from_model(body)
    hashed = request_hash({**fields.canonical(), "upload_id": body.upload_id})
    return _render_commit(
        intake,
        avatar_id,
        new_id("rn"),
        fields,
        audio_key=None,
        upload_id=body.upload_id,
        idempotency_key=idempotency_key,
        hashed=hashed,
    )


# -- uploads ---------------------------------------------------------------------------
def upload_limit(settings: Settings, purpose: str) -> int:
    """The largest file a purpose accepts."""
    limits = {"video": settings.max_video_bytes, "image": settings.max_image_bytes}
    return limits.get(purpose, settings.max_audio_bytes)


def open_upload(session: Session, tenant_id: str, upload_id: str) -> Upload:
    """A tenant's upload slot that can still receive its file; 404 `upload_not_found`."""
    upload = session.scalar(
        select(Upload).where(Upload.id == upload_id, Upload.tenant_id == tenant_id)
    )
    if upload is None or upload.consumed_at is not None or upload.expires_at <= utcnow():
        raise ApiError(404, "upload_not_found", f"no open upload {upload_id[:60]!r}")
    return upload


def receive_upload(
    intake: Intake, upload_id: str, chunks: Iterable[bytes], declared_length: int | None
) -> None:
    """`PUT /v1/uploads/{id}` (embedded mode): stream the body into the slot's object."""
    with intake.sessions() as session:
        upload = open_upload(session, intake.tenant_id, upload_id)
    if declared_length is not None and declared_length > upload.max_bytes:
        raise ApiError(413, "file_too_large", f"the file exceeds {upload.max_bytes} bytes")
    kind: MediaKind = upload.purpose  # type: ignore[assignment]
    stream_media(intake, upload.key, chunks, kind, upload.max_bytes)


def slot_expiry(settings: Settings) -> datetime:
    """When a new upload slot stops accepting its file."""
    return utcnow() + timedelta(seconds=settings.presign_ttl_s)
