"""Avatars: create from a video or a photo, list, read, follow, delete."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, BackgroundTasks, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from services.api.bodies import (
    blocking_chunks,
    body_kind,
    read_body,
    refuse_if_longer,
    run_upload,
)
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
from services.api.intake import (
    AvatarIntake,
    Intake,
    ResourceIntake,
    create_from_form,
    create_from_json,
    dispatch_job,
)
from services.api.multipart import boundary_of
from services.api.openapi import DEFAULT_PAGE_SIZE, SSE_EVENT, avatar_request_body
from services.api.pagination import decode_cursor, encode_cursor
from services.api.queries import find_avatar, get_avatar, not_found
from services.api.removal import delete_avatar
from shared import schemas
from shared.db.models import Avatar, Job
from shared.resources import avatar_view

V = TypeVar("V", bound=BaseModel)
router = APIRouter(prefix="/v1/avatars", tags=["avatars"], responses=problems(401, 422, 429))

AvatarId = Annotated[str, Path(max_length=40, description="The avatar's id (`av_...`).")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Repeat a request safely: the same key and body return the same resource.",
    ),
]
AVATAR_LINKS = {
    name: {"operationId": op, "parameters": {"avatar_id": "$response.body#/id"}}
    for name, op in (
        ("GetAvatar", "getAvatar"),
        ("DeleteAvatar", "deleteAvatar"),
        ("CreateRender", "createRender"),
    )
}
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`state` events until the job reaches a terminal state",
        "content": {"text/event-stream": {"itemSchema": SSE_EVENT}},
    }
}


async def create_resource(
    kind: ResourceIntake[Any, Any, V],
    request: Request,
    background: BackgroundTasks,
    idempotency_key: str | None,
) -> V:
    """Create from a multipart body (the file streamed) or a JSON one naming an upload."""
    if body_kind(request) == "multipart":
        boundary = boundary_of(request.headers["content-type"])
        refuse_if_longer(request, kind.form_max_bytes, "file_too_large", "the request")
        chunks = blocking_chunks(request)
        created = await run_upload(
            partial(create_from_form, kind, chunks, boundary, idempotency_key)
        )
    else:
        raw = await read_body(request, kind.json_max_bytes)
        created = await run_in_threadpool(create_from_json, kind, raw, idempotency_key)
    if created.job_id is not None:
        # enqueue after the response: the job is committed, and the reconciler covers a crash
        background.add_task(dispatch_job, kind.intake.jobs, created.job_id)
    return created.view


@router.post(
    "",
    status_code=202,
    response_model=schemas.Avatar,
    operation_id="createAvatar",
    responses={
        202: {"description": "Accepted: the avatar job is queued", "links": AVATAR_LINKS},
        **problems(400, 404, 409, 413, 415),
    },
    openapi_extra=avatar_request_body(),
)
async def create_avatar(
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
    jobs: JobsDep,
    sessions: SessionsDep,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> schemas.Avatar:
    """Start making an avatar from a portrait video or photo (multipart) or an upload (JSON)."""
    kind = AvatarIntake(Intake(settings, store, jobs, sessions, principal))
    return await create_resource(kind, request, background, idempotency_key)


@router.get("", response_model=schemas.Page[schemas.Avatar], operation_id="listAvatars")
def list_avatars(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size (default 20, at most TH_PAGE_SIZE_MAX).")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> schemas.Page[schemas.Avatar]:
    """The tenant's avatars, newest first."""
    if limit is None:
        limit = min(DEFAULT_PAGE_SIZE, settings.page_size_max)
    elif limit > settings.page_size_max:
        raise ApiError(422, "validation_error", f"limit: at most {settings.page_size_max}")
    query = (
        select(Avatar, Job)
        .join(Job, Job.resource_id == Avatar.id)
        .where(Avatar.tenant_id == principal.tenant_id, Avatar.deleted_at.is_(None))
    )
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Avatar.created_at < created_at,
                and_(Avatar.created_at == created_at, Avatar.id < last_id),
            )
        )
    rows = session.execute(
        query.order_by(Avatar.created_at.desc(), Avatar.id.desc()).limit(limit + 1)
    ).all()
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1][0]
        next_cursor = encode_cursor(last.created_at, last.id)
    return schemas.Page[schemas.Avatar](
        items=[avatar_view(avatar, job) for avatar, job in page], next_cursor=next_cursor
    )


@router.get(
    "/{avatar_id}", response_model=schemas.Avatar, operation_id="getAvatar", responses=problems(404)
)
def get_avatar_route(
    avatar_id: AvatarId, principal: PrincipalDep, session: SessionDep
) -> schemas.Avatar:
    """One avatar: status, stage, progress, error and metrics."""
    return avatar_view(*get_avatar(session, principal.tenant_id, avatar_id))


@router.delete(
    "/{avatar_id}",
    status_code=204,
    response_class=Response,
    operation_id="deleteAvatar",
    responses=problems(404),
)
def delete_avatar_route(
    avatar_id: AvatarId,
    principal: PrincipalDep,
    session: SessionDep,
    store: StoreDep,
    jobs: JobsDep,
) -> Response:
    """Cancel the avatar's work and its renders', and delete all their objects."""
    delete_avatar(session, store, jobs, principal.tenant_id, avatar_id)
    return Response(status_code=204)


def _avatar_job(sessions: sessionmaker[Session], tenant_id: str, avatar_id: str) -> Job | None:
    with sessions() as session:
        found = find_avatar(session, tenant_id, avatar_id)
    return None if found is None else found[1]


@router.get(
    "/{avatar_id}/events",
    response_class=StreamingResponse,
    operation_id="avatarEvents",
    responses={**EVENT_STREAM, **problems(404)},
)
async def avatar_events(
    avatar_id: AvatarId, request: Request, principal: PrincipalDep, sessions: SessionsDep
) -> StreamingResponse:
    """Server-Sent Events of the avatar's state and progress."""
    load = partial(_avatar_job, sessions, principal.tenant_id, avatar_id)
    stream = await open_event_stream(request, avatar_id, load)
    if stream is None:
        raise not_found("avatar", avatar_id)
    return stream
