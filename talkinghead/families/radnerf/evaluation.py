"""Held-out evaluation: image quality, mouth landmarks and the lip-sync proxy with its control."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from talkinghead.components.compositing import over_background, to_rgba8
from talkinghead.data.frames import TrainingData
from talkinghead.families.radnerf.model import Conditions, RadNerf
from talkinghead.metrics import FaceMeter, FrameScores, lipsync_proxy, shuffled_order


def frame_conditions(
    data: TrainingData, ids: Sequence[int], k: int, audio_ids: Sequence[int] | None = None
) -> Conditions:
    """Conditions of dataset frames `ids`, optionally driven by the audio of `audio_ids`."""
    audio_ids = ids if audio_ids is None else audio_ids
    return Conditions(
        poses=torch.from_numpy(np.stack([data.pose(i) for i in ids])),
        audio=torch.from_numpy(np.stack([data.audio(i, k) for i in audio_ids])),
        eye=torch.tensor([data.eye(i) for i in ids], dtype=torch.float32),
    )


def render_dataset_frames(
    model: RadNerf,
    data: TrainingData,
    ids: Sequence[int],
    audio_ids: Sequence[int] | None = None,
    batch: int = 4,
) -> Iterator[np.ndarray]:
    """Rendered RGB uint8 frames of `ids` over the background plate, one at a time."""
    k = model.config.attention_window
    K = torch.from_numpy(data.K)
    background = data.background()
    audio_ids = list(ids) if audio_ids is None else list(audio_ids)
    for lo in range(0, len(ids), batch):
        cond = frame_conditions(data, ids[lo : lo + batch], k, audio_ids[lo : lo + batch])
        for rgba in to_rgba8(model.render_frames(cond, K, data.size)):
            yield over_background(rgba, background)


def evaluate(
    model: RadNerf, data: TrainingData, limit: int = 0, seed: int = 0, shuffles: int = 3
) -> dict[str, float]:
    """Scores of the held-out frames; the model should already hold the weights to judge."""
    ids = [int(i) for i in data.val_ids]
    if limit:
        ids = ids[:limit]
    if not ids:
        return {}
    model.eval()
    scores = FrameScores()
    truth = np.array([data.mouth_openness(i) for i in ids])
    rendered: list[float] = []
    with FaceMeter() as pred_meter, FaceMeter() as true_meter:
        for i, image in zip(ids, render_dataset_frames(model, data, ids), strict=True):
            true_rgb = data.frame(i).rgb
            pred_points = pred_meter.landmarks(image)
            scores.add(image, true_rgb, pred_points, true_meter.landmarks(true_rgb))
            rendered.append(_openness(pred_points))
    # The control: the same frames driven by time-shuffled audio. One shuffle of a few dozen
    # frames leaves chance correlations of +-0.2, so the mean over `shuffles` is reported.
    controls = []
    for k in range(shuffles):
        order = shuffled_order(len(ids), seed + k)
        with FaceMeter() as meter:
            frames = render_dataset_frames(model, data, ids, [ids[j] for j in order])
            shuffled = [_openness(meter.landmarks(image)) for image in frames]
        controls.append(lipsync_proxy(np.array(shuffled), truth))
    summary = scores.summary()
    return {
        "psnr": float(summary["psnr_pooled"]),
        "psnr_frame_mean": float(summary["psnr_frame_mean"]),
        "ssim": float(summary["ssim"]),
        "lmd": float(summary["lmd"]),
        "lipsync": lipsync_proxy(np.array(rendered), truth),
        "lipsync_shuffled": float(np.nanmean(controls)) if controls else math.nan,
        "face_found": float(np.mean(np.isfinite(rendered))),
        "frames": float(len(ids)),
    }


def _openness(points: np.ndarray | None) -> float:
    from talkinghead.preprocess.features import mouth_openness

    return math.nan if points is None else float(mouth_openness(points))
