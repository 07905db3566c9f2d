"""The `meanframe` family: the clip's mean frame held over the speech, no lip motion.

Who it is for: operators smoke-testing a deployment (an avatar is ready in seconds on any
machine, through every stage a trained family uses: ingest, preprocess, segmented training
with checkpoints, export, render, encode) and the platform's own tests of those stages. It
makes no claim to look like a talking person.
"""

from __future__ import annotations

import io
import os
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
    Progress,
    RenderControls,
    StepReport,
    TrainingRun,
    TrainOptions,
)
from talkinghead.families.meanframe.model import MAX_SIDE, StillState

DEFAULT_SEGMENT = 50  # frames per training task unless the operator sets another
# Presets only size the preprocessed dataset: the mean frame itself has nothing to tune.
PRESETS = {
    "tiny": PresetSpec("tiny", 128, "smallest preprocessing"),
    "cpu-quick": PresetSpec("cpu-quick", 256, "256 px preprocessing"),
    "gpu-standard": PresetSpec("gpu-standard", 512, "512 px preprocessing"),
}


class MeanFrameRun:
    """Adds frames to a running sum, a segment at a time (the whole training state)."""

    def __init__(self, video: Path, segment: int, total: int) -> None:
        self.video = video
        self.state = StillState()
        self.exhausted = False
        self._segment = segment
        self._total = total

    @property
    def step(self) -> int:
        """Frames summed so far."""
        return self.state.count

    @property
    def total_steps(self) -> int:
        """Frames of the video (as probed; at least those seen)."""
        return max(self._total, self.state.count)

    @property
    def done(self) -> bool:
        """True once a segment found the video's end."""
        return self.exhausted

    @property
    def segment_steps(self) -> int:
        """Frames per training task."""
        return self._segment

    def run(self, steps: int | None = None, progress: Progress | None = None) -> int:
        """Add up to `steps` more frames; the video's end marks the run done."""
        from talkinghead.families.meanframe.model import train_segment

        want = steps if steps is not None else 1 << 30
        added = train_segment(self.video, self.state, want)
        if added < want:
            self.exhausted = True
        if self.state.count == 0:
            raise FamilyError("unreadable_media", "no frame could be decoded")
        if progress is not None:
            progress(StepReport(self.step, self.total_steps, "mean", {}))
        return added

    def save(self, path: Path) -> Path:
        """The running sum and whether the end was reached, written atomically."""
        buf = io.BytesIO()
        np.savez(buf, state=np.frombuffer(self.state.to_bytes(), np.uint8), end=self.exhausted)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
        return path

    def load(self, path: Path) -> None:
        """Resume from `save`'s file."""
        try:
            with np.load(path, allow_pickle=False) as z:
                self.state = StillState.from_bytes(z["state"].tobytes())
                self.exhausted = bool(z["end"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"not a mean-frame checkpoint: {exc}") from None

    def summary(self) -> dict[str, Any]:
        """Frames seen."""
        return {"steps": self.step, "total_steps": self.total_steps, "stage": "mean"}


class MeanFrameFamily:
    """The mean frame of the source video, held for the length of the speech."""

    name = "meanframe"
    description = "the source's mean frame over the speech (deployment smoke test, no lip motion)"
    sources = frozenset({"video"})
    stages = VIDEO_STAGES
    presets: Mapping[str, PresetSpec] = PRESETS
    default_preset = "cpu-quick"
    reads = frozenset({"video"})
    inputs = (InputSpec("frame", ()),)  # the frame index; the picture ignores it

    def config(self, preset: str) -> dict[str, Any]:
        """Nothing to configure beyond the preset's name."""
        if preset not in PRESETS:
            raise FamilyError("unknown_preset", f"unknown preset {preset!r}")
        return {"preset": preset}

    def open_training(
        self, source: AvatarSource, workdir: Path, config: dict[str, Any], options: TrainOptions
    ) -> TrainingRun:
        """A run over the normalised video."""
        from talkinghead.media import MediaError, probe

        if source.video is None:
            raise FamilyError("internal_error", "meanframe trains from the normalised video")
        try:
            info = probe(source.video)
        except MediaError as exc:
            raise FamilyError(exc.code, exc.message) from None
        total = info.video.frames if info.video is not None else 0
        return MeanFrameRun(source.video, options.segment_steps or DEFAULT_SEGMENT, total)

    def prepare(
        self, source: AvatarSource, out_dir: Path, config: dict[str, Any]
    ) -> dict[str, Any]:
        """Not a stage of this family."""
        raise FamilyError("internal_error", "meanframe avatars are trained, not prepared")

    def export(
        self,
        source: AvatarSource,
        run: TrainingRun | None,
        out_dir: Path,
        config: dict[str, Any],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        """A TorchScript module returning the mean frame, measured against the first frame."""
        from talkinghead.export.artifact import write_export
        from talkinghead.families.meanframe.model import mean_frame
        from talkinghead.families.meanframe.renderer import constant_renderer
        from talkinghead.media import iter_frames
        from talkinghead.metrics import psnr

        if not isinstance(run, MeanFrameRun) or source.video is None:
            raise FamilyError("internal_error", "meanframe exports a mean-frame training run")
        try:
            image = mean_frame(run.state)
        except ValueError as exc:
            raise FamilyError("unreadable_media", str(exc)) from None
        module = constant_renderer(image)
        write_export(out_dir, module, {"background": image}, self.name, list(self.inputs), info)
        first = next(iter_frames(source.video, MAX_SIDE, count=1))
        return {"frames": run.state.count, "psnr_first_frame_db": round(psnr(image, first), 3)}

    def conditions(
        self, export_dir: Path, manifest: Mapping[str, Any], speech: np.ndarray,
        controls: RenderControls,
    ) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
        """Frame indices, `controls.batch` at a time."""
        for lo in range(0, controls.frames, controls.batch):
            hi = min(controls.frames, lo + controls.batch)
            yield {"frame": np.arange(lo, hi, dtype=np.float32)}


FAMILY = MeanFrameFamily()
