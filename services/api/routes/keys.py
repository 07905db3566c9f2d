"""The caller's tenant's API keys: create (shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy import select

from services.api.deps import PrincipalDep, SessionDep
from services.api.errors import problems
from services.api.queries import not_found
from shared import schemas
from shared.db.models import ApiKey
from shared.tenants import issue_key, revoke_key

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=problems(401, 422, 429))

KeyId = Annotated[str, Path(max_length=40, description="The key's id (`key_...`).")]


def key_info(row: ApiKey) -> schemas.ApiKeyInfo:
    """An API key row without its secret."""
    return schemas.ApiKeyInfo(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=schemas.ApiKeyCreated,
    operation_id="createKey",
    responses={
        201: {
            "description": "Created: the only response that shows the key",
            "links": {
                "DeleteKey": {
                    "operationId": "deleteKey",
                    "parameters": {"key_id": "$response.body#/id"},
                }
            },
        }
    },
)
def create_key(
    body: schemas.KeyCreate, principal: PrincipalDep, session: SessionDep
) -> schemas.ApiKeyCreated:
    """Create an API key; the secret `key` is returned only this once."""
    row, plain = issue_key(session, principal.tenant_id, body.name)
    session.commit()
    return schemas.ApiKeyCreated(**key_info(row).model_dump(), key=plain)


@router.get("", response_model=list[schemas.ApiKeyInfo], operation_id="listKeys")
def list_keys(principal: PrincipalDep, session: SessionDep) -> list[schemas.ApiKeyInfo]:
    """Every key of the tenant, revoked ones included, oldest first."""
    rows = session.scalars(
        select(ApiKey)
        .where(ApiKey.tenant_id == principal.tenant_id)
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    return [key_info(row) for row in rows]


@router.delete(
    "/{key_id}",
    status_code=204,
    response_class=Response,
    operation_id="deleteKey",
    responses=problems(404),
)
def delete_key(key_id: KeyId, principal: PrincipalDep, session: SessionDep) -> Response:
    """Revoke a key; it stops working at once."""
    if not revoke_key(session, principal.tenant_id, key_id):
        raise not_found("key", key_id)
    session.commit()
    return Response(status_code=204)
