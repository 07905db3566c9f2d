"""The renderer-family contract: what every family declares and implements for the platform.

A family owns one folder under `talkinghead/families/` (or lives in an operator's package) and
exposes one object that satisfies `RendererFamily`. The services never compare family names:
they ask the registry for the family and call these methods, as nerfstudio's trainer calls a
model's `get_param_groups` / `get_loss_dict` without knowing the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Source = Literal["video", "image"]
SOURCES: tuple[Source, ...] = ("video", "image")

# The avatar stages a family may list, in pipeline order. A video family usually trains
# (ingesting -> preprocessing -> training -> exporting); a photo family prepares instead of
# training (ingesting -> preparing -> exporting). Every stage's task is generic: it calls the
# family method of the same purpose.
AVATAR_STAGES = ("ingesting", "preprocessing", "preparing", "training", "exporting")
VIDEO_STAGES = ("ingesting", "preprocessing", "training", "exporting")
IMAGE_STAGES = ("ingesting", "preparing", "exporting")

Progress = Callable[["StepReport"], None]


def frames_for(samples: int, sample_rate: int = 16000, fps: float = 25) -> int:
    """Frames of a video as long as `samples` of audio (at least one)."""
    return max(1, round(samples / sample_rate * fps))


class FamilyError(Exception):
    """A failure the user must see, with a stable code (the job ends `failed` with it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """One named per-frame renderer input: dtype and per-frame shape (-1: fixed per export)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as listed in export manifests."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Inverse of `to_dict`."""
        return cls(str(data["name"]), tuple(int(v) for v in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class PresetSpec:
    """A named preset: what the API offers and the size the source is prepared at."""

    name: str
    source_size: int  # side in pixels of the preprocessed dataset or prepared photo
    description: str = ""


@dataclass(frozen=True)
class StepReport:
    """What one training step reports to its caller."""

    step: int
    total: int
    stage: str
    losses: dict[str, float]


@dataclass(frozen=True)
class TrainOptions:
    """Operator settings a training run may use (local paths only, nothing downloaded)."""

    lpips_path: Path | None = None
    segment_steps: int | None = None  # the operator's segment length, for families without one


@dataclass(frozen=True)
class AvatarSource:
    """What the earlier stages left for a family: the files it may read, by kind."""

    video: Path | None = None  # normalised 25 fps video (video sources)
    audio: Path | None = None  # its 16 kHz mono audio
    dataset: Path | None = None  # preprocessed dataset directory (after `preprocessing`)
    image: Path | None = None  # normalised photo (image sources)
    prepared: Path | None = None  # what `prepare` wrote (after `preparing`)


@dataclass
class RenderControls:
    """Render options in per-frame form; a family uses those its conditions need."""

    frames: int  # frames to render (25 fps)
    pose: str | np.ndarray = "source"  # "static", "source" or (frames, 4, 4) camera-from-head
    eyes: str | np.ndarray = "natural"  # "natural", "open" or (frames,) eye ratios
    batch: int = 8  # frames per yielded batch
    audio_encoder_path: Path | None = None  # the operator's local copy of a pretrained encoder
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingRun(Protocol):
    """One avatar's resumable training; checkpoints restore it bit for bit."""

    @property
    def step(self) -> int:
        """Steps run so far."""
        ...

    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule."""
        ...

    @property
    def done(self) -> bool:
        """True when every step has run."""
        ...

    @property
    def segment_steps(self) -> int:
        """Steps one training task runs (a bounded, resumable segment)."""
        ...

    def run(self, steps: int | None = None, progress: Progress | None = None) -> int:
        """Run up to `steps` more steps; returns how many ran."""
        ...

    def save(self, path: Path) -> Path:
        """Write a checkpoint atomically."""
        ...

    def load(self, path: Path) -> None:
        """Resume from a checkpoint; ValueError when it cannot be resumed."""
        ...

    def summary(self) -> dict[str, Any]:
        """What the avatar shows about training (steps, stage, seconds)."""
        ...


@runtime_checkable
class RendererFamily(Protocol):
    """Everything the platform needs from a renderer family."""

    name: str
    description: str
    sources: frozenset[str]  # subset of SOURCES
    stages: tuple[str, ...]  # avatar stages in order, each from AVATAR_STAGES
    presets: Mapping[str, PresetSpec]
    default_preset: str
    inputs: tuple[InputSpec, ...]  # the named per-frame inputs of its exported renderer
    reads: frozenset[str]  # the AvatarSource fields its stages read (only those are fetched)

    def config(self, preset: str) -> dict[str, Any]:
        """The JSON config of a preset; pinned in the job so retuned presets don't break it."""
        ...

    def open_training(
        self, source: AvatarSource, workdir: Path, config: dict[str, Any], options: TrainOptions
    ) -> TrainingRun:
        """A fresh training run (families whose stages include `training`)."""
        ...

    def prepare(
        self, source: AvatarSource, out_dir: Path, config: dict[str, Any]
    ) -> dict[str, Any]:
        """Turn the source into what the export needs (stage `preparing`); returns metrics."""
        ...

    def export(
        self,
        source: AvatarSource,
        run: TrainingRun | None,
        out_dir: Path,
        config: dict[str, Any],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        """Write the export into `out_dir` (manifest last, see talkinghead.export); metrics."""
        ...

    def conditions(
        self, export_dir: Path, manifest: Mapping[str, Any], speech: np.ndarray,
        controls: RenderControls,
    ) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
        """Per-frame named inputs for 16 kHz mono `speech`, `controls.batch` frames a time.

        `export_dir` holds the manifest and the assets file (not the renderer weights).
        """
        ...
