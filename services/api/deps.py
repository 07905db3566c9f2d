"""FastAPI dependencies and their `Annotated` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from services.api.errors import ApiError
from services.api.ratelimit import RateLimiter
from services.api.threads import run_in_budget
from shared.config import Settings
from shared.jobs import JobService
from shared.limits import TenantLimits, tenant_limits
from shared.storage import ObjectStore
from shared.tenants import authenticate, hash_key

MAX_KEY_LENGTH = 256

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key of your tenant: `Authorization: Bearer th_...`.",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key and the tenant it belongs to."""

    key_id: str
    tenant_id: str


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> ObjectStore:
    """The object store."""
    store: ObjectStore = request.app.state.store
    return store


async def get_jobs(request: Request) -> JobService:
    """The job service (state changes and enqueueing)."""
    jobs: JobService = request.app.state.jobs
    return jobs


def _sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


# The plain getters are `async` only so FastAPI calls them inline instead of in a thread.
async def get_sessions(request: Request) -> sessionmaker[Session]:
    """The session factory, for work that opens its own short sessions."""
    return _sessions(request)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A database session for the duration of the request.

    Creating a session does no I/O, so it happens inline; closing may (it returns the
    connection), so that happens in a worker thread of its own budget, after the response.
    """
    session = _sessions(request)()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_budget("release", session.close)
        else:
            session.close()


def unauthorized(detail: str, error: str | None = None) -> ApiError:
    """401 with the challenge RFC 6750 asks for."""
    challenge = 'Bearer realm="talkinghead"'
    if error:
        challenge += f', error="{error}"'
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """Authenticate the bearer API key (401 if missing, unknown or revoked); count it (429)."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    token = credentials.credentials if credentials is not None else None
    digest = hash_key(token) if token is not None else None
    address = request.client.host if request.client is not None else "unknown"
    if limiter is not None:
        limiter.check_address(address, digest)  # a flood of bad keys: 429 before any lookup
    if token is None:
        raise _failed(request, limiter, address, None, unauthorized("missing bearer API key"))
    if len(token) > MAX_KEY_LENGTH or not token.isascii() or not token.isprintable():
        raise _failed(
            request, limiter, address, None, unauthorized("invalid API key", "invalid_token")
        )
    assert digest is not None
    limits: TenantLimits | None = None
    if limiter is not None and (known := limiter.tenant_of(digest)) is not None:
        request.state.tenant_id = known
        limiter.check_empty(known)  # a flooding tenant's 429 before any lookup
    # a short session of its own: streaming uploads must not hold a connection for minutes
    with _sessions(request)() as session:
        key = authenticate(session, token)
        if key is not None:
            principal = Principal(key_id=key.id, tenant_id=key.tenant_id)
            if limiter is not None:
                limits = tenant_limits(session, request.app.state.settings, principal.tenant_id)
    if key is None:
        error = unauthorized("invalid or revoked API key", "invalid_token")
        raise _failed(request, limiter, address, digest, error)
    request.state.tenant_id = principal.tenant_id
    if limiter is not None and limits is not None:
        limiter.check(principal.tenant_id, limits, digest)  # after the session: none held
    return principal


def _failed(
    request: Request, limiter: RateLimiter | None, address: str, digest: str | None,
    error: ApiError,
) -> ApiError:  # fmt: skip
    """`error` (a 401), after counting the failure against the client address (429 when over)."""
    if limiter is not None:
        settings: Settings = request.app.state.settings
        limiter.count_failure(
            address, digest, settings.auth_failures_per_second, settings.auth_failure_burst
        )
    return error


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
