"""Render-time controls: drive a trained avatar with any audio, pose, eye and background choice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from talkinghead.components.compositing import over_background, to_rgba8
from talkinghead.data.frames import TrainingData
from talkinghead.families.contract import frames_for
from talkinghead.families.radnerf.model import Conditions, RadNerf
from talkinghead.rendering.controls import (
    AvatarAssets,
    EyeMode,
    PoseMode,
    eye_track,
    frame_batches,
    pose_track,
)

__all__ = ["AvatarAssets", "assets_of", "drive", "eye_track", "pose_track", "speech_features"]


def assets_of(data: TrainingData) -> AvatarAssets:
    """Assets of a training dataset (train frames only)."""
    ids = [int(i) for i in data.train_ids]
    return AvatarAssets(
        K=data.K.copy(),
        size=data.size,
        background=data.background().copy(),
        poses=np.stack([data.pose(i) for i in ids]).astype(np.float32),
        eyes=np.array([data.eye(i) for i in ids], np.float32),
    )


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
    bg = assets.background if background is None else background
    if bg.shape != (assets.size, assets.size, 3):
        raise ValueError(f"background must be {assets.size}x{assets.size} RGB, got {bg.shape}")
    K = torch.from_numpy(assets.K)
    model.eval()
    k = model.config.attention_window
    context = model.config.audio_window // 2
    for b in frame_batches(assets, features, k, pose, eyes, batch, context):
        cond = Conditions(
            torch.from_numpy(b.poses), torch.from_numpy(b.audio), torch.from_numpy(b.eyes)
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
    n = frames_for(len(wave16k), fps=fps)
    return encoder.encode(wave16k, n, fps)
