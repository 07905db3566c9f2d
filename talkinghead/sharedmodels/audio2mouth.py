"""audio2mouth: a tiny shared model from a window of audio features to the mouth's landmarks.

It predicts the mouth points (outer and inner lip contours of the face mesh, in the canonical
head frame) of the window's centre frame as motion around the speaker's mean mouth in the
clip, so it learns how speech moves a mouth rather than whose mouth it is. It is small enough
to train on a CPU in seconds and serves as the reference kind of the shared-model contract.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from talkinghead.corpus.format import ClipRecord
from talkinghead.preprocess.features import INNER_LIPS
from talkinghead.sharedmodels.contract import (
    CorpusSource,
    SharedModelError,
    SharedModelKind,
    TrainingRun,
    TrainOptions,
)
from talkinghead.training.trainer import ParamGroup, Trainer

NAME = "audio2mouth"
EXPORT_FORMAT = 1
WEIGHTS = "audio2mouth.pt"
DESCRIPTION_FILE = "audio2mouth.json"


@cache
def mouth_layout() -> tuple[np.ndarray, np.ndarray]:
    """The 40 predicted face-mesh points and the positions of the inner-lip pairs among them."""
    # The points are the outer then inner lip contour that the landmark metric compares; the
    # pairs are those whose gap `mouth_openness` measures, so the opening here is the same.
    from talkinghead.metrics import MOUTH_POINTS  # on demand: it pulls OpenCV in

    position = {int(p): i for i, p in enumerate(MOUTH_POINTS)}
    pairs = np.array([(position[u], position[lo]) for u, lo in INNER_LIPS], dtype=np.int64)
    return MOUTH_POINTS, pairs


@dataclass(frozen=True)
class Audio2MouthConfig:
    """Network size, schedule and data drawing; the defaults train in seconds on a CPU."""

    window: int = 8  # audio feature rows per prediction, centred on the predicted frame
    coords: int = 2  # coordinates per mouth point: x, y (2) or x, y, z (3)
    hidden: int = 24  # channels of the two temporal convolutions
    total_steps: int = 60
    segment_steps: int = 20  # steps per resumable segment; each draws its own data stream
    batch: int = 32
    lr: float = 1e-2
    lr_final_ratio: float = 0.3  # exponential decay of the rate to this share at the end
    ema_decay: float = 0.9
    windows_per_clip: int = 8  # windows drawn from each clip as it streams past
    shuffle_buffer: int = 256  # windows held to mix clips within a batch
    stats_clips: int = 32  # training clips read to normalise the inputs and targets
    eval_windows: int = 4096  # validation windows scored at most (0: all)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (stored in jobs, checkpoints and exports)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Audio2MouthConfig:
        """Parse and validate; SharedModelError("invalid_config") says what is wrong."""
        types = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise SharedModelError("invalid_config", f"unknown {NAME} settings {unknown}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            want = types[key]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if want is int:
                ok = ok and float(value).is_integer()
            if not ok:
                raise SharedModelError("invalid_config", f"{key} must be a {want.__name__}")
            values[key] = want(value)
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise SharedModelError("invalid_config") for values no run can train with."""
        positive = ["window", "hidden", "total_steps", "segment_steps", "batch"]
        positive += ["windows_per_clip", "shuffle_buffer", "stats_clips"]
        bad = [k for k in positive if getattr(self, k) < 1]
        if self.coords not in (2, 3):
            bad.append("coords")
        if not self.lr > 0:
            bad.append("lr")
        if not 0 < self.lr_final_ratio <= 1:
            bad.append("lr_final_ratio")
        if not 0 <= self.ema_decay < 1:
            bad.append("ema_decay")
        if self.eval_windows < 0 or self.seed < 0:
            bad.append("eval_windows" if self.eval_windows < 0 else "seed")
        if bad:
            raise SharedModelError("invalid_config", f"{NAME}: out of range: {sorted(bad)}")


# -- data -------------------------------------------------------------------------------------


@dataclass
class ClipSamples:
    """One clip ready for drawing windows: padded features, mouth motion and its valid frames."""

    padded: np.ndarray  # (T + window - 1, D) float32, edge rows repeated
    motion: np.ndarray  # (T, P, C) float32, mouth points minus the clip's mean mouth
    mean: np.ndarray  # (P, C) float32, the clip's mean mouth (identity, not motion)
    valid: np.ndarray  # (V,) frame indices with finite mouth points

    @property
    def features(self) -> np.ndarray:
        """The clip's own feature rows: (T, D)."""
        before = (len(self.padded) - len(self.motion)) // 2
        return self.padded[before : before + len(self.motion)]

    def windows(self, centres: np.ndarray, window: int) -> np.ndarray:
        """Feature windows centred on `centres`: (N, window, D)."""
        return self.padded[centres[:, None] + np.arange(window)[None, :]]


def clip_samples(clip: ClipRecord, config: Audio2MouthConfig) -> ClipSamples | None:
    """The clip's windows and targets; None when no frame has a tracked mouth."""
    feats = np.nan_to_num(np.asarray(clip.arrays["audio_features"], dtype=np.float32))
    mesh = np.asarray(clip.arrays["canonical"], dtype=np.float64)
    points = mesh[:, mouth_layout()[0], : config.coords]
    valid = np.flatnonzero(np.isfinite(points).all(axis=(1, 2)))
    if len(valid) == 0 or len(feats) != len(points):
        return None
    mean = points[valid].mean(axis=0)
    before = config.window // 2  # the centre row is `before` rows into its window
    padded = np.pad(feats, ((before, config.window - 1 - before), (0, 0)), mode="edge")
    motion = np.nan_to_num(points - mean).astype(np.float32)
    return ClipSamples(padded, motion, mean.astype(np.float32), valid)


@dataclass(frozen=True)
class Normaliser:
    """Input and target scales measured on the first training clips."""

    feature_mean: np.ndarray  # (D,)
    feature_std: np.ndarray  # (D,)
    motion_scale: float  # RMS of the mouth motion (targets are learned in these units)

    @property
    def feature_dim(self) -> int:
        """Width D of one audio feature row."""
        return len(self.feature_mean)


def measure(corpus: CorpusSource, config: Audio2MouthConfig) -> Normaliser:
    """Normalisation from up to `stats_clips` training clips in the corpus' own order."""
    clips, rows, motion_sq, motion_n = 0, 0, 0.0, 0
    total = squares = np.zeros(0)
    for clip in corpus("train").clips():
        samples = clip_samples(clip, config)
        if samples is None:
            continue
        feats = samples.features.astype(np.float64)
        if clips and feats.shape[1] != len(total):
            raise SharedModelError("invalid_corpus", "clips have different audio feature widths")
        total = feats.sum(axis=0) + (total if clips else 0.0)
        squares = np.square(feats).sum(axis=0) + (squares if clips else 0.0)
        rows += len(feats)
        moving = samples.motion[samples.valid].astype(np.float64)
        motion_sq += float(np.square(moving).sum())
        motion_n += moving.size
        clips += 1
        if clips >= config.stats_clips:
            break
    if not clips:
        raise SharedModelError("empty_corpus", "the training split has no clip with a mouth")
    mean = total / rows
    std = np.sqrt(np.maximum(squares / rows - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # a constant feature carries nothing: leave it be
    scale = max(math.sqrt(motion_sq / max(1, motion_n)), 1e-6)
    return Normaliser(mean.astype(np.float32), std.astype(np.float32), scale)


def segment_batches(
    corpus: CorpusSource, config: Audio2MouthConfig, segment: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (windows, motion) batches of one segment, a function of (seed, segment) only.

    Checkpoints fall on segment ends, so a resumed run opens the same stream a run that was
    never stopped opened: the training data cannot depend on what earlier segments read.
    """
    rng = np.random.default_rng([config.seed, segment])
    buffer: list[tuple[np.ndarray, np.ndarray]] = []
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    while True:
        drawn = 0
        # Each pass over the split is ordered by a seed drawn here, so segments (and the
        # passes of one segment) start at different clips of a large corpus.
        for clip in corpus("train").clips(int(rng.integers(2**31))):
            samples = clip_samples(clip, config)
            if samples is None:
                continue
            k = min(config.windows_per_clip, len(samples.valid))
            centres = np.sort(rng.choice(samples.valid, size=k, replace=False))
            windows = samples.windows(centres, config.window)
            for window, target in zip(windows, samples.motion[centres], strict=True):
                buffer.append((window, target))
                drawn += 1
                if len(buffer) < config.shuffle_buffer:
                    continue
                i = int(rng.integers(len(buffer)))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                x, y = buffer.pop()
                xs.append(x)
                ys.append(y)
                if len(xs) == config.batch:
                    yield np.stack(xs), np.stack(ys)
                    xs, ys = [], []
        if not drawn:
            raise SharedModelError("empty_corpus", "the training split has no clip with a mouth")


# -- the network ------------------------------------------------------------------------------


class Audio2Mouth(nn.Module):
    """Two temporal convolutions over the feature window, then the mouth points' motion."""

    def __init__(self, feature_dim: int, window: int, coords: int, hidden: int) -> None:
        super().__init__()
        self.window = window
        self.points = len(mouth_layout()[0])
        self.coords = coords
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.register_buffer("motion_scale", torch.ones(()))
        self.feature_mean: Tensor
        self.feature_std: Tensor
        self.motion_scale: Tensor
        self.conv = nn.Sequential(
            nn.Conv1d(feature_dim, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1, stride=2),
            nn.GELU(),
        )
        self.head = nn.Linear(hidden * ((window + 1) // 2), self.points * coords)

    def set_normaliser(self, norm: Normaliser) -> None:
        """Load the corpus' input and target scales into the buffers."""
        with torch.no_grad():
            self.feature_mean.copy_(torch.from_numpy(norm.feature_mean))
            self.feature_std.copy_(torch.from_numpy(norm.feature_std))
            self.motion_scale.fill_(norm.motion_scale)

    def forward(self, windows: Tensor) -> Tensor:
        """(B, window, D) audio features -> (B, P, C) mouth motion in canonical units."""
        x = (windows - self.feature_mean) / self.feature_std
        h = self.conv(x.transpose(1, 2))
        out = self.head(h.flatten(1)).view(-1, self.points, self.coords)
        return out * self.motion_scale

    @torch.no_grad()
    def predict(self, features: np.ndarray, batch: int = 1024) -> np.ndarray:
        """Mouth motion of every frame of a (T, D) feature sequence: (T, P, C) float32."""
        feats = np.asarray(features, dtype=np.float32)
        before = self.window // 2
        padded = np.pad(feats, ((before, self.window - 1 - before), (0, 0)), mode="edge")
        rows = np.arange(len(feats))[:, None] + np.arange(self.window)[None, :]
        device = self.feature_mean.device
        out = [
            self(torch.from_numpy(padded[rows[i : i + batch]]).to(device)).cpu().numpy()
            for i in range(0, len(feats), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.points, self.coords), "f4")


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Mean inner-lip gap of (..., P, C) mouth points in canonical units: (...,)."""
    pairs = mouth_layout()[1]
    upper, lower = points[..., pairs[:, 0], :], points[..., pairs[:, 1], :]
    return np.linalg.norm(upper - lower, axis=-1).mean(axis=-1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (no linear relation to measure)."""
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def _centred(values: np.ndarray) -> np.ndarray:
    return values - values.mean()


@torch.no_grad()
def validate(
    model: Audio2Mouth, corpus: CorpusSource, config: Audio2MouthConfig, limit: int
) -> dict[str, float]:
    """Mouth L1 and opening correlation on the validation split, next to a constant baseline.

    The baseline predicts no motion (each clip's mean mouth): a model that ignored the audio
    would score it, so the gap between the two is what the audio taught.
    """
    model.eval()
    errors: list[np.ndarray] = []
    baseline: list[np.ndarray] = []
    true_open: list[np.ndarray] = []
    pred_open: list[np.ndarray] = []
    base_open: list[np.ndarray] = []
    seen = 0
    for clip in corpus("val").clips():
        samples = clip_samples(clip, config)
        if samples is None:
            continue
        frames = samples.valid[: limit - seen] if limit else samples.valid
        windows = torch.from_numpy(samples.windows(frames, config.window))
        pred = model(windows.to(model.feature_mean.device)).cpu().numpy()
        true = samples.motion[frames]
        errors.append(np.abs(pred - true).mean(axis=(1, 2)))
        baseline.append(np.abs(true).mean(axis=(1, 2)))
        # Openings are centred per clip: r then measures how the mouth follows the speech,
        # not how wide one speaker's mouth is next to another's.
        base_open.append(np.zeros(len(frames)))  # constant within the clip: zero once centred
        true_open.append(_centred(mouth_opening((true + samples.mean).astype(np.float64))))
        pred_open.append(_centred(mouth_opening((pred + samples.mean).astype(np.float64))))
        seen += len(frames)
        if limit and seen >= limit:
            break
    if not seen:  # a corpus of one identity has no validation split: nothing to measure
        return {"val_windows": 0.0}
    return {
        "val_windows": float(seen),
        "mouth_l1": float(np.concatenate(errors).mean()),
        "opening_r": pearson(np.concatenate(pred_open), np.concatenate(true_open)),
        "baseline_mouth_l1": float(np.concatenate(baseline).mean()),
        "baseline_opening_r": pearson(np.concatenate(base_open), np.concatenate(true_open)),
    }


# -- training ---------------------------------------------------------------------------------


class Audio2MouthRecipe:
    """One schedule of L1 steps on the mouth motion (satisfies the trainer's Recipe)."""

    name = NAME

    def __init__(
        self,
        corpus: CorpusSource,
        config: Audio2MouthConfig,
        norm: Normaliser,
        device: torch.device,
    ) -> None:
        self.corpus = corpus
        self.config = config
        self.seed = config.seed
        self.total_steps = config.total_steps
        self.segment_steps = config.segment_steps
        self.ema_decay = config.ema_decay
        self.device = device
        net = Audio2Mouth(norm.feature_dim, config.window, config.coords, config.hidden)
        net.set_normaliser(norm)
        self.model: Audio2Mouth = net.to(device)
        self._stream: Iterator[tuple[np.ndarray, np.ndarray]] | None = None
        self._position = (-1, 0)  # (segment, offset) of the open stream's next batch

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of `step`: the same whether or not the run was resumed before it."""
        segment, offset = divmod(step, self.segment_steps)
        if self._stream is None or (segment, offset) != self._position:
            self._stream = segment_batches(self.corpus, self.config, segment)
            # A run saved mid-segment (run(steps) ends with a checkpoint) replays the
            # segment's stream up to its step: cheap next to training, and exact.
            for _ in range(offset):
                next(self._stream)
        self._position = (segment, offset + 1)
        return next(self._stream)

    def param_groups(self) -> list[ParamGroup]:
        """One group: the whole network learns at one rate."""
        return [ParamGroup("net", list(self.model.parameters()), self.config.lr)]

    def stage(self, step: int) -> tuple[str, float]:
        """A single stage."""
        return "train", step / max(1, self.total_steps)

    def lr_factor(self, stage: str, fraction: float) -> float:
        """Exponential decay to `lr_final_ratio`."""
        return float(self.config.lr_final_ratio**fraction)

    def trained_groups(self, stage: str) -> set[str]:
        """Every weight enters the moving average."""
        return {"net"}

    def before_step(
        self, step: int, stage: str, rng: np.random.Generator, gen: torch.Generator
    ) -> None:
        """Nothing outside the loss."""

    def loss(
        self, step: int, stage: str, rng: np.random.Generator, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """L1 in units of the corpus' motion scale (so the rate does not depend on the units)."""
        x, y = self.batch(step)
        pred = self.model(torch.from_numpy(x).to(self.device))
        target = torch.from_numpy(y).to(self.device)
        l1 = (pred - target).abs().mean() / self.model.motion_scale
        return l1, {"l1": float(l1.detach())}

    def evaluate(self, limit: int) -> dict[str, float]:
        """Validation-split metrics of the current weights."""
        try:
            return validate(self.model, self.corpus, self.config, limit)
        finally:
            self.model.train()

    def config_dict(self) -> dict[str, Any]:
        """The config as stored in checkpoints."""
        return self.config.to_dict()

    def same_config(self, stored: dict[str, Any]) -> bool:
        """Through from_dict, so a setting added later with a default still matches."""
        try:
            return Audio2MouthConfig.from_dict(stored) == self.config
        except SharedModelError:
            return False

    def checkpoint_meta(self) -> dict[str, Any]:
        """The corpus fact the network's shape depends on."""
        return {"feature_dim": int(self.model.feature_mean.numel())}


class Audio2MouthRun(Trainer):
    """The trainer shell over the recipe; resumes from `workdir`'s checkpoint if present."""

    def __init__(
        self,
        corpus: CorpusSource,
        workdir: Path,
        config: Audio2MouthConfig,
        device: torch.device | None = None,
    ) -> None:
        norm = measure(corpus, config)

        def build(dev: torch.device) -> Audio2MouthRecipe:
            return Audio2MouthRecipe(corpus, config, norm, dev)

        super().__init__(build, workdir, config.seed, device)
        self.recipe: Audio2MouthRecipe = self.recipe
        self.model: Audio2Mouth = self.recipe.model
        self.config = config


# -- the kind ---------------------------------------------------------------------------------


class Audio2MouthKind:
    """The audio2mouth kind: a generic model any family may use to drive a mouth."""

    name = NAME
    family = ""
    description = "audio features -> mouth landmark motion (tiny 1-D conv net)"

    def default_config(self) -> dict[str, Any]:
        """The defaults: a few thousand weights, 60 steps."""
        return Audio2MouthConfig().to_dict()

    def config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults with `overrides` applied and validated."""
        return Audio2MouthConfig.from_dict({**self.default_config(), **overrides}).to_dict()

    def open_training(
        self, corpus: CorpusSource, workdir: Path, config: dict[str, Any], options: TrainOptions
    ) -> Audio2MouthRun:
        """A run over the corpus; the segment length is the config's (it orders the data)."""
        return Audio2MouthRun(corpus, Path(workdir), Audio2MouthConfig.from_dict(config))

    def export(self, run: TrainingRun, out_dir: Path) -> dict[str, float]:
        """The averaged weights and their description; validation metrics of those weights."""
        if not isinstance(run, Audio2MouthRun):
            raise SharedModelError("invalid_run", f"{NAME} cannot export a {type(run).__name__}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with run.ema.applied():
            metrics = validate(run.model, run.recipe.corpus, run.config, run.config.eval_windows)
            state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        run.model.train()
        torch.save(state, out_dir / WEIGHTS)
        description = {
            "kind": NAME,
            "format": EXPORT_FORMAT,
            "config": run.config.to_dict(),
            "feature_dim": int(state["feature_mean"].numel()),
            "mouth_points": [int(p) for p in mouth_layout()[0]],
            "coords": run.config.coords,
            "metrics": metrics,
            "training": run.summary(),
        }
        (out_dir / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2))
        return metrics

    def load(self, export_dir: Path) -> Audio2Mouth:
        """The exported network on the CPU in eval mode; SharedModelError("invalid_export")."""
        path = Path(export_dir) / DESCRIPTION_FILE
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SharedModelError("invalid_export", f"{path} cannot be read: {exc}") from exc
        if info.get("kind") != NAME or info.get("format") != EXPORT_FORMAT:
            raise SharedModelError("invalid_export", f"{export_dir} is not a {NAME} export")
        config = Audio2MouthConfig.from_dict(info["config"])
        net = Audio2Mouth(int(info["feature_dim"]), config.window, config.coords, config.hidden)
        state = torch.load(Path(export_dir) / WEIGHTS, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return net.eval()


KIND = Audio2MouthKind()
_CONTRACT: SharedModelKind = KIND  # mypy checks the kind against the contract here
