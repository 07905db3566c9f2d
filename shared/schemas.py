"""Pydantic models of the public API, shared by the API, the workers and the CLI."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The families this build can train. `still` stays the default until radnerf avatars render.
RendererName = Literal["still", "radnerf"]
# Training presets: `tiny` is for tests and the CI demo (seconds-to-minutes on a CPU, low
# quality), `cpu-quick` for CPU users, `gpu-standard` the paper's schedule on a GPU.
PresetName = Literal["tiny", "cpu-quick", "gpu-standard"]
RENDERERS: tuple[str, ...] = get_args(RendererName)
PRESETS: tuple[str, ...] = get_args(PresetName)
AvatarStatus = Literal[
    "queued", "ingesting", "preprocessing", "training", "exporting", "ready", "failed", "cancelled"
]
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


class AvatarCreate(StrictModel):
    """JSON body of `POST /v1/avatars` when the video came through `POST /v1/uploads`."""

    upload_id: str = Field(min_length=1, max_length=40)
    consent: bool
    name: str = Field("", max_length=200)
    renderer: RendererName = Field("still", description="Renderer family to train.")
    preset: PresetName = Field(
        "cpu-quick",
        description="Training preset: `tiny` (tests and the CI demo only), `cpu-quick`, "
        "`gpu-standard`.",
    )
    callback_url: str | None = Field(None, max_length=2000)
    metadata: Metadata = Field(default_factory=dict)


class Avatar(BaseModel):
    """An avatar as the API returns it."""

    id: str
    name: str
    renderer: str
    preset: str
    status: AvatarStatus
    stage: str
    progress: float
    error: dict[str, str] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = None
    consent: bool
    consent_at: datetime
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
    options: dict[str, Any] = Field(default_factory=dict)
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
