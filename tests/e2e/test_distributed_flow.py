"""The distributed configuration end to end: PostgreSQL, S3 (SeaweedFS), Redis, real workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from shared.storage import build_store
from tests.conftest import make_audio, make_face_video
from tests.e2e.test_http_flow import admin_create_tenant
from tests.fixtures.seaweed import S3Server, fresh_bucket_name


@pytest.fixture(scope="module")
def stack(
    redis_url: str, postgres_url: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedStack]:
    """API, worker and reconciler configured as in production, against real servers."""
    env = {
        "TH_DATABASE_URL": postgres_url,
        "TH_STORAGE_BACKEND": "s3",
        "TH_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "TH_S3_ACCESS_KEY": s3_server.access_key,
        "TH_S3_SECRET_KEY": s3_server.secret_key,
        "TH_S3_BUCKET": fresh_bucket_name("dist"),
        "TH_SEGMENT_FRAMES": "40",
    }
    with EmbeddedStack(tmp_path_factory.mktemp("dist"), redis_url=redis_url, env=env) as running:
        yield running


def test_presigned_upload_to_avatar_to_render(stack: EmbeddedStack, tmp_path: Path) -> None:
    key = admin_create_tenant(stack, "dist")["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    video = make_face_video(tmp_path / "me.mp4")
    slot = httpx.post(
        f"{stack.base_url}/v1/uploads",
        headers=auth,
        json={"purpose": "video", "size": video.stat().st_size},
    ).json()
    assert slot["method"] == "POST" and slot["url"].startswith(stack.env["TH_S3_ENDPOINT_URL"])
    with video.open("rb") as fh:
        sent = httpx.post(slot["url"], data=slot["fields"], files={"file": ("me.mp4", fh)})
    assert sent.status_code in (200, 201, 204), sent.text
    created = httpx.post(
        f"{stack.base_url}/v1/avatars",
        headers=auth,
        json={"upload_id": slot["upload_id"], "consent": True, "renderer": "meanframe"},
    )
    assert created.status_code == 202, created.text
    client = TalkingHeadClient(stack.base_url, key)
    avatar = client.wait("avatar", created.json()["id"], timeout=120)
    assert avatar["status"] == "ready", avatar
    assert avatar["metrics"]["frames"] == 110

    render = client.create_render(avatar["id"], make_audio(tmp_path / "a.wav", seconds=1.0))
    done = client.wait("render", render["id"], timeout=120)
    assert done["status"] == "done", done
    out = tmp_path / "out.mp4"
    client.download_video(render["id"], out)
    assert out.stat().st_size > 1000 and out.read_bytes()[4:8] == b"ftyp"

    store = build_store(stack.settings)
    mine = [k for k in store.list("tenants/") if avatar["id"] in k or render["id"] in k]
    assert mine and slot["upload_id"] in " ".join(store.list("tenants/"))
    client.delete_avatar(avatar["id"])
    assert [k for k in store.list("tenants/") if avatar["id"] in k or render["id"] in k] == []
    assert slot["upload_id"] not in " ".join(store.list("tenants/"))  # its source went too
