"""Pure-ASGI request middleware: request ids, HTTP metrics, access log, last-resort 500s."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import PROBLEM_MEDIA_TYPE, problem_bytes
from shared.telemetry import HTTP_LATENCY, HTTP_REQUESTS, request_id_var

log = logging.getLogger("talkinghead.api")
access_log = logging.getLogger("talkinghead.access")

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_REQUEST_ID_HEADER = b"x-request-id"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            return text if _SANE_REQUEST_ID.match(text) else None
    return None


class RequestContextMiddleware:
    """Tags each request with an id, measures it by route template and logs one line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        finished: float | None = None  # background tasks may run on after the last byte
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, finished
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_HEADER, raw_id)]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            status = 500
            if not response_started:
                body = problem_bytes(500, "internal_error", "an unexpected error occurred")
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (_REQUEST_ID_HEADER, raw_id),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = (finished or time.perf_counter()) - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %s",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "fields": {
                            "method": method,
                            "path": scope["path"],
                            "route": template,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 2),
                            "tenant_id": scope.get("state", {}).get("tenant_id"),
                        }
                    },
                )
            request_id_var.reset(token)
