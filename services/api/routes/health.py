"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from services.api.deps import SessionsDep, SettingsDep, StoreDep
from services.api.monitoring import check_broker, check_database, check_store, collect_gauges
from shared.schemas import Health
from shared.telemetry import render_metrics

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness", operation_id="healthz")
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    operation_id="readyz",
    summary="Readiness",
    responses={503: {"model": Health, "description": "A dependency is unreachable"}},
)
def readyz(
    request: Request, settings: SettingsDep, sessions: SessionsDep, store: StoreDep
) -> Response:
    """Ready when the database, the broker and the object store all answer."""
    checks = {
        "database": check_database(sessions),
        "broker": check_broker(settings.redis_url, request.app.state.redis),
        "store": check_store(store),
    }
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}
    },
)
async def metrics(request: Request, sessions: SessionsDep) -> Response:
    """Prometheus text exposition, with the job and queue gauges refreshed."""
    await run_in_threadpool(collect_gauges, sessions, request.app.state.redis)
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)
