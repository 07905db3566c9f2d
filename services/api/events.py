"""Server-Sent Events of a job's state, polled from the database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from shared.db.models import Job
from shared.jobs import TERMINAL
from shared.resources import job_event

POLL_INTERVAL_S = 0.3
KEEPALIVE_S = 15.0

# Loads the job of a live resource in a short session of its own; None once it is gone.
JobLoader = Callable[[], Job | None]


def format_event(resource_id: str, job: Job) -> bytes:
    """One `state` event; the id is the job's version so clients can tell changes apart."""
    data = job_event(resource_id, job).model_dump_json()
    return f"event: state\nid: {job.version}\ndata: {data}\n\n".encode()


async def job_events(
    request: Request, resource_id: str, load: JobLoader, first: Job
) -> AsyncIterator[bytes]:
    """The current state at once, then one event per change; ends after a terminal state."""
    yield format_event(resource_id, first)
    if first.status in TERMINAL:
        return
    version = first.version
    last_sent = time.monotonic()
    while True:
        await anyio.sleep(POLL_INTERVAL_S)
        if await request.is_disconnected():
            return
        job = await run_in_threadpool(load)
        if job is None:  # deleted while watched
            return
        if job.version != version:
            version = job.version
            last_sent = time.monotonic()
            yield format_event(resource_id, job)
            if job.status in TERMINAL:
                return
        elif time.monotonic() - last_sent >= KEEPALIVE_S:
            last_sent = time.monotonic()
            yield b": keepalive\n\n"


async def open_event_stream(
    request: Request, resource_id: str, load: JobLoader
) -> StreamingResponse | None:
    """The SSE response for a resource, or None when it does not exist for the caller."""
    first = await run_in_threadpool(load)
    if first is None:
        return None
    return StreamingResponse(
        job_events(request, resource_id, load, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
