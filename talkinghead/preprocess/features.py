"""Per-frame facial features from face-mesh landmarks: eye and mouth openness, lips and face boxes.

Every function takes points of shape (..., 478, 3) in pixel units (one frame or a sequence)
and keeps the leading shape; NaN points give NaN features.
"""

from __future__ import annotations

import numpy as np

# (outer corner, inner corner, [(upper lid, lower lid) ...]) per eye, mediapipe face-mesh indices.
RIGHT_EYE = (33, 133, ((160, 144), (159, 145), (158, 153)))  # subject's right (image left)
LEFT_EYE = (263, 362, ((387, 373), (386, 374), (385, 380)))
# Inner-lip pairs (upper, lower) across the mouth's middle.
INNER_LIPS = ((82, 87), (13, 14), (312, 317))
OUTER_LIPS = np.array(
    [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185],
    dtype=np.int64,
)
EYE_OUTER = (33, 263)


def _dist(points: np.ndarray, i: int, j: int) -> np.ndarray:
    """3D distance between landmarks i and j: (...,)."""
    p = np.asarray(points, dtype=np.float64)
    return np.linalg.norm(p[..., i, :] - p[..., j, :], axis=-1)


def eye_openness(points: np.ndarray) -> np.ndarray:
    """Eye aspect ratio (mean lid gap / eye width), averaged over both eyes: (...,)."""
    ratios = []
    for outer, inner, lids in (RIGHT_EYE, LEFT_EYE):
        gap = np.mean([_dist(points, u, lo) for u, lo in lids], axis=0)
        ratios.append(gap / _dist(points, outer, inner))
    return (0.5 * (ratios[0] + ratios[1])).astype(np.float32)


def mouth_openness(points: np.ndarray) -> np.ndarray:
    """Mean inner-lip gap normalised by the outer-eye-corner distance (face size): (...,)."""
    gap = np.mean([_dist(points, u, lo) for u, lo in INNER_LIPS], axis=0)
    return (gap / _dist(points, *EYE_OUTER)).astype(np.float32)


def _bbox(points: np.ndarray) -> np.ndarray:
    """x0, y0, x1, y1 of the given points' x, y: (..., 4)."""
    xy = np.asarray(points, dtype=np.float64)[..., :2]  # (..., N, 2)
    return np.concatenate([xy.min(axis=-2), xy.max(axis=-2)], axis=-1).astype(np.float32)


def lips_bbox(points: np.ndarray) -> np.ndarray:
    """Bounding box of the outer lip contour in pixels, x0, y0, x1, y1: (..., 4)."""
    return _bbox(np.asarray(points)[..., OUTER_LIPS, :])


def face_bbox(points: np.ndarray) -> np.ndarray:
    """Bounding box of all face-mesh landmarks in pixels, x0, y0, x1, y1: (..., 4)."""
    return _bbox(points)
