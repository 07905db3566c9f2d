"""Preprocess stage: extract the poster frame the dataset starts from."""

from __future__ import annotations

from services.runner import JobContext, stage_task
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from talkinghead.media import iter_frames, write_png
from talkinghead.models.still import MAX_SIDE


@stage_task("talkinghead.preprocess")
def preprocess(ctx: JobContext) -> StepResult:
    """Decode the middle frame at training resolution and store it."""
    avatar = ctx.resource()
    source = ctx.fetch(avatar.source_key, "source")  # type: ignore[union-attr]
    middle = int(ctx.job.state.get("frames", 1)) // 2
    frame = next(iter_frames(source, MAX_SIDE, start=middle, count=1), None)
    if frame is None:
        raise JobError("unreadable_media", "no frame could be decoded")
    ctx.pause()
    poster = ctx.workdir / "poster.png"
    write_png(poster, frame)
    key = tenant_key(ctx.job.tenant_id, "avatars", avatar.id, "dataset", "poster.png")
    ctx.save_artifact("poster", key, poster, content_type="image/png")
    return StepResult(progress=0.2)
