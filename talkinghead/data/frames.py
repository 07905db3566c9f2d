"""A dataset at the training resolution: frames decoded on demand through a bounded cache."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from talkinghead.preprocess.audio import DEFAULT_CONTEXT
from talkinghead.preprocess.features import LEFT_EYE, RIGHT_EYE, mouth_openness
from talkinghead.preprocess.manifest import DatasetReader
from talkinghead.rendering.controls import audio_stack

LABEL_HEAD = 1  # semantic label values: see docs/dataset.md
_EYE_POINTS = np.array(
    sorted(
        {RIGHT_EYE[0], RIGHT_EYE[1], LEFT_EYE[0], LEFT_EYE[1]}
        | {i for pair in RIGHT_EYE[2] + LEFT_EYE[2] for i in pair}
    ),
    dtype=np.int64,
)


@dataclass(frozen=True)
class Frame:
    """One frame at the training resolution."""

    index: int
    rgb: np.ndarray  # (S, S, 3) uint8
    labels: np.ndarray  # (S, S) uint8


class TrainingData:
    """The dataset resized to `resolution`; per-frame geometry scaled to match."""

    def __init__(self, root: Path, resolution: int, cache_frames: int = 64) -> None:
        self.reader = DatasetReader(Path(root), check_frames=False)
        m = self.reader.manifest
        self.size = resolution
        self.scale = resolution / m.size
        self.K = self.reader.intrinsics.astype(np.float32).copy()
        self.K[:2] *= self.scale
        self.context = int(m.audio.get("context", DEFAULT_CONTEXT))
        self.feature_dim = int(m.audio["dim"])
        self.train_ids = np.asarray(self.reader.split("train"), dtype=np.int64)
        self.val_ids = np.asarray(self.reader.split("val"), dtype=np.int64)
        if len(self.train_ids) == 0:
            raise ValueError("the dataset has no valid training frame")
        self._cache: OrderedDict[int, Frame] = OrderedDict()
        self._cache_frames = cache_frames
        self._background: np.ndarray | None = None
        self._weights: np.ndarray | None = None

    def __len__(self) -> int:
        """Number of frames (train and val)."""
        return len(self.reader)

    # -- images -----------------------------------------------------------------------
    def frame(self, index: int) -> Frame:
        """Frame `index` at the training resolution (LRU cached: memory is bounded)."""
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        rgb, labels = self.reader.frame(index), self.reader.labels(index)
        if rgb.shape[0] != self.size:
            rgb = cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        frame = Frame(index, rgb, labels)
        self._cache[index] = frame
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return frame

    def background(self) -> np.ndarray:
        """Background plate (S, S, 3) uint8 at the training resolution."""
        if self._background is None:
            bg = self.reader.background()
            if bg.shape[0] != self.size:
                bg = cv2.resize(bg, (self.size, self.size), interpolation=cv2.INTER_AREA)
            self._background = bg
        return self._background

    def headless(self, frame: Frame) -> np.ndarray:
        """The frame with the head replaced by the background plate: what lies behind the head."""
        out = frame.rgb.copy()
        head = frame.labels == LABEL_HEAD
        out[head] = self.background()[head]
        return out

    # -- per-frame geometry and conditions ----------------------------------------------
    def pose(self, index: int) -> np.ndarray:
        """(4, 4) camera-from-head pose."""
        return np.asarray(self.reader.poses[index], dtype=np.float32)

    def eye(self, index: int) -> float:
        """Eye aspect ratio."""
        return float(self.reader.array("eye")[index])

    def audio(self, index: int, k: int) -> np.ndarray:
        """(k, 2*context, D) audio windows around frame `index`."""
        return audio_stack(self.reader.audio_features, index, k, self.context)

    def box(self, name: str, index: int) -> np.ndarray:
        """`face_bbox` or `lips_bbox` (x0, y0, x1, y1) at the training resolution."""
        return np.asarray(self.reader.array(name)[index], dtype=np.float32) * self.scale

    def landmarks(self, index: int) -> np.ndarray:
        """(478, 3) landmarks at the training resolution."""
        return np.asarray(self.reader.landmarks[index], dtype=np.float32) * self.scale

    def eye_box(self, index: int, margin: float = 0.35) -> np.ndarray:
        """Box around both eyes and brows, grown by `margin` of its height."""
        pts = self.landmarks(index)[_EYE_POINTS, :2]
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        m = margin * (y1 - y0)
        return np.array([x0 - m, y0 - m, x1 + m, y1 + m], np.float32)

    def mouth_openness(self, index: int) -> float:
        """Mouth openness measured by the tracker on the source frame (the truth for eval)."""
        return float(mouth_openness(np.asarray(self.reader.landmarks[index])))

    # -- statistics the model keeps -----------------------------------------------------
    def mean_translation(self) -> np.ndarray:
        """Mean head translation over the training frames."""
        return np.asarray(self.reader.poses[self.train_ids][:, :3, 3], np.float64).mean(0)

    def sampling_weights(self, rare_eye_boost: float = 3.0) -> np.ndarray:
        """Probabilities of drawing each training frame: blinks are rare, so frames whose eye
        ratio is in the lowest decile are drawn `rare_eye_boost` times as often."""
        if self._weights is None:
            eye = np.asarray(self.reader.array("eye")[self.train_ids], np.float64)
            finite = np.isfinite(eye)
            w = np.ones(len(eye))
            if finite.sum() >= 10:
                w[finite & (eye <= np.percentile(eye[finite], 10))] = rare_eye_boost
            self._weights = w / w.sum()
        return self._weights

    def eye_scale(self) -> float:
        """1 / median eye ratio, so the eye input is about 1 when open."""
        eye = np.asarray(self.reader.array("eye")[self.train_ids], np.float64)
        med = float(np.median(eye[np.isfinite(eye)])) if np.isfinite(eye).any() else 0.3
        return 1.0 / max(med, 1e-3)
