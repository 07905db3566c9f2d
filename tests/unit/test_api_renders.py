"""Renders: readiness, creation, options, the video route with ranges, deletion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.db.models import Job
from shared.db.session import session_scope
from shared.storage import LocalObjectStore, tenant_key
from tests.unit.conftest import Api, Media
from tests.unit.test_api_auth import assert_problem
from tests.unit.test_api_avatars import post_avatar

VIDEO = bytes(range(256)) * 40  # 10240 bytes with a recognisable pattern


def ready_avatar(api: Api, media: Media) -> str:
    """An avatar whose job a worker has finished."""
    avatar_id: str = post_avatar(api, media).json()["id"]
    api.set_job(avatar_id, status="ready", stage="ready", progress=1.0)
    return avatar_id


def post_render(api: Api, avatar_id: str, audio: bytes, **data: str) -> Any:
    """POST /v1/avatars/{id}/renders as multipart."""
    return api.client.post(
        f"/v1/avatars/{avatar_id}/renders",
        headers=api.headers,
        files={"audio": ("speech.wav", audio, "audio/wav")},
        data=data,
    )


def done_render(api: Api, media: Media) -> str:
    """A render marked done with a video object written directly to the store."""
    avatar_id = ready_avatar(api, media)
    render_id: str = post_render(api, avatar_id, media.audio).json()["id"]
    key = tenant_key(api.tenant_id, "renders", render_id, "video.mp4")
    LocalObjectStore(api.store_dir).put_bytes(key, VIDEO)
    with session_scope(api.settings.database_url) as s:
        from shared.db.models import Render

        row = s.get(Render, render_id)
        assert row is not None
        row.video_key = key
    api.set_job(render_id, status="done", stage="done", progress=1.0)
    return render_id


def test_render_needs_a_ready_avatar(api: Api, media: Media) -> None:
    avatar_id = post_avatar(api, media).json()["id"]
    before = api.objects()
    response = post_render(api, avatar_id, media.audio)
    assert_problem(response, 409, "avatar_not_ready")
    response = api.client.post(
        f"/v1/avatars/{avatar_id}/renders", headers=api.headers, json={"upload_id": "up_x"}
    )
    assert_problem(response, 409, "avatar_not_ready")
    assert api.objects() == before
    assert api.counts()["renders"] == 0
    assert_problem(post_render(api, "av_nope", media.audio), 404, "not_found")


def test_create_render_with_options(api: Api, media: Media) -> None:
    avatar_id = ready_avatar(api, media)
    response = post_render(
        api,
        avatar_id,
        media.audio,
        resolution="256",
        background=json.dumps({"kind": "colour", "colour": "#00ff00"}),
        pose="static",
        eyes=json.dumps([0.1, 0.2]),
        metadata=json.dumps({"job": "x"}),
    )
    assert response.status_code == 202, response.text
    render = response.json()
    assert render["avatar_id"] == avatar_id and render["status"] == "queued"
    assert render["options"]["resolution"] == 256
    assert render["options"]["background"]["colour"] == "#00ff00"
    assert render["options"]["pose"] == "static" and render["options"]["eyes"] == [0.1, 0.2]
    assert render["video_url"] is None
    key = tenant_key(api.tenant_id, "renders", render["id"], "audio")
    assert (api.store_dir / key).read_bytes() == media.audio
    got = api.client.get(f"/v1/renders/{render['id']}", headers=api.headers)
    assert got.status_code == 200 and got.json()["id"] == render["id"]
    as_object = post_render(api, avatar_id, media.audio, options=json.dumps({"pose": "static"}))
    assert as_object.status_code == 202 and as_object.json()["options"]["pose"] == "static"


@pytest.mark.parametrize(
    ("audio", "data", "status", "code"),
    [
        (b"", {}, 422, "empty_file"),
        (b"just some text, no audio here" * 10, {}, 415, "unsupported_media_type"),
        (None, {"resolution": "12"}, 422, "validation_error"),
        (
            None,
            {"background": json.dumps({"kind": "colour", "colour": "red"})},
            422,
            "validation_error",
        ),
        (None, {"background": json.dumps({"kind": "image"})}, 422, "validation_error"),
        (
            None,
            {"background": json.dumps({"kind": "image", "upload_id": "up_none"})},
            404,
            "upload_not_found",
        ),
        (None, {"options": json.dumps({"upload_id": "x"})}, 422, "validation_error"),
        (None, {"speed": "2"}, 422, "unknown_field"),
        (None, {"callback_url": "http://10.0.0.1/hook"}, 422, "callback_url_forbidden"),
    ],
)
def test_refused_renders_leave_nothing(
    api: Api, media: Media, audio: bytes | None, data: dict[str, str], status: int, code: str
) -> None:
    avatar_id = ready_avatar(api, media)
    before, counts = api.objects(), api.counts()
    response = post_render(api, avatar_id, media.audio if audio is None else audio, **data)
    assert_problem(response, status, code)
    assert api.objects() == before and api.counts() == counts


def test_oversized_audio_is_413(make_api: Any, media: Media) -> None:
    api = make_api(max_audio_bytes=1000)
    avatar_id = ready_avatar(api, media)
    before, counts = api.objects(), api.counts()
    assert_problem(post_render(api, avatar_id, media.audio), 413, "file_too_large")
    assert api.objects() == before and api.counts() == counts


def test_render_from_upload_with_idempotency(api: Api, media: Media) -> None:
    avatar_id = ready_avatar(api, media)
    slot = api.client.post(
        "/v1/uploads", headers=api.headers, json={"purpose": "audio", "size": len(media.audio)}
    ).json()
    put = api.client.put(
        f"/v1/uploads/{slot['upload_id']}", headers=api.headers, content=media.audio
    )
    assert put.status_code == 204
    headers = {**api.headers, "Idempotency-Key": "r1"}
    body = {"upload_id": slot["upload_id"], "pose": "static"}
    url = f"/v1/avatars/{avatar_id}/renders"
    first = api.client.post(url, headers=headers, json=body)
    again = api.client.post(url, headers=headers, json=body)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["id"] == again.json()["id"]
    assert_problem(
        api.client.post(url, headers=headers, json={**body, "pose": "source"}),
        422,
        "idempotency_key_reused",
    )
    assert_problem(
        api.client.post(url, headers=headers, json={**body, "extra": 1}), 422, "validation_error"
    )


def test_render_tenant_isolation_and_delete(api: Api, media: Media) -> None:
    render_id = done_render(api, media)
    other = api.other_headers
    for path in (
        f"/v1/renders/{render_id}",
        f"/v1/renders/{render_id}/video",
        f"/v1/renders/{render_id}/events",
    ):
        assert_problem(api.client.get(path, headers=other), 404, "not_found")
    assert_problem(api.client.delete(f"/v1/renders/{render_id}", headers=other), 404, "not_found")
    assert api.client.delete(f"/v1/renders/{render_id}", headers=api.headers).status_code == 204
    assert_problem(
        api.client.get(f"/v1/renders/{render_id}", headers=api.headers), 404, "not_found"
    )
    prefix = f"tenants/{api.tenant_id}/renders/{render_id}"
    assert not any(key.startswith(prefix) for key in api.objects())


def test_deleting_an_avatar_deletes_its_renders(api: Api, media: Media) -> None:
    avatar_id = ready_avatar(api, media)
    render_id = post_render(api, avatar_id, media.audio).json()["id"]
    assert api.client.delete(f"/v1/avatars/{avatar_id}", headers=api.headers).status_code == 204
    assert_problem(
        api.client.get(f"/v1/renders/{render_id}", headers=api.headers), 404, "not_found"
    )
    assert api.objects() == []
    with session_scope(api.settings.database_url) as s:
        job = s.query(Job).filter_by(resource_id=render_id).one()
        assert job.status == "cancelled"


def test_video_needs_a_done_render(api: Api, media: Media) -> None:
    avatar_id = ready_avatar(api, media)
    render_id = post_render(api, avatar_id, media.audio).json()["id"]
    response = api.client.get(f"/v1/renders/{render_id}/video", headers=api.headers)
    assert_problem(response, 409, "render_not_done")


def test_video_whole_and_ranges(api: Api, media: Media) -> None:
    render_id = done_render(api, media)
    url = f"/v1/renders/{render_id}/video"
    view = api.client.get(f"/v1/renders/{render_id}", headers=api.headers).json()
    assert view["status"] == "done" and view["video_url"].endswith(url)

    whole = api.client.get(url, headers=api.headers)
    assert whole.status_code == 200 and whole.content == VIDEO
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["content-length"] == str(len(VIDEO))

    cases = {
        "bytes=0-99": (0, 99),
        "bytes=10000-": (10000, len(VIDEO) - 1),
        "bytes=-16": (len(VIDEO) - 16, len(VIDEO) - 1),
        "bytes=10200-99999": (10200, len(VIDEO) - 1),
        "bytes=-999999": (0, len(VIDEO) - 1),
    }
    for header, (start, end) in cases.items():
        part = api.client.get(url, headers={**api.headers, "Range": header})
        assert part.status_code == 206, header
        assert part.content == VIDEO[start : end + 1], header
        assert part.headers["content-range"] == f"bytes {start}-{end}/{len(VIDEO)}"
        assert part.headers["content-length"] == str(end - start + 1)

    for header in ("bytes=10240-", "bytes=99999-100000", "bytes=-0"):
        bad = api.client.get(url, headers={**api.headers, "Range": header})
        assert_problem(bad, 416, "range_not_satisfiable")
        assert bad.headers["content-range"] == f"bytes */{len(VIDEO)}"

    # ranges we do not serve are ignored: the whole file comes back
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=abc"):
        ignored = api.client.get(url, headers={**api.headers, "Range": header})
        assert ignored.status_code == 200 and ignored.content == VIDEO, header

    local = api.client.get(url, headers=api.headers, params={"redirect": "true"})
    assert local.status_code == 200  # the local store cannot presign: served by the API


def test_render_events_end_at_terminal_state(api: Api, media: Media) -> None:
    render_id = done_render(api, media)
    with api.client.stream("GET", f"/v1/renders/{render_id}/events", headers=api.headers) as r:
        text = "".join(r.iter_text())
    assert text.startswith("event: state\n")
    assert json.loads(text.split("data: ", 1)[1].split("\n")[0])["status"] == "done"
