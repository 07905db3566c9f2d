"""Creating, listing, reading and deleting avatars; every refusal leaves nothing behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shared.db.models import Avatar, Job
from shared.db.session import session_scope
from tests.unit.conftest import Api, ApiFactory, Media, multipart_body, video_form
from tests.unit.test_api_auth import assert_problem


def post_avatar(api: Api, media: Media, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    """POST /v1/avatars as multipart."""
    form = video_form(media, **kw)
    return api.client.post("/v1/avatars", headers=headers or api.headers, **form)


def test_create_avatar_from_multipart(api: Api, media: Media) -> None:
    response = post_avatar(
        api, media, name="Ada", preset="cpu-quick", metadata=json.dumps({"order": 7})
    )
    assert response.status_code == 202, response.text
    avatar = response.json()
    assert avatar["status"] == "queued" and avatar["name"] == "Ada"
    assert avatar["metadata"] == {"order": 7} and avatar["consent"] is True
    key = f"tenants/{api.tenant_id}/avatars/{avatar['id']}/source/video"
    assert api.objects() == [key]
    assert (api.store_dir / key).read_bytes() == media.video
    with session_scope(api.settings.database_url) as s:
        row = s.get(Avatar, avatar["id"])
        assert row is not None and row.consent_key_id.startswith("key_")
        job = s.query(Job).filter_by(resource_id=avatar["id"]).one()
        assert job.kind == "avatar" and job.status == "queued" and job.enqueued_at is not None
    fetched = api.client.get(f"/v1/avatars/{avatar['id']}", headers=api.headers)
    assert fetched.status_code == 200 and fetched.json()["id"] == avatar["id"]


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"consent": "false"}, 422, "consent_required"),
        ({"consent": "maybe"}, 422, "validation_error"),
        ({"renderer": "nerf9000"}, 422, "validation_error"),
        ({"metadata": "[1, 2]"}, 422, "validation_error"),
        ({"metadata": "{not json"}, 422, "validation_error"),
        ({"metadata": json.dumps({"blob": "x" * 5000})}, 422, "metadata_too_large"),
        ({"callback_url": "http://169.254.169.254/latest"}, 422, "callback_url_forbidden"),
        ({"callback_url": "ftp://example.com/x"}, 422, "callback_url_forbidden"),
        ({"name": "n" * 201}, 422, "validation_error"),
    ],
)
def test_refused_fields_leave_nothing(
    api: Api, media: Media, fields: dict[str, str], status: int, code: str
) -> None:
    assert_problem(post_avatar(api, media, **fields), status, code)
    api.assert_nothing_left()


def test_missing_consent_is_refused(api: Api, media: Media) -> None:
    files = {"video": ("face.mp4", media.video, "video/mp4")}
    response = api.client.post("/v1/avatars", headers=api.headers, files=files, data={})
    assert_problem(response, 422, "consent_required")
    api.assert_nothing_left()


def test_empty_and_non_media_files_are_refused(api: Api, media: Media) -> None:
    assert_problem(post_avatar(api, media, video=b""), 422, "empty_file")
    api.assert_nothing_left()
    text = b"hello, this is a plain text file pretending to be a video\n" * 20
    assert_problem(post_avatar(api, media, video=text), 415, "unsupported_media_type")
    api.assert_nothing_left()
    assert_problem(post_avatar(api, media, video=media.audio), 415, "unsupported_media_type")
    api.assert_nothing_left()


def test_missing_video_part_is_refused(api: Api) -> None:
    body = multipart_body([("consent", b"true", None)])
    headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
    response = api.client.post("/v1/avatars", headers=headers, content=body)
    assert_problem(response, 422, "source_required")
    api.assert_nothing_left()


def test_oversized_video_is_413_declared_or_streamed(make_api: ApiFactory, media: Media) -> None:
    api = make_api(max_video_bytes=4096)
    big = media.video[:4] + b"ftyp" + b"\0" * 600_000  # way past limit + form allowance
    assert_problem(post_avatar(api, media, video=big), 413, "file_too_large")
    api.assert_nothing_left()
    # without Content-Length (chunked) the limit is enforced while streaming
    body = multipart_body([("consent", b"true", None), ("video", media.video, "v.mp4")])
    headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = api.client.post("/v1/avatars", headers=headers, content=chunked())
    assert_problem(response, 413, "file_too_large")
    api.assert_nothing_left()


def test_unknown_fields_are_refused(api: Api, media: Media) -> None:
    assert_problem(post_avatar(api, media, colour="red"), 422, "unknown_field")
    api.assert_nothing_left()
    # an unknown field after the file: the stored file is removed again
    body = multipart_body(
        [("consent", b"true", None), ("video", media.video, "v.mp4"), ("extra", b"1", None)]
    )
    headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
    response = api.client.post("/v1/avatars", headers=headers, content=body)
    assert_problem(response, 422, "unknown_field")
    api.assert_nothing_left()
    response = api.client.post(
        "/v1/avatars",
        headers=api.headers,
        json={"upload_id": "up_x", "consent": True, "colour": "red"},
    )
    assert_problem(response, 422, "validation_error")
    api.assert_nothing_left()


def test_fields_after_the_file_are_still_checked(api: Api, media: Media) -> None:
    body = multipart_body(
        [
            ("video", media.video, "v.mp4"),
            ("consent", b"true", None),
            ("callback_url", b"http://169.254.169.254/", None),
        ]
    )
    headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
    response = api.client.post("/v1/avatars", headers=headers, content=body)
    assert_problem(response, 422, "callback_url_forbidden")
    api.assert_nothing_left()
    body = multipart_body([("video", media.video, "v.mp4"), ("consent", b"false", None)])
    response = api.client.post("/v1/avatars", headers=headers, content=body)
    assert_problem(response, 422, "consent_required")
    api.assert_nothing_left()


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("text/plain", b"hi", 415, "unsupported_media_type"),
        ("multipart/form-data", b"--x--", 422, "validation_error"),
        ("multipart/form-data; boundary=abc", b"garbage without boundary", 422, "validation_error"),
        ("application/json", b"{not json", 422, "validation_error"),
        ("application/json", b"[]", 422, "validation_error"),
        ("application/json", b'{"upload_id": "up_1"}', 422, "consent_required"),
        ("application/json", b'{"upload_id": "up_1", "consent": false}', 422, "consent_required"),
    ],
)
def test_malformed_bodies_are_4xx(
    api: Api, content_type: str, body: bytes, status: int, code: str
) -> None:
    headers = {**api.headers, "Content-Type": content_type}
    response = api.client.post("/v1/avatars", headers=headers, content=body)
    assert_problem(response, status, code)
    api.assert_nothing_left()


def test_idempotency_key(api: Api, media: Media) -> None:
    headers = {**api.headers, "Idempotency-Key": "order-1"}
    first = post_avatar(api, media, headers=headers, name="A")
    second = post_avatar(api, media, headers=headers, name="A")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    objects = api.objects()
    assert len(objects) == 1  # the duplicate upload was removed
    assert api.counts()["avatars"] == 1
    # same key, different file or fields: refused, nothing added
    changed = post_avatar(api, media, headers=headers, name="B")
    assert_problem(changed, 422, "idempotency_key_reused")
    other_file = post_avatar(api, media, headers=headers, name="A", video=media.video + b"\0")
    assert_problem(other_file, 422, "idempotency_key_reused")
    assert api.objects() == objects
    assert api.counts() == {"avatars": 1, "jobs": 1, "renders": 0, "idempotency_records": 1}
    # keys are per tenant
    theirs = post_avatar(
        api, media, headers={**api.other_headers, "Idempotency-Key": "order-1"}, name="A"
    )
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


def test_idempotency_race_returns_the_winner(api: Api, media: Media) -> None:
    headers = {**api.headers, "Idempotency-Key": "race"}
    results: list[Any] = []
    gate = threading.Barrier(4)

    def send() -> None:
        gate.wait()
        results.append(post_avatar(api, media, headers=headers, name="R"))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [202] * 4
    assert len({r.json()["id"] for r in results}) == 1
    assert api.counts() == {"avatars": 1, "jobs": 1, "renders": 0, "idempotency_records": 1}
    assert len(api.objects()) == 1


def test_pagination_newest_first(api: Api, media: Media) -> None:
    ids = [post_avatar(api, media, name=f"a{i}").json()["id"] for i in range(5)]
    post_avatar(api, media, headers=api.other_headers, name="theirs")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/avatars", headers=api.headers, params=params).json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 101}, {"limit": "x"}, {"cursor": "bm9wZQ"}, {"cursor": "%%"}]
)
def test_bad_page_parameters(api: Api, params: dict[str, Any]) -> None:
    response = api.client.get("/v1/avatars", headers=api.headers, params=params)
    assert_problem(response, 422, "validation_error")


def test_tenant_isolation(api: Api, media: Media) -> None:
    avatar_id = post_avatar(api, media).json()["id"]
    other = api.other_headers
    assert_problem(api.client.get(f"/v1/avatars/{avatar_id}", headers=other), 404, "not_found")
    response = api.client.get(f"/v1/avatars/{avatar_id}/events", headers=other)
    assert_problem(response, 404, "not_found")
    response = api.client.post(
        f"/v1/avatars/{avatar_id}/renders",
        headers=other,
        json={"upload_id": "up_x"},
    )
    assert_problem(response, 404, "not_found")
    assert_problem(api.client.delete(f"/v1/avatars/{avatar_id}", headers=other), 404, "not_found")
    assert api.client.get("/v1/avatars", headers=other).json()["items"] == []
    assert api.client.get(f"/v1/avatars/{avatar_id}", headers=api.headers).status_code == 200


def test_delete_avatar_cancels_and_removes_everything(api: Api, media: Media) -> None:
    headers = {**api.headers, "Idempotency-Key": "k"}
    avatar_id = post_avatar(api, media, headers=headers).json()["id"]
    assert api.client.delete(f"/v1/avatars/{avatar_id}", headers=api.headers).status_code == 204
    assert_problem(
        api.client.get(f"/v1/avatars/{avatar_id}", headers=api.headers), 404, "not_found"
    )
    assert_problem(
        api.client.delete(f"/v1/avatars/{avatar_id}", headers=api.headers), 404, "not_found"
    )
    assert api.objects() == []
    with session_scope(api.settings.database_url) as s:
        job = s.query(Job).filter_by(resource_id=avatar_id).one()
        assert job.status == "cancelled"
    # the key of a deleted avatar can make a new one
    again = post_avatar(api, media, headers=headers)
    assert again.status_code == 202 and again.json()["id"] != avatar_id


def test_avatar_from_an_upload(api: Api, media: Media) -> None:
    slot = api.client.post(
        "/v1/uploads", headers=api.headers, json={"purpose": "video", "size": len(media.video)}
    )
    assert slot.status_code == 201, slot.text
    up = slot.json()
    assert up["method"] == "PUT" and up["url"].endswith(f"/v1/uploads/{up['upload_id']}")
    body = {"upload_id": up["upload_id"], "consent": True, "name": "U"}
    # nothing uploaded yet
    response = api.client.post("/v1/avatars", headers=api.headers, json=body)
    assert_problem(response, 409, "upload_incomplete")
    put = api.client.put(f"/v1/uploads/{up['upload_id']}", headers=api.headers, content=media.video)
    assert put.status_code == 204, put.text
    # another tenant cannot use it
    assert_problem(
        api.client.post("/v1/avatars", headers=api.other_headers, json=body),
        404,
        "upload_not_found",
    )
    created = api.client.post("/v1/avatars", headers=api.headers, json=body)
    assert created.status_code == 202, created.text
    assert api.upload_row(up["upload_id"]).consumed_at is not None
    # an upload is used once
    assert_problem(
        api.client.post("/v1/avatars", headers=api.headers, json=body), 404, "upload_not_found"
    )
    # deleting the avatar deletes the uploaded source too
    assert (
        api.client.delete(f"/v1/avatars/{created.json()['id']}", headers=api.headers).status_code
        == 204
    )
    assert api.objects() == []


def test_upload_put_limits(api: Api, media: Media) -> None:
    slot = api.client.post(
        "/v1/uploads", headers=api.headers, json={"purpose": "video", "size": 100}
    ).json()
    url = f"/v1/uploads/{slot['upload_id']}"
    assert slot["max_bytes"] == 100
    assert_problem(
        api.client.put(url, headers=api.headers, content=media.video), 413, "file_too_large"
    )

    def chunked() -> Iterator[bytes]:
        yield media.video[:64]
        yield media.video[64:4096]

    assert_problem(
        api.client.put(url, headers=api.headers, content=chunked()), 413, "file_too_large"
    )
    assert_problem(api.client.put(url, headers=api.headers, content=b""), 422, "empty_file")
    assert_problem(
        api.client.put(url, headers=api.headers, content=b"x" * 50), 415, "unsupported_media_type"
    )
    assert_problem(
        api.client.put(url, headers=api.other_headers, content=b"x"), 404, "upload_not_found"
    )
    assert api.objects() == []
    capped = api.client.post(
        "/v1/uploads", headers=api.headers, json={"purpose": "audio", "size": 10**12}
    ).json()
    assert capped["max_bytes"] == api.settings.max_audio_bytes


def test_events_stream_until_terminal(api: Api, media: Media) -> None:
    avatar_id = post_avatar(api, media).json()["id"]

    def progress() -> None:
        api.set_job(avatar_id, status="training", stage="training", progress=0.5)
        threading.Timer(
            0.4, lambda: api.set_job(avatar_id, status="ready", stage="ready", progress=1.0)
        ).start()

    threading.Timer(0.4, progress).start()
    with api.client.stream("GET", f"/v1/avatars/{avatar_id}/events", headers=api.headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [block for block in text.split("\n\n") if block.startswith("event: state")]
    states = [json.loads(block.split("data: ", 1)[1])["status"] for block in events]
    assert states[0] == "queued" and states[-1] == "ready"
    assert "training" in states
    versions = [int(block.split("id: ", 1)[1].split("\n")[0]) for block in events]
    assert versions == sorted(versions)


def test_events_send_keepalives(api: Api, media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.api.events.KEEPALIVE_S", 0.2)
    avatar_id = post_avatar(api, media).json()["id"]
    threading.Timer(1.0, lambda: api.set_job(avatar_id, status="failed", stage="failed")).start()
    with api.client.stream("GET", f"/v1/avatars/{avatar_id}/events", headers=api.headers) as r:
        text = "".join(r.iter_text())
    assert ": keepalive\n\n" in text
    assert '"status":"failed"' in text.rsplit("event: state", 1)[1]
