"""A render rides through Triton killed mid-render and started again (same ports)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from services.tritonserver import TritonServer
from shared.db.models import Job
from shared.db.session import session_scope
from shared.tenants import create_tenant
from talkinghead.synthetic import generate, speech
from tests.fixtures.servers import wait_for

pytestmark = pytest.mark.timeout(900)
OUTAGE_S = 10.0  # how long Triton stays away


def _render_job(stack: EmbeddedStack, render_id: str) -> Job:
    with session_scope(stack.settings.database_url) as s:
        job = s.scalar(select(Job).where(Job.resource_id == render_id))
        assert job is not None
        s.expunge(job)
        return job


def test_a_render_finishes_after_triton_was_killed_mid_render(
    redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "state"
    objects = data_dir / "objects"
    objects.mkdir(parents=True)
    triton_env = {"TH_STORAGE_DIR": str(objects), "TH_DATA_DIR": str(data_dir)}
    with TritonServer(env={**triton_env, "TH_TORCH_THREADS": "1"}) as triton:
        env = {
            "TH_LOG_JSON": "false",
            "TH_RECONCILE_INTERVAL_S": "1",
            "TH_RENDER_BACKEND": "triton",
            "TH_TRITON_URL": triton.http_url,
            "TH_TRITON_RETRY_S": "90",
            "TH_RENDER_BATCH_FRAMES": "4",
        }
        with EmbeddedStack(data_dir, redis_url=redis_url, env=env, concurrency=1) as stack:
            with session_scope(stack.settings.database_url) as s:
                _, key = create_tenant(s, "triton-chaos")
            client = TalkingHeadClient(stack.base_url, key)
            clip = generate(tmp_path / "clip", seconds=8, size=256, seed=5)
            avatar = client.create_avatar(clip.video, consent=True, preset="tiny")
            avatar = client.wait("avatar", avatar["id"], timeout=600)
            assert avatar["status"] == "ready", avatar

            audio = tmp_path / "speech.wav"
            speech(audio, "The render goes on while the server is away. " * 6, "en-us", 16.0)
            render = client.create_render(avatar["id"], audio)

            def rendering_started() -> bool:
                job = _render_job(stack, render["id"])
                return job.status == "rendering" and 0.02 <= job.progress < 0.6

            wait_for(rendering_started, 300, "the render to be under way")
            assert triton.process is not None
            os.killpg(triton.process.pid, signal.SIGKILL)
            triton.process.wait(10)
            killed_at = time.monotonic()
            time.sleep(OUTAGE_S)  # the outage itself: Triton stays away this long
            triton.stop()  # drops the dead server's workspace
            triton.start()  # same ports: the worker's URL is valid again
            assert time.monotonic() - killed_at >= OUTAGE_S

            done = client.wait("render", render["id"], timeout=600)
            assert done["status"] == "done", done
            log = (stack.logs_dir / "worker-0.log").read_text(errors="replace")
            assert "retrying" in log  # the batch was retried in place while Triton was away
            out = tmp_path / "out.mp4"
            client.download_video(render["id"], out)
            assert out.stat().st_size > 0
            assert stack.dead_children() == []
