"""Render stages: check and normalise the speech and render it to an mp4, then publish it."""

from __future__ import annotations

from services.runner import JobContext, stage_task
from shared.db.models import Render
from shared.db.session import session_scope
from shared.jobs import JobError, StepResult
from talkinghead.media import MediaError, load_speech, probe


def _render(ctx: JobContext) -> Render:
    rnd = ctx.resource()
    assert isinstance(rnd, Render)
    return rnd


@stage_task("talkinghead.render")
def render(ctx: JobContext) -> StepResult:
    """Normalise the speech (stable codes for what cannot be used), then render every frame."""
    rnd = _render(ctx)
    audio = ctx.fetch(rnd.audio_key, "audio")
    try:
        speech = load_speech(audio, ctx.workdir / "speech.wav", ctx.settings.max_audio_s)
    except MediaError as exc:
        raise JobError(exc.code, exc.message) from exc
    audio.unlink()
    ctx.pause()
    state = {"audio_duration_s": round(speech.duration_s, 3)}
    # Imported here so that workers of other queues never load the renderers' dependencies.
    from services.renderer import video

    return StepResult(state={**state, **video.render_to_mp4(ctx, rnd, speech)}, progress=0.95)


@stage_task("talkinghead.encode")
def encode(ctx: JobContext) -> StepResult:
    """Publish the video once it is checked."""
    rnd = _render(ctx)
    key = ctx.job.state.get("video_key")
    if not key:
        raise JobError("internal_error", "the render stage stored no video")
    _check_video(ctx, key)
    ctx.pause()
    with session_scope(ctx.settings.database_url) as s:
        row = s.get(Render, rnd.id)
        if row is not None:
            row.video_key = key
    return StepResult(progress=1.0)


def _check_video(ctx: JobContext, key: str) -> None:
    """The stored render must hold H.264 video and an audio track."""
    try:
        info = probe(ctx.fetch(key, "video.mp4"))
    except MediaError as exc:
        raise JobError("encode_failed", exc.message) from exc
    if info.video is None or info.video.codec != "h264" or info.audio is None:
        raise JobError("encode_failed", "the rendered video lacks its H.264 or audio stream")
