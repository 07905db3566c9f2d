"""Problem-details errors (RFC 9457) with stable codes, and the handlers that render them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.outages import outage_errors, outage_of
from shared.schemas import Problem

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Codes for errors raised by Starlette/FastAPI themselves rather than by our routes.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "request_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def status_title(status: int) -> str:
    """The standard reason phrase of an HTTP status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ApiError(Exception):
    """An error the client sees as a problem document with a stable `code`."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


class ProblemResponse(JSONResponse):
    """A JSON response labelled `application/problem+json`."""

    media_type = PROBLEM_MEDIA_TYPE


def problem_response(
    status: int, code: str, detail: str = "", headers: Mapping[str, str] | None = None
) -> ProblemResponse:
    """Render one problem document."""
    body = Problem(title=status_title(status), status=status, detail=detail, code=code)
    return ProblemResponse(body.model_dump(), status_code=status, headers=dict(headers or {}))


def problem_bytes(status: int, code: str, detail: str = "") -> bytes:
    """A problem document as bytes, for the pure-ASGI fallback path."""
    body = Problem(title=status_title(status), status=status, detail=detail, code=code)
    return json.dumps(body.model_dump()).encode()


def describe_errors(errors: Sequence[Any], limit: int = 5) -> str:
    """One line per pydantic error, `loc: message`, at most `limit` of them."""
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > limit:
        parts.append(f"... and {len(errors) - limit} more")
    return "; ".join(parts) or "invalid request"


def validation_error(exc: ValidationError, prefix: Iterable[str | int] = ()) -> ApiError:
    """A pydantic error as our 422 `validation_error`."""
    errors = [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors(include_url=False)]
    return ApiError(422, "validation_error", describe_errors(errors))


def _api_error(_: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ApiError)
    return problem_response(exc.status, exc.code, exc.detail, exc.headers)


OUTAGE_RETRY_AFTER_S = 5


def _outage(_: Request, exc: Exception) -> ProblemResponse:
    """A backing service is away: 503 with a code and Retry-After, not a 500."""
    service = outage_of(exc) or "service"
    return problem_response(
        503,
        f"{service}_unavailable",
        f"the {service} is briefly unreachable; retry shortly",
        {"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
    )


def route_methods(routes: Iterable[Any]) -> list[tuple[re.Pattern[str], set[str]]]:
    """Path patterns and their methods, collected once for `Allow` headers."""
    found = []
    for route in routes:
        pattern, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if pattern is not None and methods:
            found.append((pattern, set(methods)))
    return found


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for pattern, methods_here in getattr(request.app.state, "route_methods", ()):
        if pattern.match(request.url.path):
            methods |= methods_here
    return sorted(methods)


def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):
        # FastAPI's "error parsing the body" (e.g. not UTF-8): the same 422 as invalid JSON
        return problem_response(422, "validation_error", "the request body is not valid JSON")
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else ""
    if detail == status_title(exc.status_code):
        detail = ""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(exc.status_code, code, detail, headers)


def _request_validation_error(_: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(422, "validation_error", describe_errors(list(exc.errors())))


def install_error_handlers(app: FastAPI) -> None:
    """Render every handled error as a problem document (500s come from the middleware)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    for outage in outage_errors():
        app.add_exception_handler(outage, _outage)


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before sending the request again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting problem documents for `statuses`."""
    return {
        status: {
            "model": Problem,
            "description": status_title(status),
            **({"headers": _RETRY_AFTER} if status == 429 else {}),
        }
        for status in statuses
    }
