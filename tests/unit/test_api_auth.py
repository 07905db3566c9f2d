"""API keys, authentication, problem documents and the unauthenticated endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from tests.unit.conftest import Api

PROBLEM = "application/problem+json"


def assert_problem(response: object, status: int, code: str) -> dict[str, object]:
    """The response is a problem document with this status and code."""
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == PROBLEM  # type: ignore[attr-defined]
    body: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert body["status"] == status and body["code"] == code
    return body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer th_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "x" * 5000},
        {"Authorization": "Bearer \u00e9\u00e9".encode("latin-1")},
    ],
)
def test_missing_or_bad_key_is_401(api: Api, headers: dict[str, Any]) -> None:
    response = api.client.get("/v1/avatars", headers=headers)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_key_lifecycle(api: Api) -> None:
    created = api.client.post("/v1/keys", json={"name": "ci"}, headers=api.headers)
    assert created.status_code == 201
    new = created.json()
    assert new["key"].startswith("th_") and new["name"] == "ci" and new["revoked_at"] is None
    new_headers = {"Authorization": f"Bearer {new['key']}"}
    assert api.client.get("/v1/avatars", headers=new_headers).status_code == 200

    listed = api.client.get("/v1/keys", headers=api.headers).json()
    assert [k["name"] for k in listed] == ["initial", "ci"]
    assert all("key" not in k for k in listed)

    assert api.client.delete(f"/v1/keys/{new['id']}", headers=api.headers).status_code == 204
    assert_problem(api.client.get("/v1/avatars", headers=new_headers), 401, "unauthorized")
    revoked = {k["id"]: k for k in api.client.get("/v1/keys", headers=api.headers).json()}
    assert revoked[new["id"]]["revoked_at"] is not None


def test_keys_are_per_tenant(api: Api) -> None:
    mine = api.client.get("/v1/keys", headers=api.headers).json()
    theirs = api.client.get("/v1/keys", headers=api.other_headers).json()
    assert {k["id"] for k in mine}.isdisjoint({k["id"] for k in theirs})
    response = api.client.delete(f"/v1/keys/{mine[0]['id']}", headers=api.other_headers)
    assert_problem(response, 404, "not_found")
    assert api.client.get("/v1/avatars", headers=api.headers).status_code == 200


def test_key_create_refuses_unknown_fields(api: Api) -> None:
    response = api.client.post("/v1/keys", json={"name": "x", "admin": True}, headers=api.headers)
    assert_problem(response, 422, "validation_error")


def test_unknown_route_and_method_are_problems(api: Api) -> None:
    assert_problem(api.client.get("/v1/nothing-here"), 404, "not_found")
    response = api.client.patch("/v1/avatars", headers=api.headers)
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


def test_unhandled_error_is_a_500_problem(api: Api) -> None:
    app = api.client.app
    assert isinstance(app, FastAPI)

    def boom() -> None:
        raise RuntimeError("kaput")

    app.add_api_route("/boom", boom)
    response = api.client.get("/boom", headers={"X-Request-ID": "req-123"})
    body = assert_problem(response, 500, "internal_error")
    assert "kaput" not in str(body)
    assert response.headers["x-request-id"] == "req-123"


def test_request_id_is_echoed_or_generated(api: Api) -> None:
    given = api.client.get("/healthz", headers={"X-Request-ID": "abc-1"})
    assert given.headers["x-request-id"] == "abc-1"
    odd = api.client.get("/healthz", headers={"X-Request-ID": "no spaces <allowed>"})
    assert odd.headers["x-request-id"] != "no spaces <allowed>"
    assert len(odd.headers["x-request-id"]) == 32


def test_openapi_documents_both_request_bodies(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    for path in ("/v1/avatars", "/v1/avatars/{avatar_id}/renders"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}
    responses = doc["paths"]["/v1/avatars/{avatar_id}"]["get"]["responses"]
    assert set(responses["404"]["content"]) == {PROBLEM}
    assert "AvatarCreate" in doc["components"]["schemas"]
