"""Upload slots for large files: presigned POST (S3) or a PUT through the API (local store)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from services.api.bodies import blocking_chunks, declared_length, run_upload
from services.api.deps import JobsDep, PrincipalDep, SessionDep, SessionsDep, SettingsDep, StoreDep
from services.api.errors import problems
from services.api.intake import Intake, receive_upload, slot_expiry, upload_limit
from shared import schemas
from shared.db.models import Upload, new_id
from shared.storage import tenant_key

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=problems(401, 422, 429))

UploadId = Annotated[str, Path(max_length=40, description="The upload's id (`up_...`).")]


@router.post(
    "",
    status_code=201,
    response_model=schemas.UploadSlot,
    operation_id="createUpload",
    responses={
        201: {
            "description": "Created: send the file as the slot says",
            "links": {
                "PutUpload": {
                    "operationId": "putUpload",
                    "parameters": {"upload_id": "$response.body#/upload_id"},
                }
            },
        }
    },
)
def create_upload(
    body: schemas.UploadCreate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> schemas.UploadSlot:
    """Reserve a slot for one file of at most `size` bytes (capped at the purpose's limit)."""
    upload_id = new_id("up")
    key = tenant_key(principal.tenant_id, "uploads", upload_id)
    max_bytes = min(body.size, upload_limit(settings, body.purpose))
    expires_at = slot_expiry(settings)
    presigned = store.presign_upload(key, max_bytes, settings.presign_ttl_s, body.content_type)
    session.add(
        Upload(
            id=upload_id,
            tenant_id=principal.tenant_id,
            key=key,
            purpose=body.purpose,
            max_bytes=max_bytes,
            content_type=body.content_type,
            expires_at=expires_at,
        )
    )
    session.commit()
    if presigned is not None:
        return schemas.UploadSlot(
            upload_id=upload_id,
            method="POST" if presigned.method == "POST" else "PUT",
            url=presigned.url,
            fields=presigned.fields,
            max_bytes=max_bytes,
            expires_at=expires_at,
        )
    return schemas.UploadSlot(
        upload_id=upload_id,
        method="PUT",
        url=f"{settings.public_base_url}/v1/uploads/{upload_id}",
        max_bytes=max_bytes,
        expires_at=expires_at,
    )


@router.put(
    "/{upload_id}",
    status_code=204,
    response_class=Response,
    operation_id="putUpload",
    responses=problems(400, 404, 413, 415),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary", "minLength": 1}
                }
            },
        }
    },
)
async def put_upload(
    upload_id: UploadId,
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
    jobs: JobsDep,
    sessions: SessionsDep,
) -> Response:
    """Send the file of a slot (local store); the body streams into the store."""
    intake = Intake(settings, store, jobs, sessions, principal)
    chunks = blocking_chunks(request)
    await run_upload(partial(receive_upload, intake, upload_id, chunks, declared_length(request)))
    return Response(status_code=204)
