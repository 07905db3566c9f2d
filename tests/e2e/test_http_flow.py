"""The whole flow over HTTP against the embedded stack: real API, Redis, Celery workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest

from services.client import ApiError, TalkingHeadClient
from services.embedded import EmbeddedStack
from services.webhooks.sender import sign
from tests.conftest import make_audio, make_face_video
from tests.fixtures.webhooks import WebhookReceiver, running_receiver

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hook() -> Iterator[WebhookReceiver]:
    """A local webhook receiver."""
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The embedded stack on a private data dir, with local callbacks allowed."""
    env = {
        "TH_ALLOW_PRIVATE_CALLBACKS": "true",
        "TH_RECONCILE_INTERVAL_S": "1",
        "TH_SEGMENT_FRAMES": "40",
        "TH_LOG_JSON": "true",
    }
    with EmbeddedStack(
        tmp_path_factory.mktemp("e2e"), redis_url=redis_url, env=env, concurrency=2
    ) as running:
        yield running


def admin_create_tenant(stack: EmbeddedStack, name: str) -> dict[str, str]:
    """What the operator runs: `talkinghead admin tenant create NAME --json`."""
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "admin", "tenant", "create", name, "--json"],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, str] = json.loads(out.stdout)
    return result


def objects_under(stack: EmbeddedStack, prefix: str) -> list[Path]:
    """Files the local object store holds under a key prefix."""
    root = stack.settings.local_storage_dir / prefix
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_tenant_builds_renders_and_deletes_an_avatar(
    stack: EmbeddedStack, hook: WebhookReceiver, tmp_path: Path
) -> None:
    tenant = admin_create_tenant(stack, "e2e-acme")
    first = TalkingHeadClient(stack.base_url, tenant["api_key"])
    second_key = first.create_key("laptop")
    first.revoke_key(tenant["api_key_id"])
    with pytest.raises(ApiError) as refused:
        first.list_keys()
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    client = TalkingHeadClient(stack.base_url, second_key["key"])
    assert {k["id"]: k["revoked_at"] is not None for k in client.list_keys()} == {
        tenant["api_key_id"]: True,
        second_key["id"]: False,
    }

    video = make_face_video(tmp_path / "me.mp4")
    created = client.create_avatar(
        video,
        consent=True,
        name="me",
        metadata={"order": 42},
        callback_url=hook.url,
        renderer="meanframe",
    )  # type: ignore[attr-defined]
    assert created["status"] == "queued" and created["consent"] is True
    events = []
    final = client.wait("avatar", created["id"], on_event=events.append, timeout=180)
    assert final["status"] == "ready", final
    statuses = [e["status"] for e in events]
    assert statuses[-1] == "ready" and len(statuses) >= 2
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    assert final["metrics"]["frames"] == 110
    assert final["metrics"]["dataset"]["face_found_ratio"] >= 0.98
    assert client.get_avatar(created["id"])["status"] == "ready"

    # Exactly one, correctly signed webhook call, carrying the caller's metadata.
    calls = hook.wait_for(1, timeout=30)
    avatar_calls = [c for c in calls if c.json()["data"]["id"] == created["id"]]
    assert len(avatar_calls) == 1
    call = avatar_calls[0]
    assert call.headers["X-Signature"] == sign(tenant["webhook_secret"], call.body)
    assert call.json()["metadata"] == {"order": 42}
    assert call.json()["event"] == "avatar.ready"

    # A render of it: an mp4 with H.264 video and AAC audio, served with range requests.
    audio = make_audio(tmp_path / "speech.wav", seconds=1.5)
    render = client.create_render(created["id"], audio)
    done = client.wait("render", render["id"], timeout=120)
    assert done["status"] == "done", done
    out = tmp_path / "out.mp4"
    client.download_video(render["id"], out)
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert abs(float(container.duration) / 1e6 - 1.5) < 0.2
        assert "AI-generated" in container.metadata.get("comment", "")
    auth = {"Authorization": f"Bearer {second_key['key']}"}
    part = httpx.get(
        f"{stack.base_url}/v1/renders/{render['id']}/video", headers={**auth, "Range": "bytes=0-99"}
    )
    assert part.status_code == 206 and part.content == out.read_bytes()[:100]

    # Another tenant sees none of it.
    other = TalkingHeadClient(stack.base_url, admin_create_tenant(stack, "e2e-other")["api_key"])
    for call_other in (
        lambda: other.get_avatar(created["id"]),
        lambda: other.get_render(render["id"]),
        lambda: other.delete_avatar(created["id"]),
        lambda: other.delete_render(render["id"]),
        lambda: other.create_render(created["id"], audio),
        lambda: list(other.follow_events("avatar", created["id"])),
        lambda: other.download_video(render["id"], tmp_path / "x.mp4"),
    ):
        with pytest.raises(ApiError) as hidden:
            call_other()
        assert hidden.value.status == 404, hidden.value
    assert created["id"] not in {a["id"] for a in other.list_avatars()}

    # Delete: 404 afterwards and the objects are gone.
    avatar_objects = [p for p in objects_under(stack, "tenants") if created["id"] in str(p)]
    assert avatar_objects, "the avatar stored nothing"
    client.delete_avatar(created["id"])
    for gone in (lambda: client.get_avatar(created["id"]), lambda: client.get_render(render["id"])):
        with pytest.raises(ApiError) as missing:
            gone()
        assert missing.value.status == 404
    leftovers = [
        p
        for p in objects_under(stack, "tenants")
        if created["id"] in str(p) or render["id"] in str(p)
    ]
    assert leftovers == []
    assert created["id"] not in {a["id"] for a in client.list_avatars()}


def test_metrics_cover_http_jobs_queues_tasks_and_webhooks(stack: EmbeddedStack) -> None:
    """Runs after the flow above: every metric family of the platform has samples."""
    text = httpx.get(f"{stack.base_url}/metrics").text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]

    def has(prefix: str, *labels: str) -> bool:
        return any(s.startswith(prefix) and all(lb in s for lb in labels) for s in samples)

    assert has("th_http_requests_total", 'route="/v1/avatars/{avatar_id}"', 'status="200"')
    assert has("th_http_request_duration_seconds_bucket", 'route="/v1/avatars"')
    assert has("th_jobs", 'kind="avatar"', 'state="ready"')
    assert has("th_queue_depth", 'queue="train"')
    assert has("th_oldest_queued_job_age_seconds", 'kind="render"')
    # Written by the worker processes, served by the API through the shared multiprocess dir.
    assert has("th_task_duration_seconds_count", 'task="talkinghead.train_segment"', 'outcome="ok"')
    assert has("th_stage_duration_seconds_count", 'kind="avatar"', 'stage="training"')
    assert has("th_job_transitions_total", 'kind="render"', 'state="done"')
    assert has("th_webhook_deliveries_total", 'outcome="delivered"')
    assert not has("th_http_requests_total", 'route="/v1/avatars/av_')  # templates, not ids
