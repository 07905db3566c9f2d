"""Render-time controls of an avatar: its camera, plate, and the pose and eye tracks to drive.

Pure numpy, so an exported avatar can be driven without the training code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from talkinghead.preprocess.audio import DEFAULT_CONTEXT

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


def rescaled(assets: AvatarAssets, size: int) -> AvatarAssets:
    """The same avatar framed at another resolution: camera scaled, plate resized.

    A radiance field renders at any resolution; only the pixel grid changes.
    """
    if size == assets.size:
        return assets
    import cv2

    K = assets.K.astype(np.float32).copy()
    K[:2] *= size / assets.size
    interpolation = cv2.INTER_AREA if size < assets.size else cv2.INTER_CUBIC
    plate = cv2.resize(assets.background, (size, size), interpolation=interpolation)
    return AvatarAssets(K=K, size=size, background=plate, poses=assets.poses, eyes=assets.eyes)


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


def audio_stack(
    features: np.ndarray, index: int, k: int, context: int = DEFAULT_CONTEXT
) -> np.ndarray:
    """(k, 2*context, D): the windows of frames index-k/2 .. index+k/2-1, edges clamped.

    The attention module smooths over these neighbouring windows. Reads only the rows it
    needs, so it is safe on a memory-mapped feature array of any length.
    """
    n = len(features)
    frames = np.clip(np.arange(index - k // 2, index - k // 2 + k), 0, n - 1)
    rows = np.clip(frames[:, None] + np.arange(-context, context)[None, :], 0, n - 1)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = np.asarray(features[lo:hi], dtype=np.float32)
    return block[rows - lo]


@dataclass(frozen=True)
class FrameBatch:
    """Conditions of frames [start, start + B): what a renderer needs per frame."""

    start: int
    poses: np.ndarray  # (B, 4, 4) float32
    audio: np.ndarray  # (B, K, W, D) float32
    eyes: np.ndarray  # (B,) float32


def frame_batches(
    assets: AvatarAssets,
    features: np.ndarray,
    k: int,
    pose: PoseMode | np.ndarray = "source",
    eyes: EyeMode | np.ndarray = "natural",
    batch: int = 4,
    context: int = DEFAULT_CONTEXT,
) -> Iterator[FrameBatch]:
    """One frame per feature row (25 fps), `batch` at a time, never all in memory.

    `k` windows of 2 x `context` feature rows per frame, as the avatar was trained with.
    """
    n = len(features)
    poses, eye = pose_track(assets, n, pose), eye_track(assets, n, eyes)
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        yield FrameBatch(
            lo,
            poses[lo:hi],
            np.stack([audio_stack(features, i, k, context) for i in range(lo, hi)]),
            eye[lo:hi],
        )
