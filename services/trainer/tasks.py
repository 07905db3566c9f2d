"""Train and export stages, in bounded segments that resume from a checkpoint."""

from __future__ import annotations

from services.preprocess.tasks import artifact_key
from services.runner import JobContext, stage_task
from shared.db.models import Avatar
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from talkinghead.media import iter_frames, write_png
from talkinghead.metrics import psnr
from talkinghead.models.still import MAX_SIDE, StillState, mean_frame, train_segment

TRAIN_START, TRAIN_END = 0.2, 0.9


def normalised_video_key(ctx: JobContext) -> str:
    """The 25 fps video the ingest stage stored."""
    return artifact_key(ctx, "video")


def _checkpoint_key(ctx: JobContext, frames: int) -> str:
    # One key per position, so a segment that dies after writing never corrupts the resume point.
    name = f"still-{frames:08d}.npz"
    return tenant_key(ctx.job.tenant_id, "avatars", ctx.job.resource_id, "checkpoints", name)


def _avatar(ctx: JobContext) -> Avatar:
    avatar = ctx.resource()
    assert isinstance(avatar, Avatar)
    return avatar


@stage_task("talkinghead.train_segment")
def train(ctx: JobContext) -> StepResult:
    """Run one segment of training from the last checkpoint, then save a new one."""
    avatar = _avatar(ctx)
    if avatar.renderer == "radnerf":
        # Imported here so that workers of other queues, and the Celery parent before it
        # forks its pool, never load torch.
        from services.trainer import radnerf

        return radnerf.train_segment(ctx, avatar, TRAIN_START, TRAIN_END)
    return _train_still(ctx)


def _train_still(ctx: JobContext) -> StepResult:
    previous = ctx.job.state.get("checkpoint")
    state = StillState.from_bytes(ctx.store.get_bytes(previous)) if previous else StillState()
    source = ctx.fetch(normalised_video_key(ctx), "video.mp4")
    added = train_segment(source, state, ctx.settings.segment_frames)
    ctx.pause()
    if state.count == 0:
        raise JobError("unreadable_media", "no frame could be decoded")
    ckpt = ctx.workdir / "still.npz"
    ckpt.write_bytes(state.to_bytes())
    ctx.check()
    key = _checkpoint_key(ctx, state.count)
    ctx.store.put_file(key, ckpt)
    total = max(int(ctx.job.state.get("frames", state.count)), state.count)
    progress = TRAIN_START + (TRAIN_END - TRAIN_START) * min(1.0, state.count / total)
    return StepResult(
        state={"frames_done": state.count, "checkpoint": key},
        progress=progress,
        again=added == ctx.settings.segment_frames,
    )


@stage_task("talkinghead.export")
def export(ctx: JobContext) -> StepResult:
    """Write the trained renderer and measure it."""
    avatar = _avatar(ctx)
    if avatar.renderer == "radnerf":
        from services.trainer import radnerf

        return radnerf.export(ctx, avatar)
    return _export_still(ctx, avatar)


def _export_still(ctx: JobContext, avatar: Avatar) -> StepResult:
    """The mean frame as a PNG, measured against the first source frame."""
    state = StillState.from_bytes(ctx.store.get_bytes(ctx.job.state["checkpoint"]))
    image = mean_frame(state)
    out = ctx.workdir / "still.png"
    write_png(out, image)
    key = tenant_key(ctx.job.tenant_id, "avatars", avatar.id, "export", "still.png")
    ctx.save_artifact(
        "renderer",
        key,
        out,
        info={"family": "still", "frames": state.count},
        content_type="image/png",
    )
    source = ctx.fetch(normalised_video_key(ctx), "video.mp4")
    first = next(iter_frames(source, MAX_SIDE, count=1))
    metrics = {"frames": state.count, "psnr_first_frame_db": round(psnr(image, first), 3)}
    return StepResult(progress=1.0, metrics=metrics)
