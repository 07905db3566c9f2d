"""Ingest stage: probe the uploaded video and record what it holds."""

from __future__ import annotations

import json

from services.runner import JobContext, stage_task
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from talkinghead.media import MediaError, probe


@stage_task("talkinghead.ingest")
def ingest(ctx: JobContext) -> StepResult:
    """Probe the source video; fail with a stable code when it cannot become an avatar."""
    avatar = ctx.resource()
    source = ctx.fetch(avatar.source_key, "source")  # type: ignore[union-attr]
    try:
        info = probe(source)
    except MediaError as exc:
        raise JobError(exc.code, exc.message) from exc
    if info.video is None or info.video.frames <= 0:
        raise JobError("no_video_stream", "the file has no video stream")
    ctx.pause()
    report = ctx.workdir / "probe.json"
    report.write_text(json.dumps(info.to_dict()))
    key = tenant_key(ctx.job.tenant_id, "avatars", avatar.id, "probe.json")
    ctx.save_artifact("probe", key, report, info=info.to_dict(), content_type="application/json")
    return StepResult(state={"frames": info.video.frames, "fps": info.video.fps}, progress=0.1)
