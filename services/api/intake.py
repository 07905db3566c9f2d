"""Creating avatars and renders: validate, stream the media into the store, commit once.

Everything here is blocking and runs in a worker thread. A refused request leaves no row and
no object behind: the object is written only after the cheap checks, and deleted again on any
later failure; rows are written in a single transaction together with the idempotency record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.api.deps import Principal
from services.api.errors import ApiError, validation_error
from services.api.media import SNIFF_BYTES, MediaKind, SniffedStream, check_head
from services.api.multipart import FormSpec, StreamingForm
from services.api.queries import find_avatar, find_render, not_found
from services.api.quotas import check_queued_quota
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
FIELD_MAX_BYTES = 64 * 1024
OPTIONS_FIELD_MAX_BYTES = 8 * 1024 * 1024
RENDER_OPTION_FIELDS = ("resolution", "background", "pose", "eyes")
# Stands in for `upload_id` when a multipart form is validated with the JSON models.
_FORM_UPLOAD_ID = "multipart"
_CONSENT_DETAIL = "consent must be true: attest that the person in the video or photo agreed"

_BOOL = TypeAdapter(bool)
V = TypeVar("V", bound=BaseModel)  # a resource's public view
M = TypeVar("M", schemas.AvatarCreate, schemas.RenderCreate)  # a request body
R = TypeVar("R", Avatar, Render)  # a resource's row


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


def _consent_required() -> ApiError:
    return ApiError(422, "consent_required", _CONSENT_DETAIL)


def _json_field(name: str, raw: str, *, text_fallback: bool) -> Any:
    """A form field holding JSON; plain text passes through where a bare string is allowed."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        if text_fallback:
            return raw
        raise ApiError(422, "validation_error", f"{name}: not valid JSON") from None


def parse_json_body(model: type[M], body: bytes) -> M:
    """Validate a JSON request body; a missing `consent` is `consent_required`."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "missing" and tuple(e["loc"]) == ("consent",) for e in exc.errors()):
            raise _consent_required() from None
        raise validation_error(exc) from None


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


# -- the kinds of resource -------------------------------------------------------------
class ResourceIntake(ABC, Generic[M, R, V]):
    """One kind of resource, bound to a request: what creating it needs beyond the shared steps."""

    # A form and a JSON body both validate as `body`, which then stands for the request's
    # fields, so both paths share every check; the form's file part is named for its media.
    prefix: str  # of the resource's ids
    scope: str  # of its Idempotency-Keys
    job_kind: str
    form: FormSpec
    body: type[M]
    table: type[R]
    json_max_bytes: int
    form_sized_by: MediaKind  # the file whose limit bounds a whole form
    missing_file: tuple[str, str]  # the problem code and detail of a form without its file

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    @property
    def media(self) -> tuple[MediaKind, ...]:
        """What the resource is made from; the first where an upload's media is unknown."""
        return cast(tuple[MediaKind, ...], self.form.file_fields)

    @property
    def form_max_bytes(self) -> int:
        """The largest multipart body worth reading."""
        return upload_limit(self.intake.settings, self.form_sized_by) + self.form.max_extra_bytes

    def check_first(self) -> None:
        """Checks that come before any complaint about the body."""

    def check_body(self, body: M) -> None:
        """Checks of a validated body (a form's too) that come before the shared ones."""

    def check_file(self, body: M, media: MediaKind, seen: Mapping[str, str] | None = None) -> None:
        """Refuse media the body does not take; `seen`: the form's fields before its file."""

    def check_insert(self, session: Session, body: M) -> None:
        """Checks inside the creating transaction, before an upload is claimed."""

    def resolve(self, body: M) -> M:
        """The body with the defaults that depend on other fields filled in."""
        return body

    @abstractmethod
    def form_data(self, form: Mapping[str, str], *, final: bool) -> dict[str, Any]:
        """The kind's own form fields seen so far (all of them when `final`) as `body` data."""

    @abstractmethod
    def canonical(self, body: M) -> dict[str, Any]:
        """The fields hashed to recognise a repeated request."""

    @abstractmethod
    def object_key(self, resource_id: str, media: MediaKind) -> str:
        """Where the form's file is stored."""

    @abstractmethod
    def columns(self, body: M, media: MediaKind, key: str, now: datetime) -> dict[str, Any]:
        """The kind's own columns of its row, made from the object at `key`."""

    @abstractmethod
    def stages(self, body: M) -> Iterable[str]:
        """The stages of the resource's job."""

    @abstractmethod
    def find(self, session: Session, resource_id: str) -> tuple[R, Job] | None:
        """The tenant's live resource and its job."""

    @abstractmethod
    def view(self, row: R, job: Job) -> V:
        """The public representation."""

    def fields(self, form: Mapping[str, str], *, final: bool) -> M:
        """Validate the form fields seen so far (all of them when `final`)."""
        data = self.form_data(form, final=final)
        if "callback_url" in form:
            data["callback_url"] = form["callback_url"]
        if "metadata" in form:
            data["metadata"] = _json_field("metadata", form["metadata"], text_fallback=False)
        try:
            body = self.body.model_validate({**data, "upload_id": _FORM_UPLOAD_ID})
        except ValidationError as exc:
            raise validation_error(exc) from None
        return self.accept(body)

    def accept(self, body: M) -> M:
        """A validated JSON or form body once every check passes; a blank callback is none."""
        self.check_body(body)
        check_metadata(body.metadata)
        check_callback(self.intake, body.callback_url)
        callback_url = callback_or_none(body.callback_url)
        return self.resolve(body).model_copy(update={"callback_url": callback_url})

    def upload_media(self, upload_id: str) -> MediaKind | None:
        """The media an upload holds, where the resource is made from it; else None."""
        if len(self.media) == 1:
            return self.media[0]  # claiming the upload checks it holds this
        with self.intake.sessions() as session:
            purpose = session.scalar(
                select(Upload.purpose).where(
                    Upload.id == upload_id, Upload.tenant_id == self.intake.tenant_id
                )
            )
        return next((media for media in self.media if media == purpose), None)


class AvatarIntake(ResourceIntake[schemas.AvatarCreate, Avatar, schemas.Avatar]):
    """Avatars, made from one portrait video or photo with the person's consent."""

    prefix = "av"
    scope = "avatars"
    job_kind = "avatar"
    # the source is one file part, `video` or `image`: what the avatar is made from
    form = FormSpec(
        file_fields=SOURCES,
        field_limits=dict.fromkeys(
            ("consent", "name", "renderer", "preset", "callback_url", "metadata", "corpus_opt_in"),
            FIELD_MAX_BYTES,
        ),
        too_large_codes={"metadata": "metadata_too_large"},
        second_file_code="multiple_sources",
    )
    body = schemas.AvatarCreate
    table = Avatar
    json_max_bytes = 64 * 1024
    form_sized_by = "video"
    missing_file = ("source_required", "send the portrait as one file part: `video` or `image`")

    def check_body(self, body: schemas.AvatarCreate) -> None:
        """422 `consent_required` unless consent is given."""
        if not body.consent:
            raise _consent_required()

    def check_file(
        self, body: schemas.AvatarCreate, media: MediaKind, seen: Mapping[str, str] | None = None
    ) -> None:
        """422 `unsupported_source` unless the renderer family makes avatars from the media."""
        if seen is None or "renderer" in seen:  # else a later field may name a family taking it
            check_source(body.renderer, media)

    def resolve(self, body: schemas.AvatarCreate) -> schemas.AvatarCreate:
        """The family's default preset where none is named; 422 `unknown_preset` if not its."""
        family = get_family(body.renderer)
        preset = body.preset or family.default_preset
        if preset not in family.presets:
            raise ApiError(
                422,
                "unknown_preset",
                f"preset: {body.renderer} offers {', '.join(family.presets)}, not {preset!r}",
            )
        return body.model_copy(update={"preset": preset})

    def form_data(self, form: Mapping[str, str], *, final: bool) -> dict[str, Any]:
        """Consent (checked before anything else) and the naming fields."""
        raw = form.get("consent")
        if raw is None and final:
            raise _consent_required()
        if raw is not None:
            try:
                given = _BOOL.validate_python(raw.strip())
            except ValidationError as exc:
                raise validation_error(exc, ("consent",)) from None
            if not given:
                raise _consent_required()
        data: dict[str, Any] = {
            "consent": True,
            **{k: form[k] for k in ("name", "renderer", "preset") if k in form},
        }
        if "corpus_opt_in" in form:
            try:
                data["corpus_opt_in"] = _BOOL.validate_python(form["corpus_opt_in"].strip())
            except ValidationError as exc:
                raise validation_error(exc, ("corpus_opt_in",)) from None
        return data

    def canonical(self, body: schemas.AvatarCreate) -> dict[str, Any]:
        return body.model_dump(
            include={"name", "renderer", "preset", "callback_url", "metadata", "corpus_opt_in"}
        )

    def object_key(self, resource_id: str, media: MediaKind) -> str:
        return tenant_key(self.intake.tenant_id, "avatars", resource_id, "source", media)

    def columns(
        self, body: schemas.AvatarCreate, media: MediaKind, key: str, now: datetime
    ) -> dict[str, Any]:
        return {
            "name": body.name,
            "renderer": body.renderer,
            "preset": body.preset,
            "consent": True,
            "consent_at": now,
            "consent_key_id": self.intake.principal.key_id,
            "metrics": {},
            "source_key": key,
            "source": media,
            "corpus_opt_in": body.corpus_opt_in,
        }

    def stages(self, body: schemas.AvatarCreate) -> Iterable[str]:
        return get_family(body.renderer).stages

    def find(self, session: Session, resource_id: str) -> tuple[Avatar, Job] | None:
        return find_avatar(session, self.intake.tenant_id, resource_id)

    def view(self, row: Avatar, job: Job) -> schemas.Avatar:
        return avatar_view(row, job)


def require_ready_avatar(session: Session, tenant_id: str, avatar_id: str) -> None:
    """404 unless the avatar is the tenant's and live; 409 `avatar_not_ready` unless ready."""
    found = find_avatar(session, tenant_id, avatar_id)
    if found is None:
        raise not_found("avatar", avatar_id)
    if found[1].status != JobStatus.ready.value:
        raise ApiError(
            409, "avatar_not_ready", f"the avatar is {found[1].status}; renders need it ready"
        )


class RenderIntake(ResourceIntake[schemas.RenderCreate, Render, schemas.Render]):
    """Renders of a ready avatar speaking one audio file."""

    prefix = "rn"
    job_kind = "render"
    form = FormSpec(
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
    body = schemas.RenderCreate
    table = Render
    json_max_bytes = 8 * 1024 * 1024  # per-frame pose and eye lists can be long
    form_sized_by = "audio"
    missing_file = ("validation_error", "audio: Field required")

    def __init__(self, intake: Intake, avatar_id: str) -> None:
        super().__init__(intake)
        self.avatar_id = avatar_id
        self.scope = f"renders:{avatar_id}"

    def check_first(self) -> None:
        """404 / 409 for the avatar come before complaints about the body."""
        with self.intake.sessions() as session:
            require_ready_avatar(session, self.intake.tenant_id, self.avatar_id)

    def check_insert(self, session: Session, body: schemas.RenderCreate) -> None:
        """The avatar is still ready; an image background is the tenant's."""
        require_ready_avatar(session, self.intake.tenant_id, self.avatar_id)
        background = body.background
        if background.kind == "colour" and background.colour is None:
            raise ApiError(422, "validation_error", "background.colour: required for kind 'colour'")
        if background.kind == "image":
            if background.upload_id is None:
                raise ApiError(
                    422, "validation_error", "background.upload_id: required for kind 'image'"
                )
            # an image may back many renders, so it is checked but not consumed
            _claim_upload(session, self.intake, background.upload_id, "image", consume=False)

    def form_data(self, form: Mapping[str, str], *, final: bool) -> dict[str, Any]:
        """The options: an `options` JSON object, single option fields overriding its keys."""
        prefix: tuple[str, ...] = ()
        options: dict[str, Any] = {}
        if "options" in form:
            given = _json_field("options", form["options"], text_fallback=False)
            if not isinstance(given, dict):
                raise ApiError(422, "validation_error", "options: must be a JSON object")
            options.update(given)
            prefix = ("options",)
        for name in RENDER_OPTION_FIELDS:
            if name in form:
                options[name] = _json_field(name, form[name], text_fallback=True)
                prefix = ()
        try:
            return schemas.RenderOptions.model_validate(options).model_dump()
        except ValidationError as exc:
            raise validation_error(exc, prefix) from None

    def canonical(self, body: schemas.RenderCreate) -> dict[str, Any]:
        options = body.model_dump(mode="json", include=set(RENDER_OPTION_FIELDS))
        return {"options": options, "callback_url": body.callback_url, "metadata": body.metadata}

    def object_key(self, resource_id: str, media: MediaKind) -> str:
        return tenant_key(self.intake.tenant_id, "renders", resource_id, "audio")

    def columns(
        self, body: schemas.RenderCreate, media: MediaKind, key: str, now: datetime
    ) -> dict[str, Any]:
        return {
            "avatar_id": self.avatar_id,
            "options": body.model_dump(mode="json", include=set(RENDER_OPTION_FIELDS)),
            "audio_key": key,
        }

    def stages(self, body: schemas.RenderCreate) -> Iterable[str]:
        return PIPELINES["render"]

    def find(self, session: Session, resource_id: str) -> tuple[Render, Job] | None:
        return find_render(session, self.intake.tenant_id, resource_id)

    def view(self, row: Render, job: Job) -> schemas.Render:
        return render_view(row, job, self.intake.settings.public_base_url)


# -- committing ------------------------------------------------------------------------
@dataclass
class _Commit(Generic[M, R, V]):
    """One creation: the resource's row and job, inserted once per Idempotency-Key."""

    kind: ResourceIntake[M, R, V]
    resource_id: str
    body: M
    media: MediaKind
    idempotency_key: str | None
    request_hash: str
    written_key: str | None = None  # the object this request stored, removed unless kept
    upload_id: str | None = None  # else the upload holding the file, claimed on insert

    def _replay(self, session: Session) -> Created[V] | None:
        if self.idempotency_key is None:
            return None
        record = session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.tenant_id == self.kind.intake.tenant_id,
                IdempotencyRecord.scope == self.kind.scope,
                IdempotencyRecord.key == self.idempotency_key,
            )
        )
        if record is None:
            return None
        if record.request_hash != self.request_hash:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            )
        found = self.kind.find(session, record.resource_id)
        if found is None:
            raise ApiError(
                422, "idempotency_key_reused", "the resource made with this key was deleted"
            )
        return Created(self.kind.view(*found))

    def _insert(self, session: Session) -> tuple[V, Job]:
        kind = self.kind
        # the deciding check, under the tenant's lock until this transaction commits
        check_queued_quota(session, kind.intake.settings, kind.intake.tenant_id, lock=True)
        kind.check_insert(session, self.body)
        key = self.written_key
        if self.upload_id is not None:
            key = _claim_upload(session, kind.intake, self.upload_id, self.media, consume=True).key
        assert key is not None
        now = utcnow()
        row = kind.table(
            id=self.resource_id,
            tenant_id=kind.intake.tenant_id,
            callback_url=self.body.callback_url,
            meta=self.body.metadata,
            created_at=now,
            **kind.columns(self.body, self.media, key, now),
        )
        job = Job(
            tenant_id=kind.intake.tenant_id,
            kind=kind.job_kind,
            resource_id=self.resource_id,
            stages=list(kind.stages(self.body)),
            status=JobStatus.queued.value,
            stage="queued",
            progress=0.0,
            created_at=now,
            updated_at=now,
        )
        session.add_all([row, job])
        session.flush()
        return kind.view(row, job), job

    def run(self) -> Created[V]:
        intake = self.kind.intake
        keep = False
        try:
            with intake.sessions() as session:
                replay = self._replay(session)
                if replay is not None:
                    return replay
                try:
                    view, job = self._insert(session)
                    if self.idempotency_key is not None:
                        session.add(
                            IdempotencyRecord(
                                tenant_id=intake.tenant_id,
                                key=self.idempotency_key,
                                scope=self.kind.scope,
                                request_hash=self.request_hash,
                                resource_id=job.resource_id,
                            )
                        )
                    session.commit()
                except (IntegrityError, _UploadTaken) as exc:
                    # a concurrent request with the same key may have won: answer with its
                    # resource (ours is rolled back and our object removed)
                    session.rollback()
                    with intake.sessions() as fresh:
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
                discard(intake.store, self.written_key)
        return Created(view, job.id)


def dispatch_job(jobs: JobService, job_id: str) -> None:
    """Enqueue a committed job; a broker failure is logged, not raised."""
    try:
        jobs.dispatch(job_id)
    except Exception:
        # the job is committed; the reconciler enqueues jobs that never were
        log.warning("could not enqueue job %s", job_id, exc_info=True)


def check_quota_first(kind: ResourceIntake[M, R, V], idempotency_key: str | None) -> None:
    """429 for a full queue before any file is read (the insert checks again, locked).

    Not for a request with an Idempotency-Key: it may repeat one that was accepted, and
    should get that resource back rather than a 429.
    """
    if idempotency_key is None:
        with kind.intake.sessions() as session:
            check_queued_quota(session, kind.intake.settings, kind.intake.tenant_id, lock=False)


def create_from_form(
    kind: ResourceIntake[M, R, V],
    chunks: Iterable[bytes],
    boundary: bytes,
    idempotency_key: str | None,
) -> Created[V]:
    """Create from a multipart body, its one file streamed into the store as it arrives."""
    kind.check_first()
    check_quota_first(kind, idempotency_key)
    intake = kind.intake
    resource_id = new_id(kind.prefix)
    form = StreamingForm(chunks, boundary, kind.form)
    written: list[str] = []
    stored: list[tuple[MediaKind, SniffedStream]] = []

    def before_file(name: str, seen: Mapping[str, str]) -> None:
        kind.check_file(kind.fields(seen, final=False), cast(MediaKind, name), seen)

    def consume(name: str, file_chunks: Iterator[bytes]) -> None:
        media = cast(MediaKind, name)  # the form hands over only parts named in `kind.media`
        key = kind.object_key(resource_id, media)
        written.append(key)  # before streaming: a partly written object is removed too
        limit = upload_limit(intake.settings, media)
        stored.append((media, stream_media(intake, key, file_chunks, media, limit)))

    try:
        given = form.read(before_file, consume)
        if not stored:
            raise ApiError(422, *kind.missing_file)
        body = kind.fields(given, final=True)
        media, sniffed = stored[0]
        kind.check_file(body, media)
    except BaseException:
        for key in written:
            discard(intake.store, key)
        raise
    # `video_sha256` for videos as before photos existed, `audio_sha256` for renders: earlier
    # idempotency records still match
    sha256 = sniffed.sha256.hexdigest()
    hashed = request_hash({**kind.canonical(body), f"{media}_sha256": sha256})
    return _Commit(kind, resource_id, body, media, idempotency_key, hashed, written[0]).run()


def create_from_json(
    kind: ResourceIntake[M, R, V], raw: bytes, idempotency_key: str | None
) -> Created[V]:
    """Create from a JSON body naming an upload that holds the file."""
    kind.check_first()
    check_quota_first(kind, idempotency_key)
    body = kind.accept(parse_json_body(kind.body, raw))
    media = kind.upload_media(body.upload_id)
    if media is not None:  # no such upload: claiming it below answers 404
        kind.check_file(body, media)
    hashed = request_hash({**kind.canonical(body), "upload_id": body.upload_id})
    return _Commit(
        kind,
        new_id(kind.prefix),
        body,
        media or kind.media[0],
        idempotency_key,
        hashed,
        upload_id=body.upload_id,
    ).run()


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
