"""The parts of the OpenAPI document FastAPI cannot infer: hand-parsed bodies, problem types."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from services.api.errors import PROBLEM_MEDIA_TYPE
from shared import schemas
from shared.config import Settings

REF = "#/components/schemas/{model}"
DEFAULT_PAGE_SIZE = 20
_BINARY = {"type": "string", "format": "binary"}
_CALLBACK = {
    "type": "string",
    "maxLength": 2000,
    "description": "Webhook target for terminal states (public http(s) address).",
}
_METADATA = {
    "type": "object",
    "maxProperties": 64,
    "description": "A JSON object echoed in webhooks (at most 4 KiB as JSON).",
}
_CONSENT = {
    "type": "boolean",
    "const": True,
    "description": "Must be true: you attest the person shown agreed to being made an avatar.",
}
_JSON_PART = {"contentType": "application/json"}
# One Server-Sent Event (`itemSchema`, as FastAPI documents its own event streams).
SSE_EVENT = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["state"]},
        "id": {"type": "string", "description": "The job's version; grows with every change."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/JobEvent"},
        },
    },
}


def _ref(model: type[Any]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def avatar_request_body() -> dict[str, Any]:
    """`openapi_extra` for `POST /v1/avatars`: a multipart upload or JSON naming an upload."""
    fields = schemas.AvatarCreate.model_json_schema(ref_template=REF)["properties"]
    form = {
        "type": "object",
        "required": ["consent"],
        # exactly one source file: `source_required` without one, `multiple_sources` with both
        "oneOf": [{"required": ["video"]}, {"required": ["image"]}],
        "additionalProperties": False,
        "properties": {
            "video": {**_BINARY, "description": "The portrait video (mp4, mov, mkv, webm, ...)."},
            "image": {
                **_BINARY,
                "description": "Or a portrait photo (JPEG, PNG or WebP), for renderer families "
                "that make avatars from a photo (else 422 `unsupported_source`).",
            },
            "consent": _CONSENT,
            "name": {"type": "string", "maxLength": 200},
            "renderer": fields["renderer"],
            "preset": fields["preset"],
            "callback_url": _CALLBACK,
            "metadata": _METADATA,
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form, "encoding": {"metadata": _JSON_PART}},
                "application/json": {"schema": _ref(schemas.AvatarCreate)},
            },
        }
    }


def render_request_body() -> dict[str, Any]:
    """`openapi_extra` for `POST /v1/avatars/{id}/renders`."""
    option_props = schemas.RenderOptions.model_json_schema(ref_template=REF)["properties"]
    form = {
        "type": "object",
        "required": ["audio"],
        "additionalProperties": False,
        "properties": {
            "audio": {
                **_BINARY,
                "description": "The speech audio (wav, mp3, ogg, flac, m4a, ...).",
            },
            "options": {
                **_ref(schemas.RenderOptions),
                "description": "All options as one JSON object; individual fields override it.",
            },
            "resolution": option_props["resolution"],
            "background": _ref(schemas.BackgroundSpec),
            "pose": option_props["pose"],
            "eyes": option_props["eyes"],
            "callback_url": _CALLBACK,
            "metadata": _METADATA,
        },
    }
    json_parts = ("options", "resolution", "background", "pose", "eyes", "metadata")
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": form,
                    "encoding": {name: _JSON_PART for name in json_parts},
                },
                "application/json": {"schema": _ref(schemas.RenderCreate)},
            },
        }
    }


def _is_problem(content: dict[str, Any]) -> bool:
    schema = content.get("schema", {})
    return isinstance(schema, dict) and schema.get("$ref") == REF.format(model="Problem")


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document plus the hand-parsed request models and problem media types."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    _, defs = models_json_schema(
        [
            (schemas.AvatarCreate, "validation"),
            (schemas.RenderCreate, "validation"),
            (schemas.RenderOptions, "validation"),
            (schemas.JobEvent, "serialization"),
        ],
        ref_template=REF,
    )
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault(name, definition)
    components["AvatarCreate"]["properties"]["consent"] = _CONSENT
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[:1] in "45" and _is_problem(content.get("application/json", {})):
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
            for param in operation.get("parameters", []):
                if param.get("name") == "limit" and param.get("in") == "query":
                    param["schema"] = {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": settings.page_size_max,
                        "default": min(DEFAULT_PAGE_SIZE, settings.page_size_max),
                    }
    return doc


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve `build_openapi`'s document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
