"""Request bodies: content-type dispatch, bounded reads, and a blocking view of the stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import anyio.from_thread
from fastapi import Request
from starlette.requests import ClientDisconnect

from services.api.errors import ApiError
from services.api.threads import run_in_budget

T = TypeVar("T")
BodyKind = Literal["multipart", "json"]


def body_kind(request: Request) -> BodyKind:
    """Which of the two accepted encodings the request uses; 415 for anything else."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return "multipart"
    if media_type == "application/json" or media_type.endswith("+json"):
        return "json"
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data or application/json")


def declared_length(request: Request) -> int | None:
    """The Content-Length header, if present and sane."""
    value = request.headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def refuse_if_longer(request: Request, limit: int, code: str, what: str) -> None:
    """413 before reading anything when the declared body is obviously too large."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise ApiError(413, code, f"{what} is larger than {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes (413 `request_too_large`)."""
    refuse_if_longer(request, limit, "request_too_large", "the request body")
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise ApiError(413, "request_too_large", f"the request body exceeds {limit} bytes")
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away") from None
    return bytes(buf)


def blocking_chunks(request: Request) -> Iterator[bytes]:
    """The body as a blocking iterator, for a worker thread started by anyio."""
    stream = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected", "the client went away") from None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk


async def run_upload(func: Callable[[], T]) -> T:
    """Run a blocking intake function (which may read the body) in the upload thread budget."""
    return await run_in_budget("upload", func)
