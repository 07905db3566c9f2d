"""A `radnerf` avatar end to end: HTTP API, real Redis and Celery worker, segmented training.

The `tiny` preset trains for real (900 steps at 64 px in segments of 150 when this was
written); a few minutes on 2 cores, nearly all of it training.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from sqlalchemy import select

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from shared.db.models import Artifact, Job
from shared.db.session import session_scope
from shared.exports import download_export, export_prefix, manifest_key
from shared.storage import build_store, tenant_key
from shared.tenants import create_tenant
from talkinghead.export.artifact import ExportedAvatar
from talkinghead.families.radnerf.config import preset
from talkinghead.synthetic import generate, speech

TINY = preset("tiny").train
EVAL_METRICS = ("psnr", "psnr_frame_mean", "ssim", "lmd", "lipsync", "lipsync_shuffled")


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The embedded stack with one single-process worker (training owns both cores)."""
    env = {"TH_RECONCILE_INTERVAL_S": "1", "TH_LOG_JSON": "false"}
    with EmbeddedStack(
        tmp_path_factory.mktemp("radnerf"), redis_url=redis_url, env=env, concurrency=1
    ) as running:
        yield running


def poll_until_terminal(
    client: TalkingHeadClient, avatar_id: str, timeout: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """GET the avatar twice a second until it is terminal; returns it and every snapshot."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        avatar = client.get_avatar(avatar_id)
        seen.append(avatar)
        if avatar["status"] in ("ready", "failed", "cancelled"):
            return avatar, seen
        time.sleep(0.5)
    raise AssertionError(f"avatar stuck at {seen[-1]['status']} {seen[-1]['progress']:.2f}")


@pytest.mark.timeout(900)
def test_radnerf_avatar_trains_in_segments_and_exports(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    assert TINY.total_steps > TINY.segment_steps, "the tiny preset must span several segments"
    with session_scope(stack.settings.database_url) as s:
        tenant, key = create_tenant(s, "radnerf-tests")
        tenant_id = tenant.id
    client = TalkingHeadClient(stack.base_url, key)
    clip = generate(tmp_path / "clip", seconds=6, size=256)

    started = time.monotonic()
    created = client.create_avatar(clip.video, consent=True, renderer="radnerf", preset="tiny")
    assert (created["renderer"], created["preset"]) == ("radnerf", "tiny")
    final, seen = poll_until_terminal(client, created["id"], timeout=840)
    elapsed = time.monotonic() - started
    assert final["status"] == "ready", (final, stack.logs_dir)
    print(f"radnerf tiny avatar ready in {elapsed:.0f}s; metrics {final['metrics']}")

    # Training was committed part-way (one segment's worth of steps) and carried on from
    # that stored checkpoint: each task starts in a fresh scratch dir, so nothing else could
    # take it past the segment size.
    steps_seen = sorted(
        {a["metrics"]["training"]["steps"] for a in seen if "training" in a["metrics"]}
    )
    assert TINY.segment_steps in steps_seen, steps_seen
    assert steps_seen[-1] == TINY.total_steps
    progress = [a["progress"] for a in seen]
    assert progress == sorted(progress)
    assert any(0.2 < p < 0.9 for p in progress), "no progress was reported during training"
    worker_log = (stack.logs_dir / "worker-0.log").read_text()
    segments = re.findall(r"Task talkinghead\.train_segment\[[^\]]+\] succeeded .*'ok'", worker_log)
    assert len(segments) == math.ceil(TINY.total_steps / TINY.segment_steps)

    # Held-out scores (finite: the tiny preset learns a face mediapipe finds) and training.
    metrics = final["metrics"]
    for name in EVAL_METRICS:
        assert isinstance(metrics[name], float) and math.isfinite(metrics[name]), (name, metrics)
    assert metrics["psnr"] > 10.0
    assert 0.0 < metrics["face_found"] <= 1.0
    assert metrics["eval_frames"] > 0
    training = metrics["training"]
    assert training["steps"] == training["total_steps"] == TINY.total_steps
    assert training["seconds"] > 0 and math.isfinite(training["losses"]["mse"])

    # The renderer artifact holds the evaluated (EMA) weights and loads into the model.
    store = build_store(stack.settings)
    with session_scope(stack.settings.database_url) as s:
        art = s.scalar(
            select(Artifact).where(
                Artifact.resource_id == created["id"], Artifact.kind == "renderer"
            )
        )
        assert art is not None
        art_key, art_info = art.key, dict(art.info)
        job = s.scalar(select(Job).where(Job.resource_id == created["id"]))
        assert job is not None
        state = dict(job.state)
    assert art_info == {
        "family": "radnerf",
        "preset": "tiny",
        "step": TINY.total_steps,
        "format": 3,
        "avatar_id": created["id"],
    }
    assert art_key == manifest_key(created["id"]) and store.exists(art_key)
    # The export is self-contained: downloaded, verified and loaded without the trainer.
    download_export(store, created["id"], tmp_path / "export")
    exported = ExportedAvatar.load(tmp_path / "export", torch.device("cpu"))
    assert exported.manifest["avatar_id"] == created["id"] and exported.size == 64

    # Only the final checkpoint is kept; the job state names it.
    prefix = tenant_key(tenant_id, "avatars", created["id"], "checkpoints") + "/"
    assert store.list(prefix) == [state["checkpoint"]]
    assert state["checkpoint"].endswith(f"radnerf-{TINY.total_steps:08d}.ckpt")
    assert state["step"] == TINY.total_steps

    # The avatar speaks: renders in the worker's own process (embedded mode) give mp4s of one
    # frame per 40 ms of audio at the avatar's size, composited over the requested colour.
    speech(tmp_path / "speech.wav", "Testing one two three.", "en-us+f3", 1.6)
    videos = {}
    for colour in ("#00ff00", "#ff00ff"):
        options = {"background": {"kind": "colour", "colour": colour}, "pose": "static"}
        render = client.create_render(created["id"], tmp_path / "speech.wav", options=options)
        done = client.wait("render", render["id"], timeout=300)
        assert done["status"] == "done", (done, stack.logs_dir)
        video = client.download_video(render["id"], tmp_path / f"{colour[1:]}.mp4")
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == 40 and frames[0].shape == (64, 64, 3)
        videos[colour] = np.stack(frames).astype(np.int16)
    # Green minus magenta: more green and less red and blue wherever the plate shows through
    # (the tiny avatar's torso layer is still partly transparent over the whole frame).
    diff = videos["#00ff00"] - videos["#ff00ff"]
    shows = np.abs(diff).sum(axis=-1) > 30
    assert shows.mean() > 0.1
    assert (diff[shows][:, 1] > 0).mean() > 0.95
    assert (diff[shows][:, 0] < 0).mean() > 0.95 and (diff[shows][:, 2] < 0).mean() > 0.95

    # Deleting the avatar removes its export too.
    client.delete_avatar(created["id"])
    assert store.list(export_prefix(created["id"])) == []
