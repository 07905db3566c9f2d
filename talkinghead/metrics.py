"""Image and lip-sync metrics for rendered frames: PSNR, SSIM, landmark distance, openness proxy.

Everything works on numpy arrays: RGB frames are uint8 (H, W, 3) in 0..255 or float in 0..1,
landmarks are face-mesh points (478, 3) in pixel units (see `talkinghead.preprocess.landmarks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType

import cv2
import numpy as np

from talkinghead.preprocess.features import OUTER_LIPS, mouth_openness
from talkinghead.preprocess.landmarks import N_LANDMARKS, FaceMeshDetector

# Inner lip contour (upper then lower, corner to corner), mediapipe face-mesh indices; it
# holds the INNER_LIPS pairs of `features`, so LMD sees the same gap that openness measures.
INNER_LIP_CONTOUR = np.array(
    [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95],
    dtype=np.int64,
)
MOUTH_POINTS = np.concatenate([OUTER_LIPS, INNER_LIP_CONTOUR])

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # 2 * int(3.5 * sigma + 0.5) + 1: the window skimage uses for sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

PointsSeq = np.ndarray | Sequence[np.ndarray | None]


# --- pixels ------------------------------------------------------------------------------------


def _unit_float(image: np.ndarray) -> np.ndarray:
    """An image as float64 in 0..1 (uint8 is divided by 255, floats are taken as already 0..1)."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"expected uint8 or float images, got {arr.dtype}")
    return arr.astype(np.float64)


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    """Raise unless the two images have the same shape."""
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"shape mismatch: {np.shape(pred)} vs {np.shape(target)}")


def _squared_error(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None
) -> tuple[float, int]:
    """Sum of squared errors on the 0..1 scale and the number of values summed."""
    _check_pair(pred, target)
    diff = _unit_float(pred) - _unit_float(target)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != diff.shape[:2]:
            raise ValueError(f"mask shape {m.shape} does not match image {diff.shape[:2]}")
        diff = diff[m]  # (K, C) or (K,): only the masked pixels, every channel
    return float(np.sum(diff * diff)), int(diff.size)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error on the 0..1 scale (inf for 0)."""
    return math.inf if mse <= 0.0 else -10.0 * math.log10(mse)


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical), optionally over masked pixels."""
    sse, count = _squared_error(pred, target, mask)
    if count == 0:
        raise ValueError("empty mask: no pixels to compare")
    return psnr_from_mse(sse / count)


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004; Gaussian 11 x 11, sigma 1.5), over channels."""
    _check_pair(pred, target)
    h, w = np.shape(pred)[:2]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW} px on each side, got {h}x{w}")
    if np.asarray(pred).dtype == np.uint8 and np.asarray(target).dtype == np.uint8:
        data_range = 255.0
        x = np.asarray(pred, dtype=np.float64)
        y = np.asarray(target, dtype=np.float64)
    else:  # a float render against a uint8 frame (or two floats) is compared on 0..1
        data_range = 1.0
        x, y = _unit_float(pred), _unit_float(target)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        # cv2 blurs every channel at once; the border mode does not matter since the border
        # is cropped below, as skimage does.
        k = (SSIM_WINDOW, SSIM_WINDOW)
        return np.asarray(cv2.GaussianBlur(a, k, SSIM_SIGMA, sigmaY=SSIM_SIGMA))

    ux, uy = blur(x), blur(y)
    # Population (not sample) covariances, as in the paper (use_sample_covariance=False).
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (SSIM_WINDOW - 1) // 2  # only pixels whose whole window lies inside the image
    return float(s[pad : h - pad, pad : w - pad].mean())


# --- landmarks ---------------------------------------------------------------------------------


class FaceMeter:
    """Face-mesh landmarks and mouth openness measured on rendered (often small) frames.

    In video mode (the default) feed one clip's frames in order and call `reset` between
    clips: mediapipe then places each frame's mesh from the previous frame's landmarks.
    """

    def __init__(
        self,
        min_side: int = 256,
        video_mode: bool = True,
        min_detection_confidence: float = 0.5,
    ) -> None:
        # Measured on the synthetic head cropped like the dataset (96-128 px, sharp or blurred):
        # the face is found on every frame either way, but upscaling to 256 px cuts the mouth
        # landmark error by 15-25 % and video mode by a further 3-15 %, since its mesh is placed
        # from the last landmarks instead of a jittery per-frame detection box. Landmarks are
        # still computed from each frame's own pixels (this mesh graph does no smoothing).
        self.min_side = int(min_side)
        self.video_mode = video_mode
        self.min_detection_confidence = min_detection_confidence
        self._detector = self._make_detector()

    def _make_detector(self) -> FaceMeshDetector:
        """A fresh mediapipe face mesh with this meter's settings."""
        return FaceMeshDetector(
            max_faces=2,  # two, so that the largest can be chosen over a confident small one
            video_mode=self.video_mode,
            min_detection_confidence=self.min_detection_confidence,
        )

    def reset(self) -> None:
        """Forget the previous frames (start of another clip)."""
        self._detector.close()
        self._detector = self._make_detector()

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """The largest face's (478, 3) points in the input frame's pixels, or None if none."""
        frame = np.asarray(rgb)
        if frame.dtype != np.uint8:
            frame = np.clip(np.rint(_unit_float(frame) * 255.0), 0, 255).astype(np.uint8)
        h, w = frame.shape[:2]
        # Mediapipe places its mesh less precisely on faces few pixels wide (and may miss
        # them); an upscaled copy measures better, and the points scale back exactly.
        scale = max(1.0, self.min_side / min(h, w))
        if scale > 1.0:
            size = (round(w * scale), round(h * scale))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC)
        faces = self._detector.detect(frame)
        if not faces:
            return None
        sx, sy = frame.shape[1] / w, frame.shape[0] / h
        # z is mediapipe z x image width, so it scales with x.
        return faces[0].points / np.array([sx, sy, sx], dtype=np.float32)

    def openness(self, rgb: np.ndarray) -> float:
        """Mouth openness (`features.mouth_openness`) of the largest face, NaN when none."""
        points = self.landmarks(rgb)
        return math.nan if points is None else float(mouth_openness(points))

    def close(self) -> None:
        """Release the mediapipe graph."""
        self._detector.close()

    def __enter__(self) -> FaceMeter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stack_points(points: PointsSeq) -> np.ndarray:
    """Frames of landmarks as one (T, 478, D) float64 array, NaN for missing (None) frames."""
    if isinstance(points, np.ndarray) and points.dtype != object:
        arr = points.astype(np.float64)
        return arr[None] if arr.ndim == 2 else arr  # a single frame counts as one
    frames = list(points)
    dims = {np.shape(p)[-1] for p in frames if p is not None}
    dim = dims.pop() if len(dims) == 1 else 2
    out = np.full((len(frames), N_LANDMARKS, dim), np.nan)
    for i, p in enumerate(frames):
        if p is not None:
            out[i] = np.asarray(p, dtype=np.float64)[:, :dim]
    return out


def landmark_distance(
    pred_points: PointsSeq, true_points: PointsSeq, indices: np.ndarray = MOUTH_POINTS
) -> float:
    """LMD: mean 2D distance in pixels over the given landmarks and frames (NaN/None skipped)."""
    pred = _stack_points(pred_points)[..., indices, :2]  # (T, K, 2)
    true = _stack_points(true_points)[..., indices, :2]
    if pred.shape != true.shape:
        raise ValueError(f"landmark shape mismatch: {pred.shape} vs {true.shape}")
    # A frame counts only when both sides have every landmark: a half-measured mouth would
    # bias the mean towards the points that happened to be found.
    ok = np.isfinite(pred).all(axis=(1, 2)) & np.isfinite(true).all(axis=(1, 2))
    if not ok.any():
        return math.nan
    return float(np.linalg.norm(pred[ok] - true[ok], axis=-1).mean())


# --- lip sync ----------------------------------------------------------------------------------


def pearson(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> float:
    """Pearson correlation over pairs where both are finite; NaN with < 3 pairs or no variance."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {x.size} vs {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return math.nan
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if denom <= 0.0:
        return math.nan
    return float(np.clip(np.dot(x, y) / denom, -1.0, 1.0))


def lipsync_proxy(
    rendered_openness: np.ndarray | Sequence[float], truth_openness: np.ndarray | Sequence[float]
) -> float:
    """Pearson between mouth openness measured on rendered frames and the frames' true openness.

    Control: the caller renders the same frames again with the audio features reordered by
    `shuffled_order` (every frame gets audio from far away in time), measures openness on
    that render and computes this number against the same truth. A renderer that follows the
    audio scores high on the real audio and near 0 on the shuffled one; a renderer that
    copies the mouth from the pose, frame index or appearance code keeps its score under the
    shuffle, which the control exposes.
    """
    return pearson(rendered_openness, truth_openness)


def shuffled_order(n: int, seed: int, min_shift: int = 8) -> np.ndarray:
    """A random permutation of range(n) that moves every index at least `min_shift` places.

    The shift is capped at n // 2, the most every index can move at once.
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    shift = min(int(min_shift), n // 2)
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    perm = rng.permutation(n)
    # Repair by swaps: a bad position i takes the value of a random j such that both
    # positions end up far enough from their values; this keeps the permutation uniform-ish
    # instead of a fixed cyclic shift, which would keep the audio's local time order.
    for _ in range(100):
        bad = np.flatnonzero(np.abs(perm - idx) < shift)
        if bad.size == 0:
            return perm
        for i in rng.permutation(bad):
            if abs(perm[i] - i) >= shift:
                continue  # fixed by an earlier swap
            ok = (np.abs(perm - i) >= shift) & (np.abs(perm[i] - idx) >= shift)
            candidates = np.flatnonzero(ok)
            if candidates.size:
                j = rng.choice(candidates)
                perm[i], perm[j] = perm[j], perm[i]
    # Repair did not converge (tiny n): a random cyclic shift always satisfies the bound.
    k = int(rng.integers(shift, n - shift + 1))
    return (idx + k) % n


# --- accumulation ------------------------------------------------------------------------------


class FrameScores:
    """Streaming per-clip scores: add one (prediction, truth) frame pair at a time."""

    def __init__(self, indices: np.ndarray = MOUTH_POINTS) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.frames = 0
        self._psnr_sum = 0.0
        self._sse = 0.0  # squared error on the 0..1 scale, over all frames
        self._values = 0
        self._ssim_sum = 0.0
        self._lmd_sum = 0.0  # per-frame LMDs; every frame has the same number of points
        self._lmd_frames = 0

    def add(
        self,
        pred_rgb: np.ndarray,
        true_rgb: np.ndarray,
        pred_points: np.ndarray | None = None,
        true_points: np.ndarray | None = None,
    ) -> None:
        """Score one frame; landmarks may be None (face not found), then LMD skips the frame."""
        sse, count = _squared_error(pred_rgb, true_rgb)
        self.frames += 1
        self._psnr_sum += psnr_from_mse(sse / count)
        self._sse += sse
        self._values += count
        self._ssim_sum += ssim(pred_rgb, true_rgb)
        if pred_points is not None and true_points is not None:
            d = landmark_distance([pred_points], [true_points], self.indices)
            if not math.isnan(d):
                self._lmd_sum += d
                self._lmd_frames += 1

    def summary(self) -> dict[str, float | int]:
        """psnr_frame_mean (mean of frame dB), psnr_pooled (total MSE), ssim, lmd and counts."""
        n = self.frames
        return {
            "frames": n,
            "psnr_frame_mean": self._psnr_sum / n if n else math.nan,
            "psnr_pooled": psnr_from_mse(self._sse / self._values) if self._values else math.nan,
            "ssim": self._ssim_sum / n if n else math.nan,
            "lmd": self._lmd_sum / self._lmd_frames if self._lmd_frames else math.nan,
            "lmd_frames": self._lmd_frames,
        }
