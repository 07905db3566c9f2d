"""Render stage of neural avatars: speech -> conditions -> frames (backend) -> streamed mp4."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sqlalchemy import select

from services.renderer.backends import FrameBackend, RenderBackendError, build_backend
from services.renderer.backgrounds import background_plate
from services.renderer.tasks import provenance
from services.runner import JobContext
from shared.db.models import Render, Upload, utcnow
from shared.db.session import session_scope
from shared.exports import ExportNotFound, download_export
from shared.jobs import JobError
from shared.storage import tenant_key
from shared.telemetry import RENDER_FIRST_FRAME, RENDER_FRAMES
from talkinghead.export.artifact import ASSETS, ArtifactError, load_assets, read_manifest
from talkinghead.media import MediaError, SpeechAudio, VideoWriter
from talkinghead.models.driving import speech_features
from talkinghead.models.radnerf import over_background
from talkinghead.rendering.controls import AvatarAssets, frame_batches

PROGRESS_EVERY_S = 0.5
RENDER_START, RENDER_END = 0.05, 0.95
_backend: FrameBackend | None = None  # one per worker process: the avatar cache outlives tasks


def backend(ctx: JobContext) -> FrameBackend:
    """This process's frame backend, built once from the settings."""
    global _backend
    if _backend is None:
        _backend = build_backend(ctx.settings, ctx.store)
    return _backend


def load_conditioning(ctx: JobContext, avatar_id: str) -> tuple[dict[str, Any], AvatarAssets]:
    """The export's manifest and assets (camera, plate, source motion); not the weights."""
    directory = ctx.workdir / "export"
    try:
        download_export(ctx.store, avatar_id, directory, only=(ASSETS,))
        manifest = read_manifest(directory)
        return manifest, load_assets(directory / ASSETS)
    except (ExportNotFound, ArtifactError) as exc:
        raise JobError("avatar_not_ready", f"the avatar's renderer cannot be used: {exc}") from None


def per_frame(values: list[Any], n: int, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A per-frame option list as an (n, *shape) array; shorter lists hold their last value."""
    try:
        arr = np.asarray(values, np.float32)
    except ValueError:
        raise JobError("invalid_options", f"{what}: every entry needs the same length") from None
    if len(arr) == 0:
        raise JobError("invalid_options", f"{what}: the list is empty")
    if what == "pose" and arr.ndim == 2 and arr.shape[1] in (12, 16):
        # Row-major 3x4 or 4x4 camera-from-head matrices.
        full = np.tile(np.eye(4, dtype=np.float32), (len(arr), 1, 1))
        full[:, : arr.shape[1] // 4] = arr.reshape(len(arr), -1, 4)
        arr = full
    if arr.shape[1:] != shape or not np.isfinite(arr).all():
        raise JobError(
            "invalid_options",
            f"{what}: each entry must be {'16 or 12 numbers' if what == 'pose' else 'a number'}",
        )
    if len(arr) < n:
        arr = np.concatenate([arr, np.repeat(arr[-1:], n - len(arr), axis=0)])
    return arr[:n]


def background_image(ctx: JobContext, spec: dict[str, Any]) -> bytes | None:
    """The uploaded background image's bytes, when the render asks for one."""
    if spec.get("kind") != "image":
        return None
    with session_scope(ctx.settings.database_url) as s:
        key = s.scalar(select(Upload.key).where(Upload.id == spec.get("upload_id")))
    if key is None:
        raise JobError("unreadable_background", "the background image upload is gone")
    return ctx.store.get_bytes(key)


def render_video(ctx: JobContext, rnd: Render, speech: SpeechAudio) -> dict[str, Any]:
    """Render every frame through the backend, stream it into ffmpeg, store the mp4."""
    manifest, assets = load_conditioning(ctx, rnd.avatar_id)
    spec = dict(manifest["audio"])
    if ctx.settings.audio_encoder_path is not None:
        spec["path"] = str(ctx.settings.audio_encoder_path)
    try:
        features = speech_features(speech.wave, spec)
    except ValueError as exc:
        raise JobError("audio_encoder_unavailable", str(exc)) from None
    n = len(features)
    options = rnd.options or {}
    pose: Any = options.get("pose", "source")
    eyes: Any = options.get("eyes", "natural")
    if isinstance(pose, list):
        pose = per_frame(pose, n, (4, 4), "pose")
    if isinstance(eyes, list):
        eyes = per_frame(eyes, n, (), "eyes")
    bg_spec = options.get("background") or {"kind": "source"}
    plate = background_plate(
        bg_spec, assets.size, assets.background, background_image(ctx, bg_spec)
    )
    k, w, _ = manifest["inputs"]["audio"]
    out = ctx.workdir / "video.mp4"
    frames = backend(ctx)
    done, reported = 0, 0.0
    first_frame_s: float | None = None
    try:
        with VideoWriter(
            out, assets.size, assets.size, speech.wav, metadata=provenance(rnd),
            output_size=options.get("resolution"),
        ) as writer:  # fmt: skip
            for batch in frame_batches(
                assets, features, k, pose, eyes, ctx.settings.render_batch_frames, w // 2
            ):
                rgba = frames.render(rnd.avatar_id, batch.poses, batch.audio, batch.eyes)
                if rgba.shape[1:] != (assets.size, assets.size, 4):
                    raise RenderBackendError(
                        f"frames of {rgba.shape[1:3]} for an export of {assets.size} px; "
                        "the avatar was exported again during the render"
                    )
                if first_frame_s is None:
                    first_frame_s = (utcnow() - rnd.created_at).total_seconds()
                    RENDER_FIRST_FRAME.observe(first_frame_s)
                for frame in rgba:
                    writer.write(over_background(frame, plate))
                done += len(rgba)
                RENDER_FRAMES.inc(len(rgba))
                now = time.monotonic()
                if now - reported >= PROGRESS_EVERY_S:
                    reported = now
                    ctx.progress(RENDER_START + (RENDER_END - RENDER_START) * done / n)
                else:
                    ctx.check()
    except RenderBackendError as exc:
        raise JobError("renderer_unavailable", str(exc)) from None
    except MediaError as exc:
        raise JobError(exc.code, exc.message) from None
    key = tenant_key(ctx.job.tenant_id, "renders", rnd.id, "video.mp4")
    ctx.save_artifact("video", key, out, info={"frames": done}, content_type="video/mp4")
    return {"video_key": key, "frames": done, "first_frame_s": round(first_frame_s or 0.0, 3)}
