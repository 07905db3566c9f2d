"""The corpus format (version 1): one utterance per sample, samples in WebDataset tar shards.

A corpus directory (or object-store prefix) holds `corpus.json` (the index: format version,
shards with their sample counts and checksums, identities with their split, statistics) and
`shards/shard-NNNNNN.tar`. Each shard is a plain tar in the WebDataset layout: the members of
one sample share a key (`KEY.json`, `KEY.npz`, `KEY.wav`, `KEY.crops.mp4`, `KEY.masks.npz`)
and are stored next to each other, so a reader streams a shard front to back and holds one
sample at a time. docs/corpus.md describes every field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1
FPS = 25
SAMPLE_RATE = 16000
CROP_SIZE = 256
N_LANDMARKS = 478

# Member suffixes of one sample in a shard (after `KEY.`), in the order they are written.
MEMBERS = ("json", "npz", "wav", "crops.mp4", "masks.npz")

# Arrays in `KEY.npz`; T = frames at FPS. Shapes use T and D (audio feature size).
ARRAYS: dict[str, tuple[str, str]] = {
    "landmarks": ("(T, 478, 3) float32", "camera frame: x, y in source pixels, z relative"),
    "canonical": ("(T, 478, 3) float32", "head frame: pose removed, units of the reference"),
    "pose": ("(T, 6) float32", "yaw, pitch, roll (degrees), tx, ty, tz (camera frame)"),
    "eye_ratio": ("(T,) float32", "eye openness, 0 closed"),
    "mouth_ratio": ("(T,) float32", "inner-lip opening over the outer-eye distance"),
    "face_box": ("(T, 4) float32", "x0, y0, x1, y1 in source pixels"),
    "lips_box": ("(T, 4) float32", "x0, y0, x1, y1 in source pixels"),
    "crop_box": ("(4,) float32", "the fixed square crop of the clip, in source pixels"),
    "audio_features": ("(T, D) float32", "one row per frame, from the avatar encoders"),
}


@dataclass
class ClipMeta:
    """`KEY.json`: who speaks, where the clip came from, and how it was processed."""

    key: str  # "<source sha256, 16 hex>-<utterance index, 3 digits>"; unique in a corpus
    identity: str  # the person; train/validation split is by identity
    speaker: str  # the voice (for real footage the same as identity unless the operator says)
    language: str  # BCP-47-ish tag as given by the operator ("en", "de", "und" if unknown)
    licence: str  # the licence string the operator gave for the source
    source: str  # the source path or URL as listed
    source_sha256: str  # content hash of the whole source file
    start_s: float  # where the utterance starts in the source
    duration_s: float
    num_frames: int
    fps: int = FPS
    source_size: tuple[int, int] = (0, 0)  # width, height of the source frames
    crop_size: int = CROP_SIZE
    audio_encoder: str = "logmel"
    feature_dim: int = 0
    av_offset_frames: float = 0.0  # measured audio-to-mouth lag (positive: audio late)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. synthetic truth summary

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["source_size"] = list(self.source_size)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClipMeta:
        """Parse `KEY.json`, ignoring fields a newer minor writer added."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["source_size"] = tuple(known.get("source_size", (0, 0)))
        return cls(**known)


@dataclass
class ClipRecord:
    """One utterance, whole: what the builder produces and a shard sample holds."""

    meta: ClipMeta
    arrays: dict[str, np.ndarray]  # the ARRAYS above
    audio: np.ndarray  # (N,) int16 at SAMPLE_RATE
    crops: np.ndarray  # (T, CROP_SIZE, CROP_SIZE, 3) uint8 RGB face-and-shoulders crops
    masks: np.ndarray  # (T, CROP_SIZE, CROP_SIZE) uint8 person mask, 0..255

    def check(self) -> None:
        """Raise ValueError if shapes disagree with the meta (a writer never stores a bad one)."""
        t = self.meta.num_frames
        missing = set(ARRAYS) - set(self.arrays)
        if missing:
            raise ValueError(f"clip {self.meta.key} lacks arrays {sorted(missing)}")
        for name, arr in self.arrays.items():
            if name != "crop_box" and arr.shape[0] != t:
                raise ValueError(f"clip {self.meta.key}: {name} has {arr.shape[0]} rows, not {t}")
        if self.crops.shape != (t, self.meta.crop_size, self.meta.crop_size, 3):
            raise ValueError(f"clip {self.meta.key}: crops shape {self.crops.shape}")
        if self.masks.shape != (t, self.meta.crop_size, self.meta.crop_size):
            raise ValueError(f"clip {self.meta.key}: masks shape {self.masks.shape}")
        if self.audio.dtype != np.int16 or self.audio.ndim != 1:
            raise ValueError(f"clip {self.meta.key}: audio must be 1-D int16")


# Refusal codes of the builder (a refused source or segment is reported, never fatal).
REFUSALS: dict[str, str] = {
    "unreadable_media": "the file is not a decodable video",
    "no_audio": "the video has no audio stream",
    "too_short": "shorter than the minimum utterance length",
    "face_not_found": "no face in most frames",
    "multiple_subjects": "several people and no cut separates them",
    "av_offset": "audio and mouth are out of sync beyond the tolerance",
    "silent": "no speech above the level threshold",
    "duplicate": "the same content is already in the corpus",
}
