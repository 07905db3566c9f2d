"""Ray batches for the three training stages, drawn from a per-step random generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talkinghead.data.frames import TrainingData


@dataclass
class RayBatch:
    """Rays of a few frames with their targets and the frames' conditions."""

    frames: np.ndarray  # (B,) dataset frame indices
    pixels: np.ndarray  # (R, 2) int64 x, y
    ray_frame: np.ndarray  # (R,) index into `frames`
    target: np.ndarray  # (R, 3) float32 in [0, 1]
    behind: np.ndarray  # (R, 3) what lies behind the rendered layer (headless frame or plate)
    in_face: np.ndarray  # (R,) bool: inside the face box (audio may act there)
    in_eyes: np.ndarray  # (R,) bool: inside the eye box (the eye ratio may act there)
    poses: np.ndarray  # (B, 4, 4)
    audio: np.ndarray  # (B, K, W, D)
    eye: np.ndarray  # (B,)
    patch: int = 0  # > 0: rays are B row-major patches of patch x patch pixels


def _inside(pixels: np.ndarray, box: np.ndarray) -> np.ndarray:
    x, y = pixels[:, 0] + 0.5, pixels[:, 1] + 0.5
    return (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])


def _grow(box: np.ndarray, frac: float, size: int) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    grown = box + np.array([-w, -h, w, h], np.float32) * frac
    return np.clip(grown, 0, size)


def _draw_frames(data: TrainingData, rng: np.random.Generator, n: int) -> np.ndarray:
    ids = data.train_ids
    return rng.choice(ids, size=n, replace=len(ids) < n, p=data.sampling_weights())


def _in_box(rng: np.random.Generator, box: np.ndarray, n: int, size: int) -> np.ndarray:
    x = rng.uniform(box[0], box[2], n)
    y = rng.uniform(box[1], box[3], n)
    return np.stack([x, y], 1).astype(np.int64).clip(0, size - 1)


def _assemble(
    data: TrainingData,
    frames: np.ndarray,
    pixels: list[np.ndarray],
    behind: str,
    k: int,
    patch: int,
) -> RayBatch:
    ray_frame = np.concatenate([np.full(len(p), i) for i, p in enumerate(pixels)])
    target, back, face, eyes = [], [], [], []
    for f, px in zip(frames, pixels, strict=True):
        frame = data.frame(int(f))
        source = data.headless(frame) if behind == "headless" else data.background()
        target.append(frame.rgb[px[:, 1], px[:, 0]])
        back.append(source[px[:, 1], px[:, 0]])
        face.append(_inside(px, data.box("face_bbox", int(f))))
        eyes.append(_inside(px, data.eye_box(int(f))))
    return RayBatch(
        frames=frames,
        pixels=np.concatenate(pixels),
        ray_frame=ray_frame,
        target=np.concatenate(target).astype(np.float32) / 255.0,
        behind=np.concatenate(back).astype(np.float32) / 255.0,
        in_face=np.concatenate(face),
        in_eyes=np.concatenate(eyes),
        poses=np.stack([data.pose(int(f)) for f in frames]),
        audio=np.stack([data.audio(int(f), k) for f in frames]),
        eye=np.array([data.eye(int(f)) for f in frames], np.float32),
        patch=patch,
    )


def sample_rays(
    data: TrainingData,
    rng: np.random.Generator,
    frames: int,
    rays: int,
    face_fraction: float,
    behind: str,
    k: int,
    lips_fraction: float = 0.0,
    eye_fraction: float = 0.0,
) -> RayBatch:
    """`rays` rays over `frames` training frames; shares drawn in the head, lips and eye boxes."""
    ids = _draw_frames(data, rng, frames)
    per = rays // frames
    pixels = []
    s = data.size
    for f in ids:
        regions = (
            (_grow(data.box("face_bbox", int(f)), 0.3, s), int(per * face_fraction)),
            (_grow(data.box("lips_bbox", int(f)), 0.3, s), int(per * lips_fraction)),
            (data.eye_box(int(f)), int(per * eye_fraction)),
        )
        parts = [_in_box(rng, box, n, s) for box, n in regions]
        used = sum(len(p) for p in parts)
        parts.append(rng.integers(0, s, size=(per - used, 2)))
        pixels.append(np.concatenate(parts))
    return _assemble(data, ids, pixels, behind, k, 0)


def sample_lips_patches(
    data: TrainingData, rng: np.random.Generator, frames: int, patch: int, k: int
) -> RayBatch:
    """One patch x patch square around the lips of each of `frames` training frames."""
    ids = _draw_frames(data, rng, frames)
    s, pixels = data.size, []
    offs = np.stack(np.meshgrid(np.arange(patch), np.arange(patch), indexing="xy"), -1)
    for f in ids:
        box = data.box("lips_bbox", int(f))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        jitter = rng.uniform(-0.15, 0.15, 2) * patch
        x0 = int(np.clip(round(cx + jitter[0] - patch / 2), 0, s - patch))
        y0 = int(np.clip(round(cy + jitter[1] - patch / 2), 0, s - patch))
        pixels.append((offs + np.array([x0, y0])).reshape(-1, 2).astype(np.int64))
    return _assemble(data, ids, pixels, "headless", k, patch)
