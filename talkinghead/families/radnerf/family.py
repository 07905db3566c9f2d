"""The `radnerf` family: RAD-NeRF avatars trained from a portrait video (the default)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from talkinghead.families.contract import (
    VIDEO_STAGES,
    AvatarSource,
    FamilyError,
    InputSpec,
    PresetSpec,
    RenderControls,
    TrainingRun,
    TrainOptions,
)
from talkinghead.families.radnerf.config import PRESETS, RadNerfConfig, preset

EXPORT_CHECK_FRAMES = 3  # held-out frames rendered both ways to check the traced export
SCORES = ("psnr", "psnr_frame_mean", "ssim", "lmd", "lipsync", "lipsync_shuffled", "face_found")
# Side of the stored dataset per preset; the trainer resizes to its own training resolution.
SOURCE_SIZES = {"tiny": 128, "cpu-quick": 256, "gpu-standard": 512}
DESCRIPTIONS = {
    "tiny": "tests and the CI demo: about a minute on a CPU, low quality",
    "cpu-quick": "CPU users: minutes on 2 cores at 128 px",
    "gpu-standard": "the paper's schedule on a GPU at 512 px",
}


def _finite(value: float) -> float | None:
    # JSON (and PostgreSQL's json type) has no NaN: an undefined score is null.
    return round(float(value), 4) if math.isfinite(value) else None


class RadNerfFamily:
    """RAD-NeRF: audio-spatial decomposed grids, trained per identity in three stages."""

    name = "radnerf"
    description = "RAD-NeRF: real-time audio-driven NeRF trained from a 1-5 min portrait video"
    sources = frozenset({"video"})
    stages = VIDEO_STAGES
    presets: Mapping[str, PresetSpec] = {
        name: PresetSpec(name, SOURCE_SIZES[name], DESCRIPTIONS[name]) for name in PRESETS
    }
    default_preset = "cpu-quick"
    reads = frozenset({"dataset"})
    inputs = (InputSpec("pose", (4, 4)), InputSpec("audio", (-1, -1, -1)), InputSpec("eye", ()))

    def config(self, preset_name: str) -> dict[str, Any]:
        """The preset's full config."""
        try:
            return preset(preset_name).to_dict()
        except ValueError as exc:
            raise FamilyError("unknown_preset", str(exc)) from None

    def _config(self, config: dict[str, Any]) -> RadNerfConfig:
        try:
            return RadNerfConfig.from_dict(config)
        except (KeyError, TypeError, ValueError) as exc:
            raise FamilyError(
                "checkpoint_incompatible",
                f"this version cannot continue the avatar's training ({exc}); create it again",
            ) from None

    def open_training(
        self, source: AvatarSource, workdir: Path, config: dict[str, Any], options: TrainOptions
    ) -> TrainingRun:
        """A RAD-NeRF trainer over the preprocessed dataset."""
        from talkinghead.families.radnerf.training import RadNerfTrainer

        if source.dataset is None:
            raise FamilyError("internal_error", "radnerf trains from a preprocessed dataset")
        return RadNerfTrainer(
            source.dataset, workdir, self._config(config), lpips_path=options.lpips_path
        )

    def prepare(
        self, source: AvatarSource, out_dir: Path, config: dict[str, Any]
    ) -> dict[str, Any]:
        """Not a stage of this family."""
        raise FamilyError("internal_error", "radnerf avatars are trained, not prepared")

    def export(
        self,
        source: AvatarSource,
        run: TrainingRun | None,
        out_dir: Path,
        config: dict[str, Any],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        """Score the held-out frames with the EMA weights, trace them, check the trace."""
        from talkinghead.export.artifact import ExportedAvatar
        from talkinghead.families.radnerf.driving import assets_of
        from talkinghead.families.radnerf.evaluation import frame_conditions
        from talkinghead.families.radnerf.export import export_avatar, max_difference
        from talkinghead.families.radnerf.training import RadNerfTrainer

        if not isinstance(run, RadNerfTrainer):
            raise FamilyError("internal_error", "radnerf exports a RAD-NeRF training run")
        if not run.done:
            raise FamilyError("internal_error", f"training stopped at step {run.step}")
        data = run.data
        scores = run.evaluate(run.config.train.eval_frames)  # with the EMA weights
        with run.ema.applied():
            export_avatar(
                run.model, assets_of(data), data.reader.manifest.audio, out_dir, info=info
            )
            exported = ExportedAvatar.load(out_dir, run.device)
            ids = [int(i) for i in data.val_ids[:EXPORT_CHECK_FRAMES]] or [0]
            cond = frame_conditions(data, ids, run.config.model.attention_window)
            worst = max_difference(
                run.model, exported, cond.poses.numpy(), cond.audio.numpy(), cond.eye.numpy()
            )
        if worst > 1:  # the promise is <= 1/255; a larger gap means tracing went wrong
            raise FamilyError("export_mismatch", f"the exported renderer differs by {worst}/255")
        metrics: dict[str, Any] = {k: _finite(scores[k]) for k in SCORES if k in scores}
        metrics["eval_frames"] = int(scores.get("frames", 0))
        return metrics

    def conditions(
        self, export_dir: Path, manifest: Mapping[str, Any], speech: np.ndarray,
        controls: RenderControls,
    ) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
        """Audio windows from the avatar's own encoder, poses and eye ratios per frame."""
        from talkinghead.export.artifact import ASSETS, load_assets, manifest_inputs
        from talkinghead.families.radnerf.driving import speech_features
        from talkinghead.families.radnerf.export import assets_from_arrays
        from talkinghead.rendering.controls import frame_batches

        assets = assets_from_arrays(load_assets(export_dir / ASSETS))
        spec = dict(manifest["audio"])
        if controls.audio_encoder_path is not None:
            spec["path"] = str(controls.audio_encoder_path)
        try:
            features = speech_features(speech, spec)[: controls.frames]
        except ValueError as exc:
            raise FamilyError("audio_encoder_unavailable", str(exc)) from None
        k, w, _ = next(s.shape for s in manifest_inputs(manifest) if s.name == "audio")
        pose: Any = controls.pose  # checked by the render controls ("static", "source")
        eyes: Any = controls.eyes
        for batch in frame_batches(assets, features, k, pose, eyes, controls.batch, w // 2):
            yield {"pose": batch.poses, "audio": batch.audio, "eye": batch.eyes}


FAMILY = RadNerfFamily()
