"""The FastAPI application factory (`uvicorn services.api.app:create_app --factory`)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.engine import make_url

from services.api.errors import install_error_handlers, route_methods
from services.api.middleware import RequestContextMiddleware
from services.api.monitoring import redis_client
from services.api.openapi import install_openapi
from services.api.ratelimit import RateLimiter
from services.api.routes import avatars, health, keys, renders, uploads
from shared.config import Settings, load_settings
from shared.db.migrate import upgrade
from shared.db.session import session_factory
from shared.jobs import JobService
from shared.queue import celery_app, configure_celery
from shared.storage import build_store
from shared.telemetry import configure_logging

log = logging.getLogger(__name__)

DESCRIPTION = """\
Turn a portrait video into an avatar, then speech audio into a lip-synced talking video of it.

Authenticate with `Authorization: Bearer <api key>`. Errors are `application/problem+json`
documents (`type`, `title`, `status`, `detail`, `code`); the `code` values are stable:
`unauthorized`, `not_found`, `validation_error`, `consent_required`, `unknown_field`,
`empty_file`, `unsupported_media_type`, `file_too_large`, `request_too_large`,
`idempotency_key_reused`, `callback_url_forbidden`, `metadata_too_large`, `avatar_not_ready`,
`render_not_done`, `render_expired`, `upload_not_found`, `upload_incomplete`,
`range_not_satisfiable`, `method_not_allowed`, `client_disconnected`, `rate_limited`,
`too_many_queued_jobs`, `internal_error`.

Each tenant has limits: a request rate (429 `rate_limited` past it) and a number of queued
jobs (429 `too_many_queued_jobs` for a new avatar or render past it); both answers carry a
`Retry-After` header in whole seconds.
"""


def package_version() -> str:
    """The installed distribution's version, else the one in a source checkout's pyproject."""
    try:
        return importlib.metadata.version("talkinghead")
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    with contextlib.suppress(OSError):
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    return "0+unknown"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    client = app.state.redis
    if client is not None:
        client.close()
    if app.state.rate_limiter is not None:
        app.state.rate_limiter.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; without `settings` they come from the environment and logging is set up."""
    if settings is None:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_json)
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        upgrade(settings.database_url)  # embedded mode migrates at start-up
    configure_celery(settings)

    app = FastAPI(
        title="talkinghead",
        version=package_version(),
        description=DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.sessions = session_factory(settings.database_url)
    # No retry budget: a request fails fast with a 503 the client retries, not hangs.
    app.state.store = build_store(settings, retry_s=0.0)
    app.state.jobs = JobService(settings, celery_app)
    app.state.redis = redis_client(settings.redis_url) if settings.redis_url else None
    # Without Redis (the tests' in-memory broker) there is no shared bucket: no rate limit.
    app.state.rate_limiter = (
        RateLimiter.from_url(settings.redis_url) if settings.redis_url else None
    )

    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    routers = (avatars.router, renders.router, uploads.router, keys.router, health.router)
    for router in routers:
        app.include_router(router)
    app.state.route_methods = route_methods(
        [*app.router.routes, *(route for router in routers for route in router.routes)]
    )
    install_openapi(app, settings)
    return app
