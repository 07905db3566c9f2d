"""The `meanframe` model: the clip's mean frame, learned in resumable segments.

A running sum of frames is the whole training state, so it exercises the platform's
train-in-segments, checkpoint, export and render path in seconds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talkinghead.media import iter_frames

MAX_SIDE = 256


@dataclass
class StillState:
    """Running sum of frames seen so far: the whole training state."""

    total: np.ndarray | None = None
    count: int = 0

    def to_bytes(self) -> bytes:
        """Serialise as an npz checkpoint."""
        buf = io.BytesIO()
        total = self.total if self.total is not None else np.zeros((0,), np.float64)
        np.savez(buf, total=total, count=np.int64(self.count))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StillState:
        """Load a checkpoint written by `to_bytes`."""
        with np.load(io.BytesIO(data)) as z:
            total = z["total"]
            return cls(total if total.size else None, int(z["count"]))


def train_segment(video: Path, state: StillState, frames: int) -> int:
    """Add up to `frames` more frames to `state`; returns how many were added."""
    added = 0
    for rgb in iter_frames(video, MAX_SIDE, start=state.count, count=frames):
        if state.total is None:
            state.total = np.zeros(rgb.shape, np.float64)
        state.total += rgb
        added += 1
    state.count += added
    return added


def mean_frame(state: StillState) -> np.ndarray:
    """The learned image (uint8 RGB)."""
    if state.total is None or state.count == 0:
        raise ValueError("no frames were seen")
    return np.clip(np.rint(state.total / state.count), 0, 255).astype(np.uint8)
