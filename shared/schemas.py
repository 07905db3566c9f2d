"""Pydantic models of the public API, shared by the API, the workers and the CLI."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from talkinghead.families.contract import AVATAR_STAGES, SOURCES
from talkinghead.families.registry import DEFAULT_FAMILY, families


def _literal(values: tuple[str, ...]) -> Any:
    # A Literal built at import time from the registry, so the OpenAPI document lists exactly
    # the families (and their presets and stages) this installation serves.
    return Literal[values]


_FAMILIES = families()
RENDERERS: tuple[str, ...] = tuple(_FAMILIES)
PRESETS: tuple[str, ...] = tuple(dict.fromkeys(p for f in _FAMILIES.values() for p in f.presets))
# Every stage a family may name (not only those of the families at import), so an avatar of
# a family registered later still validates.
AVATAR_STATUSES: tuple[str, ...] = ("queued", *AVATAR_STAGES, "ready", "failed", "cancelled")
if TYPE_CHECKING:  # the type checker sees names; pydantic and OpenAPI see the registry's values
    RendererName = str
    PresetName = str
    SourceKind = str
    AvatarStatus = str
else:
    RendererName = _literal(RENDERERS)
    PresetName = _literal(PRESETS)
    SourceKind = _literal(SOURCES)
    AvatarStatus = _literal(AVATAR_STATUSES)
RenderStatus = Literal["queued", "rendering", "encoding", "done", "failed", "cancelled"]

Metadata = Annotated[
    dict[str, Any],
    Field(description="Caller data echoed in webhooks (at most 4 KiB as JSON).", max_length=64),
]
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class StrictModel(BaseModel):
    """Refuses unknown fields so typos become 422s, not silent defaults."""

    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """RFC 9457 problem details, with our stable `code`."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    code: str


class JobInfo(BaseModel):
    """Progress of the work behind a resource."""

    status: str
    stage: str
    progress: float = Field(ge=0, le=1)
    error: dict[str, str] | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None


# Renderer and preset are strings checked against the registry when a request is validated, not
# Literals frozen at import: a family registered later in the process (an embedding application,
# a test) is accepted. Their schemas still list the families and presets known at import.
RendererField = Annotated[str, WithJsonSchema({"enum": list(RENDERERS), "type": "string"})]
PresetField = Annotated[str, WithJsonSchema({"enum": list(PRESETS), "type": "string"})]


class AvatarCreate(StrictModel):
    """JSON body of `POST /v1/avatars` when the video or photo came through `POST /v1/uploads`."""

    upload_id: str = Field(min_length=1, max_length=40)
    consent: bool
    name: str = Field("", max_length=200)
    renderer: RendererField = Field(DEFAULT_FAMILY, description="Renderer family of the avatar.")
    preset: PresetField | None = Field(
        None,
        description="The family's preset; its default when omitted. "
        + "; ".join(
            f"`{f.name}`: " + ", ".join(f"`{p.name}` ({p.description})" for p in f.presets.values())
            for f in _FAMILIES.values()
        ),
    )
    callback_url: str | None = Field(None, max_length=2000)
    metadata: Metadata = Field(default_factory=dict)
    corpus_opt_in: bool = Field(
        False,
        description="The tenant agrees that this avatar's video may join the operator's "
        "training corpora (shared models learn from many speakers). Off unless asked for.",
    )

    @field_validator("renderer")
    @classmethod
    def _registered_family(cls, v: str) -> str:
        known = families()
        if v not in known:
            raise ValueError(f"unknown renderer family; choose one of {', '.join(known)}")
        return v

    @field_validator("preset")
    @classmethod
    def _registered_preset(cls, v: str | None) -> str | None:
        known = dict.fromkeys(p for f in families().values() for p in f.presets)
        if v is not None and v not in known:
            raise ValueError(f"unknown preset; the families offer {', '.join(known)}")
        return v


class Avatar(BaseModel):
    """An avatar as the API returns it."""

    id: str
    name: str
    renderer: str
    preset: str
    source: SourceKind = Field(description="What the avatar is made from: a video or a photo.")
    status: AvatarStatus
    stage: str
    progress: float
    error: dict[str, str] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    consent: bool
    consent_at: datetime
    corpus_opt_in: bool = False
    created_at: datetime
    updated_at: datetime


class BackgroundSpec(StrictModel):
    """Where the avatar is composited: `source`, a `#rrggbb` colour, or an uploaded image."""

    kind: Literal["source", "colour", "image"] = "source"
    colour: str | None = Field(None, pattern=_COLOUR.pattern)
    upload_id: str | None = None

    @field_validator("colour")
    @classmethod
    def _colour(cls, v: str | None) -> str | None:
        if v is not None and not _COLOUR.match(v):
            raise ValueError("colour must look like #rrggbb")
        return v


class RenderOptions(StrictModel):
    """Options of a render request."""

    resolution: int | None = Field(None, ge=64, le=2048)
    background: BackgroundSpec = Field(default_factory=BackgroundSpec)
    pose: Literal["static", "source"] | list[list[float]] = "source"
    eyes: Literal["natural", "open"] | list[float] = "natural"


class RenderCreate(RenderOptions):
    """JSON body of `POST /v1/avatars/{id}/renders` with audio from `POST /v1/uploads`."""

    upload_id: str = Field(min_length=1, max_length=40)
    callback_url: str | None = Field(None, max_length=2000)
    metadata: Metadata = Field(default_factory=dict)


class Render(BaseModel):
    """A render as the API returns it."""

    id: str
    avatar_id: str
    status: RenderStatus
    stage: str
    progress: float
    error: dict[str, str] | None = None
    # The options as requested (stored validated), so clients get the same typed model back.
    options: RenderOptions = Field(default_factory=RenderOptions)
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    video_url: str | None = None
    created_at: datetime
    updated_at: datetime


class UploadCreate(StrictModel):
    """Ask for a place to upload a large file."""

    purpose: Literal["video", "audio", "image"]
    size: int = Field(gt=0, description="Exact size in bytes of the file to come.")
    content_type: str | None = Field(None, max_length=100)


class UploadSlot(BaseModel):
    """Where and how to upload: a presigned POST (S3) or a PUT to the API (embedded)."""

    upload_id: str
    method: Literal["POST", "PUT"]
    url: str
    fields: dict[str, str] = Field(default_factory=dict)
    max_bytes: int
    expires_at: datetime


class KeyCreate(StrictModel):
    """Create an API key for the caller's tenant."""

    name: str = Field("", max_length=200)


class ApiKeyInfo(BaseModel):
    """An API key without its secret."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyInfo):
    """A new API key; `key` is shown only this once."""

    key: str


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of results; pass `next_cursor` as `cursor` to get the next one."""

    items: list[T]
    next_cursor: str | None = None


class JobEvent(BaseModel):
    """One Server-Sent Event: the resource's state after a change."""

    id: str
    status: str
    stage: str
    progress: float
    error: dict[str, str] | None = None
    updated_at: datetime


class Health(BaseModel):
    """Liveness and readiness answers."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
