"""Preprocess stage: normalised media to a versioned training dataset in the object store."""

from __future__ import annotations

import json

from services.runner import JobContext, stage_task
from services.sources import (
    artifact_key,
    avatar_of,
    avatar_source,
    family_errors,
    family_of,
    pack,
    pinned_config,
)
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from talkinghead.media import MediaError
from talkinghead.preprocess.pipeline import PreprocessConfig, build_dataset

START, END = 0.05, 0.2
PREPARE_END = 0.6


@stage_task("talkinghead.preprocess")
def preprocess(ctx: JobContext) -> StepResult:
    """Track, pose, segment and featurise the video; store the dataset as one tar."""
    avatar = avatar_of(ctx)
    family = family_of(avatar)
    preset = family.presets.get(avatar.preset)
    if preset is None:
        raise JobError("unknown_preset", f"{family.name} has no preset {avatar.preset!r}")
    video = ctx.fetch(artifact_key(ctx, "video"), "video.mp4")
    audio = ctx.fetch(artifact_key(ctx, "audio"), "audio.wav")
    config = PreprocessConfig(
        size=preset.source_size,
        min_segment_s=ctx.settings.min_video_s,
        audio_encoder="pretrained" if ctx.settings.audio_encoder_path else "logmel",
        audio_encoder_path=ctx.settings.audio_encoder_path,
    )
    stages = {
        "tracking": (0.0, 0.4),
        "pose": (0.4, 0.45),
        "frames": (0.45, 0.9),
        "audio": (0.9, 1.0),
    }

    def report(stage: str, fraction: float) -> None:
        lo, hi = stages.get(stage, (0.0, 0.0))
        ctx.progress(START + (END - START) * (lo + (hi - lo) * fraction))

    out = ctx.workdir / "dataset"
    try:
        manifest = build_dataset(video, audio, out, config, report)
    except MediaError as exc:
        raise JobError(exc.code, exc.message) from exc
    ctx.pause()
    archive = pack(out, ctx.workdir / "dataset.tar")
    prefix = ("avatars", avatar.id, "dataset")
    ctx.save_artifact(
        "dataset",
        tenant_key(ctx.job.tenant_id, *prefix, "dataset.tar"),
        archive,
        info={"num_frames": manifest.num_frames},
        content_type="application/x-tar",
    )
    report_path = out / "manifest.json"
    quality = json.loads(report_path.read_text()).get("quality", {})
    return StepResult(progress=END, metrics={"dataset": quality})


@stage_task("talkinghead.prepare")
def prepare(ctx: JobContext) -> StepResult:
    """A photo family's preparation of its source (instead of training); stored as one tar."""
    avatar = avatar_of(ctx)
    family = family_of(avatar)
    config = pinned_config(ctx, family, avatar)
    source = avatar_source(ctx, family)
    out = ctx.workdir / "prepared"
    out.mkdir()
    with family_errors():
        metrics = family.prepare(source, out, config)
    ctx.pause()
    ctx.check()
    archive = pack(out, ctx.workdir / "prepared.tar")
    key = tenant_key(ctx.job.tenant_id, "avatars", avatar.id, "prepared", "prepared.tar")
    ctx.save_artifact("prepared", key, archive, content_type="application/x-tar")
    return StepResult(state={"config": config}, progress=PREPARE_END, metrics={"prepared": metrics})
