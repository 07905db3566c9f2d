"""Jobs ride through PostgreSQL, Redis and S3 outages; one that outlasts its budget fails cleanly.

The servers are this module's own (free loopback ports), stopped for OUTAGE_S while a job
row shows a training segment or a render held by a worker, then started again on the same
port. Workers, the reconciler and the API are real processes (EmbeddedStack).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from shared.db.models import Artifact, Job, WebhookDelivery
from shared.db.session import session_scope
from shared.exports import download_export
from shared.jobs import TERMINAL
from shared.storage import build_store
from shared.tenants import create_tenant
from talkinghead.synthetic import generate
from tests.conftest import make_audio, make_face_video
from tests.fixtures.restartable import Postgres, Redis, Weed, restartable_servers
from tests.fixtures.servers import wait_for
from tests.fixtures.webhooks import WebhookReceiver, running_receiver

OUTAGE_S = 10.0  # how long each server stays down
SPEECH_S = 2.0
# Short leases and sweeps so recovery takes seconds; budgets that outlast OUTAGE_S plus a
# restart (SeaweedFS needs a few seconds to serve again).
ENV = {
    "TH_LOG_JSON": "false",
    "TH_VISIBILITY_TIMEOUT_S": "4",
    "TH_HEARTBEAT_INTERVAL_S": "0.5",
    "TH_HEARTBEAT_STALE_S": "3",
    "TH_RECONCILE_INTERVAL_S": "0.5",
    "TH_ENQUEUE_GRACE_S": "1",
    "TH_TASK_DELAY_S": "1",
    "TH_SEGMENT_FRAMES": "100",
    "TH_OUTAGE_RETRY_S": "90",
    "TH_STORAGE_RETRY_S": "60",
    "TH_OUTAGE_BACKOFF_S": "0.3",
    "TH_WEBHOOK_BACKOFF_S": "1",
    "TH_ALLOW_PRIVATE_CALLBACKS": "true",
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Postgres, Redis, Weed]]:
    """PostgreSQL, Redis and SeaweedFS of this module alone, restartable on their ports."""
    with restartable_servers(tmp_path_factory.mktemp("servers")) as running:
        yield running


@contextlib.contextmanager
def stack_on(
    servers: tuple[Postgres, Redis, Weed], data_dir: Path, bucket: str, **extra: str
) -> Iterator[EmbeddedStack]:
    """API, one worker and the reconciler against the module's servers."""
    pg, redis, weed = servers
    env: dict[str, str | None] = {
        **ENV,
        "TH_DATABASE_URL": pg.url,
        "TH_STORAGE_BACKEND": "s3",
        "TH_S3_ENDPOINT_URL": weed.server.endpoint_url,
        "TH_S3_ACCESS_KEY": weed.access_key,
        "TH_S3_SECRET_KEY": weed.secret_key,
        "TH_S3_BUCKET": bucket,
        **extra,
    }
    with EmbeddedStack(data_dir, redis_url=redis.url, env=env, concurrency=1) as stack:
        yield stack


def job_row(stack: EmbeddedStack, resource_id: str) -> Job:
    """The job that builds or renders `resource_id`, as stored now."""
    with session_scope(stack.settings.database_url) as s:
        job = s.scalar(select(Job).where(Job.resource_id == resource_id))
        assert job is not None
        s.expunge(job)
        return job


def wait_held(
    stack: EmbeddedStack, resource_id: str, status: str, after_segment: int, timeout: float
) -> int:
    """Wait until a worker holds the job in `status` at a segment past `after_segment`."""
    held: list[int] = []

    def check() -> bool:
        job = job_row(stack, resource_id)
        assert job.status not in TERMINAL, f"{status} never held: {job.status} {job.error_code}"
        if job.status == status and job.lease_owner and job.segment > after_segment:
            held.append(job.segment)
        return bool(held)

    _wait_strict(check, timeout, f"{resource_id} held in {status}")
    return held[0]


def _wait_strict(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Like wait_for, but an AssertionError from `check` fails at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except AssertionError:
            raise
        except Exception:  # the database may be restarting
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not seen after {timeout}s")


def wait_terminal(stack: EmbeddedStack, resource_id: str, timeout: float) -> Job:
    """Poll the job row (through outages) until it is terminal."""
    found: list[Job] = []

    def check() -> bool:
        job = job_row(stack, resource_id)
        if job.status in TERMINAL:
            found.append(job)
        return bool(found)

    wait_for(check, timeout, f"{resource_id} to finish")
    return found[0]


def wait_delivered(stack: EmbeddedStack, resource_id: str, timeout: float = 60) -> None:
    """Wait until the resource's webhook delivery is recorded as delivered."""

    def check() -> bool:
        with session_scope(stack.settings.database_url) as s:
            status = s.scalar(
                select(WebhookDelivery.status).where(WebhookDelivery.resource_id == resource_id)
            )
        return status == "delivered"

    wait_for(check, timeout, f"the webhook of {resource_id}")


def ready_status(stack: EmbeddedStack) -> int:
    """The status code of the API's `/readyz`."""
    return httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code


def outage(stack: EmbeddedStack, stop: Callable[[], None], start: Callable[[], None]) -> None:
    """Stop a server for OUTAGE_S: `/readyz` says 503 meanwhile and 200 once it is back."""
    stop()
    began = time.monotonic()
    try:
        wait_for(lambda: ready_status(stack) == 503, OUTAGE_S, "/readyz to report the outage")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - began)))
    finally:
        start()
    wait_for(lambda: ready_status(stack) == 200, 60, "/readyz after the restart")


def sha256(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def assert_webhooks_once(receiver: WebhookReceiver, expected: dict[str, str]) -> None:
    """Each resource got its terminal event; every repeat carried the same delivery id."""
    wait_for(
        lambda: {c.json()["data"]["id"] for c in receiver.calls} >= set(expected),
        60,
        "every webhook",
    )
    ids: dict[tuple[str, str], set[str]] = {}
    for call in receiver.calls:
        body = call.json()
        key = (body["data"]["id"], body["event"])
        ids.setdefault(key, set()).add(call.headers["X-Webhook-Id"])
    assert set(ids) == set(expected.items()), ids
    assert all(len(v) == 1 for v in ids.values()), ids


def assert_artifacts_match(stack: EmbeddedStack, resource_ids: list[str], avatar_id: str) -> None:
    """Every recorded artifact and every file of the export match their recorded sha256."""
    store = build_store(stack.settings)
    with session_scope(stack.settings.database_url) as s:
        rows = s.scalars(select(Artifact).where(Artifact.resource_id.in_(resource_ids))).all()
        recorded = [(a.key, a.sha256, a.size, a.kind) for a in rows]
    kinds = {kind for *_, kind in recorded}
    assert {"renderer", "video"} <= kinds, recorded
    for key, digest, size, _ in recorded:
        data = store.get_bytes(key)
        assert (sha256(data), len(data)) == (digest, size), key
    export = stack.data_dir / "export-check"
    manifest = download_export(store, avatar_id, export)
    for name, facts in manifest["files"].items():
        assert sha256((export / name).read_bytes()) == facts["sha256"], name


@pytest.mark.timeout(900)
def test_training_and_renders_ride_through_each_outage(
    servers: tuple[Postgres, Redis, Weed], tmp_path: Path
) -> None:
    pg, redis, weed = servers
    services = {
        "redis": (redis.stop, redis.start),
        "postgres": (pg.stop, pg.start),
        "s3": (weed.stop, weed.start),
    }
    with running_receiver() as hooks, stack_on(servers, tmp_path / "stack", "chaos") as stack:
        with session_scope(stack.settings.database_url) as s:
            _, key = create_tenant(s, "chaos")
        client = TalkingHeadClient(stack.base_url, key)
        url = hooks.url  # type: ignore[attr-defined]
        clip = generate(tmp_path / "clip", seconds=6, size=256)
        avatar = client.create_avatar(
            clip.video, consent=True, renderer="radnerf", preset="tiny", callback_url=url
        )
        segment = -1
        for stop, start in services.values():
            segment = wait_held(stack, avatar["id"], "training", segment, timeout=240)
            outage(stack, stop, start)
        built = wait_terminal(stack, avatar["id"], timeout=300)
        assert (built.status, built.error_code) == ("ready", None), built.error_message

        audio = make_audio(tmp_path / "speech.wav", seconds=SPEECH_S)
        wait_delivered(stack, avatar["id"])
        renders = []
        for stop, start in services.values():
            render = client.create_render(avatar["id"], audio, callback_url=url)
            wait_held(stack, render["id"], "rendering", -1, timeout=120)
            outage(stack, stop, start)
            done = wait_terminal(stack, render["id"], timeout=120)
            assert (done.status, done.error_code) == ("done", None), done.error_message
            # Delivered before the next outage: one cut mid-send is retried only after minutes.
            wait_delivered(stack, render["id"])
            renders.append(render["id"])

        expected = {avatar["id"]: "avatar.ready", **{r: "render.done" for r in renders}}
        assert_webhooks_once(hooks, expected)
        with session_scope(stack.settings.database_url) as s:
            deliveries = s.scalars(
                select(WebhookDelivery).where(WebhookDelivery.resource_id.in_(list(expected)))
            ).all()
            assert sorted((d.resource_id, d.event, d.status) for d in deliveries) == sorted(
                (r, e, "delivered") for r, e in expected.items()
            )
        assert_artifacts_match(stack, [avatar["id"], *renders], avatar["id"])
        assert stack.dead_children() == [], stack.dead_children()


@pytest.mark.timeout(300)
def test_a_storage_outage_past_its_budget_fails_the_job_with_a_code(
    servers: tuple[Postgres, Redis, Weed], tmp_path: Path
) -> None:
    _, _, weed = servers
    extra = {"TH_STORAGE_RETRY_S": "3", "TH_TASK_DELAY_S": "2"}
    with stack_on(servers, tmp_path / "stack", "budget", **extra) as stack:
        with session_scope(stack.settings.database_url) as s:
            _, key = create_tenant(s, "budget")
        client = TalkingHeadClient(stack.base_url, key)
        video = make_face_video(tmp_path / "me.mp4")
        avatar = client.create_avatar(video, consent=True, renderer="meanframe")
        assert wait_terminal(stack, avatar["id"], timeout=120).status == "ready"
        render = client.create_render(avatar["id"], make_audio(tmp_path / "a.wav", seconds=1.0))
        wait_held(stack, render["id"], "rendering", -1, timeout=60)
        weed.stop()
        try:
            failed = wait_terminal(stack, render["id"], timeout=60)
        finally:
            weed.start()
        assert (failed.status, failed.error_code) == ("failed", "storage_unavailable")
        assert "unreachable" in (failed.error_message or ""), failed.error_message
        assert "Traceback" not in (failed.error_message or "")
        # The API reports it as a coded failure too, and every process is still up.
        shown = client.get_render(render["id"])
        assert shown["error"]["code"] == "storage_unavailable", json.dumps(shown)
        assert stack.dead_children() == []
