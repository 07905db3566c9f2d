"""Typed presets of the RAD-NeRF renderer: model sizes, training schedule and sampling."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from talkinghead.components.grids import GridConfig


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes (RAD-NeRF supplementary A.2, scaled down where a preset says so)."""

    spatial: GridConfig = field(default_factory=GridConfig)
    audio_grid: GridConfig = field(default_factory=lambda: GridConfig((8, 16, 32, 64), 2))
    torso_grid: GridConfig = field(default_factory=lambda: GridConfig((16, 32, 64, 128), 4))
    audio_dim: int = 64  # the audio condition code a (paper: 64)
    audio_coord_dim: int = 2  # D of the audio coordinate (paper: 2 is best)
    audio_window: int = 16  # feature rows per window (dataset context 8 -> 16 rows)
    attention_window: int = 8  # neighbouring windows smoothed by the attention module
    hidden: int = 64  # width of the density, colour and audio MLPs
    latent_dim: int = 4  # per-frame appearance code
    bound: float = 0.2  # half side of the head's box in metres (head frame, see pose.py)
    occupancy_resolution: int = 64
    samples_per_ray: int = 16  # the paper's "at most 16 samples per ray"
    candidates_per_ray: int = 64  # occupancy look-ups per ray to find the occupied interval


@dataclass(frozen=True)
class TrainConfig:
    """Schedule of the three stages (head, lips fine-tuning, torso) and their losses."""

    resolution: int = 128  # training and rendering side in pixels
    head_steps: int = 1500
    lips_steps: int = 300
    torso_steps: int = 500
    rays_per_step: int = 2048
    frames_per_step: int = 2
    face_ray_fraction: float = 0.5  # share of rays drawn inside the head's bounding box
    lips_ray_fraction: float = 0.15  # ... inside the lips box (the audio signal lives there)
    eye_ray_fraction: float = 0.1  # ... inside the eye box (blinks are rare and small)
    lips_patch: int = 32  # side of the lips patch (pixels at `resolution`)
    lr_grid: float = 5e-3  # paper: 0.005 for the feature grids
    lr_net: float = 5e-4  # paper: 0.0005 for the networks
    lr_final_ratio: float = 0.1  # exponential decay to 0.1 of the initial rates
    ema_decay: float = 0.95
    entropy_weight: float = 1e-3
    # L1 on the audio coordinate outside the face region. The paper uses 0.1; with our
    # per-ray mean that collapses the shared audio MLP (the mouth stops following the audio).
    dynamic_weight: float = 0.01
    eye_weight: float = 0.01  # L1 on the eye gate outside the eye region
    patch_weight: float = 0.01  # structural (1 - SSIM) loss of the lips patch
    occupancy_every: int = 16  # steps between maximum-occupancy-grid updates
    occupancy_warmup: int = 64  # steps before the grid first prunes anything
    occupancy_decay: float = 0.95
    occupancy_threshold: float = 0.01  # occupied when alpha of one cell step exceeds this
    segment_steps: int = 250  # steps per resumable segment (one task of the train queue)
    eval_frames: int = 200  # held-out frames evaluated at most (bounded work per export)
    seed: int = 0

    @property
    def total_steps(self) -> int:
        """All steps of the three stages."""
        return self.head_steps + self.lips_steps + self.torso_steps


@dataclass(frozen=True)
class RadNerfConfig:
    """Everything that defines one trained RAD-NeRF avatar."""

    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in checkpoints and exports)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadNerfConfig:
        """Inverse of `to_dict`."""
        model = dict(data["model"])
        for key in ("spatial", "audio_grid", "torso_grid"):
            grid = model[key]
            model[key] = GridConfig(tuple(grid["resolutions"]), int(grid["channels"]))
        return cls(data["name"], ModelConfig(**model), TrainConfig(**data["train"]))


# Pipeline tests and the CI demo: 900 steps at 64 px, about a minute on 2 cores. It learns a
# face the tracker finds, but at 64 px the mouth is a few pixels: quality tests use cpu-quick.
TINY = RadNerfConfig(
    "tiny",
    ModelConfig(
        spatial=GridConfig((16, 32, 64), 4),
        audio_grid=GridConfig((8, 16, 32), 2),
        torso_grid=GridConfig((16, 32, 64), 2),
        hidden=32,
        occupancy_resolution=32,
    ),
    TrainConfig(
        resolution=64,
        head_steps=600,
        lips_steps=100,
        torso_steps=200,
        rays_per_step=1024,
        lr_grid=3e-2,
        lr_net=5e-3,
        segment_steps=150,
    ),
)
# The demo and CPU users: minutes on 2 cores at 128 px. A few thousand steps instead of the
# paper's 45k, so the learning rates are higher than its 5e-3 / 5e-4.
CPU_QUICK = RadNerfConfig(
    "cpu-quick",
    train=TrainConfig(head_steps=1500, lips_steps=300, torso_steps=500, lr_grid=3e-2, lr_net=5e-3),
)
# The paper's schedule on a GPU: 512 px, 256^2 rays per step, 20k head + 5k lips + 20k torso.
GPU_STANDARD = RadNerfConfig(
    "gpu-standard",
    ModelConfig(
        spatial=GridConfig((16, 32, 64, 128, 256, 512), 4),
        audio_grid=GridConfig((8, 16, 32, 64), 4),
        torso_grid=GridConfig((16, 32, 64, 128, 256, 512), 4),
        occupancy_resolution=128,
    ),
    TrainConfig(
        resolution=512,
        head_steps=20000,
        lips_steps=5000,
        torso_steps=20000,
        rays_per_step=256 * 256,
        frames_per_step=1,
        lips_patch=64,
        segment_steps=1000,
    ),
)
PRESETS: dict[str, RadNerfConfig] = {p.name: p for p in (TINY, CPU_QUICK, GPU_STANDARD)}


def preset(name: str, **train_overrides: Any) -> RadNerfConfig:
    """A preset by name, optionally with some training fields replaced."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return replace(base, train=replace(base.train, **train_overrides)) if train_overrides else base
