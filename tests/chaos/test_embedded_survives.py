"""The embedded stack (`talkinghead up`) rides through a killed worker and a killed Redis."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from shared.db.session import session_scope
from shared.tenants import create_tenant
from tests.fixtures.servers import wait_for

FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 4096


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TH_")}
    env.update(TH_LOG_JSON="false", TH_RECONCILE_INTERVAL_S="0.5", TH_ENQUEUE_GRACE_S="1")
    embedded = EmbeddedStack(tmp_path_factory.mktemp("embedded"), concurrency=1, env=env)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def _job_goes_through(stack: EmbeddedStack, tmp_path: Path, key: str) -> None:
    """An avatar from a broken upload reaches `failed`: the API, broker and a worker all work."""
    video = tmp_path / "broken.mp4"
    video.write_bytes(FAKE_MP4)
    with TalkingHeadClient(stack.base_url, key) as client:
        avatar = client.create_avatar(video, consent=True)
        final = client.wait("avatar", avatar["id"], timeout=90)
    assert final["status"] == "failed" and final["error"]["code"]


def _supervise_until(stack: EmbeddedStack, name: str) -> None:
    """Call the supervisor (as `talkinghead up` does) until it restarted `name`."""
    done: list[str] = []
    wait_for(lambda: done.extend(stack.supervise()) or name in done, 30, f"{name} restarted")


@pytest.fixture(scope="module")
def key(stack: EmbeddedStack) -> str:
    with session_scope(stack.settings.database_url) as session:
        _, plain = create_tenant(session, "chaos")
    return plain


def test_a_killed_worker_is_restarted(stack: EmbeddedStack, key: str, tmp_path: Path) -> None:
    before = stack.processes["worker-0"]
    os.killpg(before, signal.SIGKILL)
    wait_for(lambda: "worker-0" in stack.dead_children(), 10, "the worker to die")
    _supervise_until(stack, "worker-0")
    assert stack.processes["worker-0"] != before
    assert stack.dead_children() == []
    _job_goes_through(stack, tmp_path, key)


def test_a_killed_redis_is_restarted_and_the_worker_reconnects(
    stack: EmbeddedStack, key: str, tmp_path: Path
) -> None:
    worker, port = stack.processes["worker-0"], stack.redis_url
    redis_pid = stack.redis_pid
    assert redis_pid is not None
    os.kill(redis_pid, signal.SIGKILL)

    def not_ready() -> bool:
        return httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 503

    wait_for(not_ready, 30, "/readyz to report the broker outage")
    assert httpx.get(f"{stack.base_url}/healthz", timeout=5).status_code == 200
    with TalkingHeadClient(stack.base_url, key) as client:  # reads need no broker
        avatars = list(client.list_avatars())
        assert avatars and client.get_avatar(avatars[0]["id"])["status"] == "failed"
    _supervise_until(stack, "redis")
    assert stack.redis_url == port  # same URL: clients reconnect to it
    wait_for(
        lambda: httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200,
        60,
        "/readyz after the restart",
    )
    _job_goes_through(stack, tmp_path, key)
    # The worker rode through the outage: the same process, never restarted.
    assert stack.processes["worker-0"] == worker and stack.dead_children() == []
