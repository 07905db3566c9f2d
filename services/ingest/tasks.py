"""Ingest stage: refuse what cannot become an avatar, normalise and store the media."""

from __future__ import annotations

from services.runner import JobContext, stage_task
from shared.db.models import Avatar
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from talkinghead.media import MediaError, probe
from talkinghead.preprocess.ingest import IngestLimits, check_source, normalise
from talkinghead.preprocess.photo import PhotoLimits, normalise_photo

END = 0.05  # the share of the avatar's progress ingest ends at


@stage_task("talkinghead.ingest")
def ingest(ctx: JobContext) -> StepResult:
    """Check and normalise the source: a video or a photo, as the avatar was created from."""
    avatar = ctx.resource()
    if not isinstance(avatar, Avatar):
        raise JobError("internal_error", "ingest builds avatars")
    if avatar.source == "image":
        return _ingest_photo(ctx, avatar)
    return _ingest_video(ctx, avatar)


def _ingest_video(ctx: JobContext, avatar: Avatar) -> StepResult:
    """Probe and check the video, then store 25 fps video and 16 kHz mono audio."""
    source = ctx.fetch(avatar.source_key, "source")
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
    return StepResult(state={"frames": norm.video.frames, "fps": norm.video.fps}, progress=END)


def _ingest_photo(ctx: JobContext, avatar: Avatar) -> StepResult:
    """Check the photo (format, size, one face), then store it upright as an RGB PNG."""
    source = ctx.fetch(avatar.source_key, "source")
    limits = PhotoLimits(
        max_bytes=ctx.settings.max_image_bytes,
        max_pixels=ctx.settings.max_image_pixels,
        min_side=ctx.settings.min_image_side,
    )
    image = ctx.workdir / "image.png"
    try:
        facts = normalise_photo(source, image, limits)
    except MediaError as exc:
        raise JobError(exc.code, exc.message) from exc
    ctx.pause()
    ctx.save_artifact(
        "image",
        tenant_key(ctx.job.tenant_id, "avatars", avatar.id, "media", "image.png"),
        image,
        info={"photo": facts.to_dict()},
        content_type="image/png",
    )
    return StepResult(state={"width": facts.width, "height": facts.height}, progress=END)
