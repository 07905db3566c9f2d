"""Semantic masks (background, head, neck, torso) and a clean background plate.

No face-parsing weights exist here, so the labels come from mediapipe selfie segmentation (the
person) cut by face-mesh geometry: the face oval, the chin, the jaw width and the head's axis.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

BACKGROUND = 0
HEAD = 1
NECK = 2
TORSO = 3
LABEL_NAMES: dict[int, str] = {BACKGROUND: "background", HEAD: "head", NECK: "neck", TORSO: "torso"}

# Face-mesh landmark indices (mediapipe 478-point topology).
FACE_OVAL = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
]  # fmt: skip
FOREHEAD_TOP = 10
CHIN = 152
JAW_LEFT, JAW_RIGHT = 172, 397  # jaw angles (image left / right for a frontal face)


class PersonSegmenter:
    """Mediapipe selfie segmentation (landscape model, model_selection=1) as a person mask."""

    def __init__(self) -> None:
        """Create the graph (the model ships in the mediapipe wheel)."""
        import mediapipe as mp

        self._seg: Any = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=1)

    def person_mask(self, rgb: np.ndarray) -> np.ndarray:
        """Person probability (H, W) float32 in 0..1 for an RGB uint8 (H, W, 3) image."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got {rgb.shape}")
        result = self._seg.process(np.ascontiguousarray(rgb, dtype=np.uint8))
        mask = result.segmentation_mask
        if mask is None:
            return np.zeros(rgb.shape[:2], dtype=np.float32)
        return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)

    def close(self) -> None:
        """Release the graph."""
        self._seg.close()

    def __enter__(self) -> PersonSegmenter:
        """Context manager entry."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Context manager exit: close."""
        self.close()


def semantic_labels(
    rgb_shape: tuple[int, ...],
    person: np.ndarray,
    points: np.ndarray | None,
    threshold: float = 0.5,
    neck_length: float = 0.5,
    head_width: float = 0.75,
    head_height: float = 1.7,
) -> np.ndarray:
    """Labels (H, W) uint8: 0 background, 1 head (face + hair), 2 neck, 3 torso.

    `person` (H, W) is a 0..1 person mask; `points` (478, 2|3) are face-mesh landmarks in this
    image's pixels (x, y), or None when no face was found (then every person pixel is torso).
    Geometry follows the head's own axis (forehead-top → chin), so it holds under roll:
    head = face-oval polygon, plus person pixels above the jaw-angle line within `head_width` face
    heights of the axis and `head_height` face heights above the chin; neck = remaining person
    pixels from the jaw-angle line down to `neck_length` face heights below the chin, within the
    jaw width; torso = every other person pixel.
    """
    h, w = int(rgb_shape[0]), int(rgb_shape[1])
    if person.shape[:2] != (h, w):
        raise ValueError(f"person mask {person.shape} does not match image {(h, w)}")
    is_person = person >= threshold  # (H, W) bool
    labels = is_person.view(np.uint8) * np.uint8(TORSO)  # (H, W) uint8: 0 or TORSO
    if points is None:
        return labels
    pts = np.asarray(points, dtype=np.float64)[:, :2]  # (478, 2) x, y
    top, chin = pts[FOREHEAD_TOP], pts[CHIN]
    axis = top - chin
    face_h = float(np.linalg.norm(axis))
    if face_h < 2.0:
        return labels
    up = axis / face_h  # unit vector chin → forehead
    side = np.array([-up[1], up[0]])  # perpendicular
    oval_rel = pts[FACE_OVAL] - chin  # (36, 2)
    oval_r = oval_rel @ side
    jaw_s = float(np.mean((pts[[JAW_LEFT, JAW_RIGHT]] - chin) @ up))  # jaw-angle height
    r_min, r_max = float(oval_r.min()), float(oval_r.max())
    centre_r = 0.5 * (r_min + r_max)
    jaw_half = 0.5 * (r_max - r_min)

    # Both zones are rotated rectangles: only the pixels of their (and the oval's) bounding box
    # can change label, so the per-pixel geometry is evaluated there alone.
    corners = [
        chin + s_ * up + (centre_r + r_) * side
        for s_, half in (
            (jaw_s, head_width * face_h),
            (head_height * face_h, head_width * face_h),
            (jaw_s, jaw_half),
            (-neck_length * face_h, jaw_half),
        )
        for r_ in (-half, half)
    ]
    box = np.concatenate([np.array(corners), pts[FACE_OVAL]])  # (N, 2)
    x0, y0 = np.clip(np.floor(box.min(axis=0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(box.max(axis=0)).astype(int) + 2, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return labels
    # Same float32 arithmetic as a full (H, W) grid, restricted to the box by broadcasting.
    xs = np.arange(x0, x1, dtype=np.float32) - np.float32(chin[0])  # (W',)
    ys = np.arange(y0, y1, dtype=np.float32) - np.float32(chin[1])  # (H',)
    s = (xs * np.float32(up[0]))[None, :] + (ys * np.float32(up[1]))[:, None]  # above chin (px)
    r = (xs * np.float32(side[0]))[None, :] + (ys * np.float32(side[1]))[:, None]  # lateral (px)
    lateral = np.abs(r - centre_r)

    oval = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(oval, [np.round(pts[FACE_OVAL]).astype(np.int32)], (1,))
    person_box = is_person[y0:y1, x0:x1]
    head_zone = (s >= jaw_s) & (s <= head_height * face_h) & (lateral <= head_width * face_h)
    head = (oval[y0:y1, x0:x1] > 0) | (person_box & head_zone)
    neck_zone = (s < jaw_s) & (s >= -neck_length * face_h) & (lateral <= jaw_half)
    neck = person_box & neck_zone & ~head
    labels_box = labels[y0:y1, x0:x1]  # a view: writes go to `labels`
    labels_box[head] = HEAD
    labels_box[neck] = NECK
    return labels


def mask_coverage(labels: np.ndarray) -> dict[str, float]:
    """Fraction of pixels per label name for one (H, W) label image or a stack (N, H, W)."""
    arr = np.asarray(labels)
    total = max(1, arr.size)
    # One comparison per label: several times faster than bincount, which widens to int64.
    counts = {value: np.count_nonzero(arr == value) for value in LABEL_NAMES}
    return {name: float(counts[value]) / total for value, name in LABEL_NAMES.items()}


class BackgroundPlate:
    """Streaming background estimate: per-pixel mean over frames where the pixel is background.

    Memory is O(H x W) whatever the number of frames. A pixel counts as background in a frame
    when its person probability is below `threshold` after dilating the person by `margin` pixels
    (halo guard). Pixels never seen as background are filled by Telea inpainting.
    """

    def __init__(self, shape: tuple[int, ...], threshold: float = 0.2, margin: int = -1) -> None:
        """Accumulators for an (H, W[, 3]) image; margin -1 means 1% of the longer side (≥ 2 px)."""
        self.h, self.w = int(shape[0]), int(shape[1])
        self.threshold = threshold
        self.margin = max(2, round(0.01 * max(self.h, self.w))) if margin < 0 else margin
        # float64 sums of uint8 values are exact far beyond any clip length; cv2.accumulate with
        # a mask adds in place without per-frame temporaries.
        self._sum = np.zeros((self.h, self.w, 3), dtype=np.float64)  # (H, W, 3)
        self._count = np.zeros((self.h, self.w), dtype=np.float64)  # (H, W)
        self._ones = np.ones((self.h, self.w), dtype=np.uint8)
        k = 2 * self.margin + 1
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        self.frames = 0

    def add(self, rgb: np.ndarray, person_mask: np.ndarray) -> None:
        """Accumulate one RGB (H, W, 3) frame where its person mask (H, W) says background."""
        if rgb.shape[:2] != (self.h, self.w) or person_mask.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"frame {rgb.shape} / mask {person_mask.shape} != plate {(self.h, self.w)}"
            )
        mask = np.asarray(person_mask, dtype=np.float32)
        fg: np.ndarray = np.greater_equal(mask, np.float32(self.threshold)).view(np.uint8)
        if self.margin > 0:
            fg = cv2.dilate(fg, self._kernel)
        bg = np.equal(fg, 0).view(np.uint8)  # (H, W) 1 = background
        image = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(self.h, self.w, 3)
        cv2.accumulate(image, self._sum, mask=bg)
        cv2.accumulate(self._ones, self._count, mask=bg)
        self.frames += 1

    def coverage(self) -> float:
        """Fraction of pixels seen as background at least once."""
        return float(np.count_nonzero(self._count)) / float(self.h * self.w)

    def result(self, inpaint_radius: int = 5) -> tuple[np.ndarray, float]:
        """(plate RGB uint8 (H, W, 3), coverage) with never-seen pixels inpainted (Telea)."""
        seen = self._count > 0
        plate: np.ndarray = np.zeros((self.h, self.w, 3), dtype=np.uint8)
        plate[seen] = np.clip(
            np.round(self._sum[seen] / self._count[seen][:, None]), 0, 255
        ).astype(np.uint8)
        coverage = self.coverage()
        if 0.0 < coverage < 1.0:
            hole = (~seen).astype(np.uint8)
            plate = cv2.inpaint(plate, hole, inpaint_radius, cv2.INPAINT_TELEA)
        return plate, coverage
