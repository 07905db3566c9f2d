"""Preprocess stage: normalised media to a versioned training dataset in the object store."""

from __future__ import annotations

import json
import tarfile

from services.runner import JobContext, stage_task
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from talkinghead.media import MediaError
from talkinghead.preprocess.pipeline import PreprocessConfig, build_dataset

# Side of the stored dataset per preset; the trainer resizes to its own training resolution.
PRESET_SIZES = {"tiny": 128, "cpu-quick": 256, "gpu-standard": 512}
START, END = 0.05, 0.2


def artifact_key(ctx: JobContext, kind: str) -> str:
    """The stored key of an artifact this avatar already has."""
    art = ctx.artifact(kind)
    if art is None:
        raise JobError("internal_error", f"missing {kind} artifact")
    return art.key


@stage_task("talkinghead.preprocess")
def preprocess(ctx: JobContext) -> StepResult:
    """Track, pose, segment and featurise the video; store the dataset as one tar."""
    avatar = ctx.resource()
    video = ctx.fetch(artifact_key(ctx, "video"), "video.mp4")
    audio = ctx.fetch(artifact_key(ctx, "audio"), "audio.wav")
    config = PreprocessConfig(
        size=PRESET_SIZES.get(avatar.preset, 256),  # type: ignore[union-attr]
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
    archive = ctx.workdir / "dataset.tar"
    with tarfile.open(archive, "w") as tar:  # uncompressed: frames are already JPEG/PNG
        tar.add(out, arcname="dataset")
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
