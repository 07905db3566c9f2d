"""Render-time controls: drive a trained avatar with any audio, pose, eye and background choice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from talkinghead.data.frames import TrainingData, audio_stack
from talkinghead.models.radnerf import Conditions, RadNerf, over_background, to_rgba8

PoseMode = Literal["static", "source"]
EyeMode = Literal["natural", "open"]


@dataclass(frozen=True)
class AvatarAssets:
    """What rendering needs besides the weights: camera, plate and the source's motion."""

    K: np.ndarray  # (3, 3) camera of a size x size crop
    size: int
    background: np.ndarray  # (size, size, 3) uint8 plate
    poses: np.ndarray  # (N, 4, 4) the training frames' head poses
    eyes: np.ndarray  # (N,) the training frames' eye ratios

    @classmethod
    def from_dataset(cls, data: TrainingData) -> AvatarAssets:
        """Assets of a training dataset (train frames only)."""
        ids = [int(i) for i in data.train_ids]
        return cls(
            K=data.K.copy(),
            size=data.size,
            background=data.background().copy(),
            poses=np.stack([data.pose(i) for i in ids]).astype(np.float32),
            eyes=np.array([data.eye(i) for i in ids], np.float32),
        )


def _bounce(n: int, length: int) -> np.ndarray:
    """Indices 0..length-1 played forwards then backwards, so looping never jumps."""
    if length <= 1:
        return np.zeros(n, np.int64)
    period = 2 * (length - 1)
    t = np.arange(n) % period
    return np.where(t < length, t, period - t).astype(np.int64)


def pose_track(assets: AvatarAssets, n: int, pose: PoseMode | np.ndarray) -> np.ndarray:
    """(n, 4, 4) head poses: one still pose, the source's motion (looped), or given per frame."""
    if isinstance(pose, np.ndarray):
        if pose.shape[1:] != (4, 4) or len(pose) < n:
            raise ValueError(f"need {n} poses of shape (4, 4), got {pose.shape}")
        return pose[:n].astype(np.float32)
    if pose == "static":
        # The training frame whose rotation is closest to the mean: a natural, frontal-ish rest.
        mean = assets.poses[:, :3, :3].mean(axis=0)
        best = int(np.argmin(((assets.poses[:, :3, :3] - mean) ** 2).sum(axis=(1, 2))))
        return np.repeat(assets.poses[best : best + 1], n, axis=0)
    if pose == "source":
        return assets.poses[_bounce(n, len(assets.poses))]
    raise ValueError(f"unknown pose mode {pose!r}")


def eye_track(assets: AvatarAssets, n: int, eyes: EyeMode | np.ndarray) -> np.ndarray:
    """(n,) eye ratios: the source's natural blinks (looped), always open, or given per frame."""
    if isinstance(eyes, np.ndarray):
        if eyes.ndim != 1 or len(eyes) < n:
            raise ValueError(f"need {n} eye ratios, got shape {eyes.shape}")
        return eyes[:n].astype(np.float32)
    if eyes == "natural":
        return assets.eyes[_bounce(n, len(assets.eyes))]
    if eyes == "open":
        return np.full(n, float(np.percentile(assets.eyes, 75)), np.float32)
    raise ValueError(f"unknown eye mode {eyes!r}")


def drive(
    model: RadNerf,
    assets: AvatarAssets,
    features: np.ndarray,
    pose: PoseMode | np.ndarray = "source",
    eyes: EyeMode | np.ndarray = "natural",
    background: np.ndarray | None = None,
    batch: int = 4,
    rgba: bool = False,
) -> Iterator[np.ndarray]:
    """Frames for audio `features` (T, D): RGB over the background, or premultiplied RGBA (uint8).

    One frame per feature row (25 fps), produced `batch` at a time, never all in memory.
    `background` is any (size, size, 3) uint8 image; None means the avatar's own plate.
    """
    n = len(features)
    poses, eye = pose_track(assets, n, pose), eye_track(assets, n, eyes)
    k = model.config.attention_window
    bg = assets.background if background is None else background
    if bg.shape != (assets.size, assets.size, 3):
        raise ValueError(f"background must be {assets.size}x{assets.size} RGB, got {bg.shape}")
    K = torch.from_numpy(assets.K)
    model.eval()
    for lo in range(0, n, batch):
        idx = range(lo, min(n, lo + batch))
        cond = Conditions(
            poses=torch.from_numpy(poses[lo : lo + batch]),
            audio=torch.from_numpy(np.stack([audio_stack(features, i, k) for i in idx])),
            eye=torch.from_numpy(eye[lo : lo + batch]),
        )
        for frame in to_rgba8(model.render_frames(cond, K, assets.size)):
            yield frame if rgba else over_background(frame, bg)


def speech_features(
    wave16k: np.ndarray, audio_spec: dict[str, object], fps: float = 25
) -> np.ndarray:
    """Features of any 16 kHz speech with the avatar's own encoder: (frames, D)."""
    from talkinghead.preprocess.audio import encoder_from_name

    name = str(audio_spec.get("encoder", "logmel"))
    path = audio_spec.get("path")
    encoder = encoder_from_name(name.split(":", 1)[0], Path(str(path)) if path else None)
    n = max(1, round(len(wave16k) / 16000 * fps))
    return encoder.encode(wave16k, n, fps)
