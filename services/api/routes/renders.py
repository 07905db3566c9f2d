"""Renders: talking videos of a ready avatar from speech audio."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Path, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from services.api.deps import (
    JobsDep,
    PrincipalDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StoreDep,
)
from services.api.errors import ApiError, problems
from services.api.events import open_event_stream
from services.api.intake import Intake, RenderIntake
from services.api.openapi import render_request_body
from services.api.queries import find_render, get_render, not_found
from services.api.removal import delete_render
from services.api.routes.avatars import EVENT_STREAM, AvatarId, IdempotencyKey, create_resource
from shared import schemas
from shared.db.models import Job, JobStatus
from shared.resources import render_expired, render_view
from shared.storage import ObjectNotFound

router = APIRouter(tags=["renders"], responses=problems(401, 422, 429))

RenderId = Annotated[str, Path(max_length=40, description="The render's id (`rn_...`).")]
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.ASCII | re.IGNORECASE)
_MP4 = {"schema": {"type": "string", "format": "binary"}}
VIDEO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole video", "content": {"video/mp4": _MP4}},
    206: {"description": "The requested byte range", "content": {"video/mp4": _MP4}},
    307: {"description": "Redirect to a presigned download URL (`redirect=true`, S3 store)"},
}


RENDER_LINKS = {
    name: {"operationId": op, "parameters": {"render_id": "$response.body#/id"}}
    for name, op in (
        ("GetRender", "getRender"),
        ("DeleteRender", "deleteRender"),
        ("GetRenderVideo", "getRenderVideo"),
    )
}


class _Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range of a single-range `Range` header; None means the whole file.

    Headers we do not understand (other units, several ranges, malformed) are ignored, as
    RFC 9110 allows; a range starting past the end raises `_Unsatisfiable`.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _Unsatisfiable()
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _Unsatisfiable()
    return start, min(end, size - 1)


@router.post(
    "/v1/avatars/{avatar_id}/renders",
    status_code=202,
    response_model=schemas.Render,
    operation_id="createRender",
    responses={
        202: {"description": "Accepted: the render job is queued", "links": RENDER_LINKS},
        **problems(400, 404, 409, 413, 415),
    },
    openapi_extra=render_request_body(),
)
async def create_render(
    avatar_id: AvatarId,
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
    jobs: JobsDep,
    sessions: SessionsDep,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> schemas.Render:
    """Render the avatar speaking the audio (multipart) or an earlier audio upload (JSON)."""
    kind = RenderIntake(Intake(settings, store, jobs, sessions, principal), avatar_id)
    return await create_resource(kind, request, background, idempotency_key)


@router.get(
    "/v1/renders/{render_id}",
    response_model=schemas.Render,
    operation_id="getRender",
    responses=problems(404),
)
def get_render_route(
    render_id: RenderId, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> schemas.Render:
    """One render: status, progress and, once done, its `video_url`."""
    render, job = get_render(session, principal.tenant_id, render_id)
    return render_view(render, job, settings.public_base_url)


@router.delete(
    "/v1/renders/{render_id}",
    status_code=204,
    response_class=Response,
    operation_id="deleteRender",
    responses=problems(404),
)
def delete_render_route(
    render_id: RenderId,
    principal: PrincipalDep,
    session: SessionDep,
    store: StoreDep,
    jobs: JobsDep,
) -> Response:
    """Cancel the render if it still runs and delete its objects."""
    delete_render(session, store, jobs, principal.tenant_id, render_id)
    return Response(status_code=204)


@router.get(
    "/v1/renders/{render_id}/video",
    response_class=StreamingResponse,
    operation_id="getRenderVideo",
    responses={**VIDEO_RESPONSES, **problems(404, 409, 410, 416)},
)
def render_video(
    render_id: RenderId,
    principal: PrincipalDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    range_header: Annotated[
        str | None,
        Header(alias="range", max_length=200, description="A single `bytes=` range."),
    ] = None,
    redirect: Annotated[
        bool, Query(description="Redirect to a presigned URL where the store offers one.")
    ] = False,
) -> Response:
    """The finished video (H.264 + AAC mp4); single byte ranges are supported.

    410 `render_expired` once the retention period removed it (the render itself stays listed).
    """
    render, job = get_render(session, principal.tenant_id, render_id)
    if render_expired(job):
        raise ApiError(
            410, "render_expired", "the video passed its retention period and was removed"
        )
    if job.status != JobStatus.done.value or render.video_key is None:
        raise ApiError(409, "render_not_done", f"the render is {job.status}")
    key = render.video_key
    session.close()  # the body may stream for minutes; give the connection back now
    if redirect:
        url = store.presign_get(key, settings.presign_ttl_s)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    try:
        size = store.size(key)
    except ObjectNotFound:
        raise not_found("video of render", render_id) from None
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'inline; filename="{render_id}.mp4"',
    }
    try:
        byte_range = parse_range(range_header, size)
    except _Unsatisfiable:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the video has {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        ) from None
    if byte_range is None:
        headers["Content-Length"] = str(size)
        body = store.iter_range(key) if size else iter(())
        return StreamingResponse(body, status_code=200, media_type="video/mp4", headers=headers)
    start, end = byte_range
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        store.iter_range(key, start, end), status_code=206, media_type="video/mp4", headers=headers
    )


def _render_job(sessions: sessionmaker[Session], tenant_id: str, render_id: str) -> Job | None:
    with sessions() as session:
        found = find_render(session, tenant_id, render_id)
    return None if found is None else found[1]


@router.get(
    "/v1/renders/{render_id}/events",
    response_class=StreamingResponse,
    operation_id="renderEvents",
    responses={**EVENT_STREAM, **problems(404)},
)
async def render_events(
    render_id: RenderId, request: Request, principal: PrincipalDep, sessions: SessionsDep
) -> StreamingResponse:
    """Server-Sent Events of the render's state and progress."""
    load = partial(_render_job, sessions, principal.tenant_id, render_id)
    stream = await open_event_stream(request, render_id, load)
    if stream is None:
        raise not_found("render", render_id)
    return stream
