"""Ingest stage: refuse what cannot become an avatar, normalise and store the media."""

from __future__ import annotations

from services.runner import JobContext, stage_task
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from talkinghead.media import MediaError, probe
from talkinghead.preprocess.ingest import IngestLimits, check_source, normalise


@stage_task("talkinghead.ingest")
def ingest(ctx: JobContext) -> StepResult:
    """Probe and check the source, then store 25 fps video and 16 kHz mono audio."""
    avatar = ctx.resource()
    source = ctx.fetch(avatar.source_key, "source")  # type: ignore[union-attr]
    limits = IngestLimits(
        ctx.settings.min_video_s, ctx.settings.max_video_s, ctx.settings.min_video_side
    )
    try:
        info = probe(source)
        check_source(info, limits)
        ctx.progress(0.03)
        video, audio = ctx.workdir / "video.mp4", ctx.workdir / "audio.wav"
        norm = normalise(source, video, audio)
    except MediaError as exc:
        raise JobError(exc.code, exc.message) from exc
    assert norm.video is not None
    ctx.pause()
    prefix = ("avatars", avatar.id, "media")
    ctx.save_artifact(
        "video",
        tenant_key(ctx.job.tenant_id, *prefix, "video.mp4"),
        video,
        info={"source": info.to_dict(), "normalised": norm.to_dict()},
        content_type="video/mp4",
    )
    ctx.save_artifact(
        "audio",
        tenant_key(ctx.job.tenant_id, *prefix, "audio.wav"),
        audio,
        content_type="audio/wav",
    )
    return StepResult(state={"frames": norm.video.frames, "fps": norm.video.fps}, progress=0.05)
