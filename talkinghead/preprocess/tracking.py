"""Main-subject tracking, shot-cut / person-change detection, gap filling and the fixed crop."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from talkinghead.preprocess.landmarks import N_LANDMARKS, BoxGeometry, FaceObservation

# Rigid, expression-stable landmarks (eye corners, nose, forehead, cheekbones) used for the
# identity descriptor: distances between them describe the face's proportions, not its mood.
IDENTITY_POINTS = np.array(
    [33, 133, 362, 263, 1, 2, 4, 6, 168, 98, 327, 10, 151, 234, 454, 116, 345], dtype=np.int64
)
_PAIRS = np.array(
    [(i, j) for i in range(len(IDENTITY_POINTS)) for j in range(i + 1, len(IDENTITY_POINTS))],
    dtype=np.int64,
)  # (K, 2) indices into IDENTITY_POINTS
_EYE_OUTER = (33, 263)


class Boxed(Protocol):
    """What association needs of a face: its box (FaceObservation, or a box without points)."""

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 in pixels."""
        ...

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        ...

    @property
    def center(self) -> tuple[float, float]:
        """Box centre in pixels."""
        ...


@dataclass(frozen=True, slots=True)
class FaceBox(BoxGeometry):
    """A face's box only; `row` says where its landmarks are kept (e.g. a RowSpool row)."""

    bbox: tuple[float, float, float, float]
    row: int


@dataclass
class Track:
    """One face followed across frames: frame index -> observation."""

    frames: list[int] = field(default_factory=list)
    observations: list[Boxed] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # index of each observation in its frame

    @property
    def score(self) -> float:
        """Total bbox area over the track (= mean size x length): big and persistent wins."""
        return float(sum(o.area for o in self.observations))

    @property
    def last(self) -> Boxed:
        """The most recent observation."""
        return self.observations[-1]


@dataclass(frozen=True)
class MainTrack:
    """The main subject's landmarks over the clip, NaN where the face was not found."""

    points: np.ndarray  # (T, 478, 3) float32, NaN where not found
    found: np.ndarray  # (T,) bool
    n_tracks: int  # how many distinct face tracks were seen
    rival_ratio: float  # score of the best other track / main track's score (0 if none)

    @property
    def found_ratio(self) -> float:
        """Fraction of frames where the main subject's face was found."""
        return float(self.found.mean()) if len(self.found) else 0.0


def bbox_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two x0,y0,x1,y1 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match_score(track_obs: Boxed, obs: Boxed) -> float:
    """Association score: IoU, or a weaker centre-proximity score for fast motion; 0 = no match."""
    iou = bbox_iou(track_obs.bbox, obs.bbox)
    if iou >= 0.2:
        return iou
    size = np.sqrt(max(track_obs.area, 1e-6))
    (ax, ay), (bx, by) = track_obs.center, obs.center
    dist = float(np.hypot(ax - bx, ay - by)) / size
    ratio = obs.area / max(track_obs.area, 1e-6)
    if dist < 0.5 and 0.5 < ratio < 2.0:
        return 0.1 * (1.0 - dist)
    return 0.0


def associate(per_frame: Sequence[Sequence[Boxed]], max_gap: int = 25) -> list[Track]:
    """Greedy frame-to-frame association of observations into tracks."""
    tracks: list[Track] = []
    for t, observations in enumerate(per_frame):
        active = [i for i, tr in enumerate(tracks) if t - tr.frames[-1] <= max_gap]
        candidates = [
            (_match_score(tracks[i].last, obs), i, j)
            for i in active
            for j, obs in enumerate(observations)
        ]
        candidates.sort(reverse=True)
        used_tracks: set[int] = set()
        used_obs: set[int] = set()
        for score, i, j in candidates:
            if score <= 0.0 or i in used_tracks or j in used_obs:
                continue
            tracks[i].frames.append(t)
            tracks[i].observations.append(observations[j])
            tracks[i].slots.append(j)
            used_tracks.add(i)
            used_obs.add(j)
        for j, obs in enumerate(observations):
            if j not in used_obs:
                tracks.append(Track(frames=[t], observations=[obs], slots=[j]))
    return tracks


@dataclass(frozen=True)
class MainSlots:
    """Which observation of each frame is the main subject's, without any landmarks."""

    slot: np.ndarray  # (T,) int64: index into that frame's observations, -1 where not found
    n_tracks: int
    rival_ratio: float

    @property
    def found(self) -> np.ndarray:
        """(T,) bool: the main subject was found."""
        return self.slot >= 0


def main_subject_slots(per_frame: Sequence[Sequence[Boxed]], max_gap: int = 25) -> MainSlots:
    """Pick the largest, most persistent face track (score = total bbox area over frames)."""
    slot = np.full(len(per_frame), -1, dtype=np.int64)
    tracks = associate(per_frame, max_gap=max_gap)
    if not tracks:
        return MainSlots(slot=slot, n_tracks=0, rival_ratio=0.0)
    scores = np.array([tr.score for tr in tracks])
    order = np.argsort(-scores)
    main = tracks[int(order[0])]
    slot[main.frames] = main.slots
    rival = float(scores[order[1]] / scores[order[0]]) if len(tracks) > 1 else 0.0
    return MainSlots(slot=slot, n_tracks=len(tracks), rival_ratio=rival)


def select_main_subject(per_frame: list[list[FaceObservation]], max_gap: int = 25) -> MainTrack:
    """Pick the largest, most persistent face track, with its landmarks (see main_subject_slots)."""
    n = len(per_frame)
    points = np.full((n, N_LANDMARKS, 3), np.nan, dtype=np.float32)
    main = main_subject_slots(per_frame, max_gap=max_gap)
    for t in np.nonzero(main.found)[0]:
        points[t] = per_frame[t][main.slot[t]].points
    return MainTrack(
        points=points, found=main.found, n_tracks=main.n_tracks, rival_ratio=main.rival_ratio
    )


def frame_signature(rgb: np.ndarray, bins: int = 8, size: int = 64) -> np.ndarray:
    """Per-channel colour histogram of a downscaled frame, each channel summing to 1: (3*bins,)."""
    h, w = rgb.shape[:2]
    step = max(1, int(max(h, w) // size))
    small = rgb[::step, ::step, :3].reshape(-1, 3).astype(np.int64)  # (N, 3)
    idx = (small * bins) // 256  # (N, 3) bin per channel
    counts = np.stack([np.bincount(idx[:, c], minlength=bins) for c in range(3)])  # (3, bins)
    return (counts / max(1, small.shape[0])).reshape(-1).astype(np.float32)


def identity_descriptor(points: np.ndarray) -> np.ndarray:
    """Face-proportion descriptor: 3D distances between rigid landmarks / outer-eye distance.

    points: (..., 478, 3) in pixel units -> (..., K) float32 (NaN where points are NaN).
    """
    p = np.asarray(points, dtype=np.float64)[..., IDENTITY_POINTS, :]  # (..., M, 3)
    d = np.linalg.norm(p[..., _PAIRS[:, 0], :] - p[..., _PAIRS[:, 1], :], axis=-1)  # (..., K)
    eye = np.linalg.norm(points[..., _EYE_OUTER[0], :] - points[..., _EYE_OUTER[1], :], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (d / np.asarray(eye, dtype=np.float64)[..., None]).astype(np.float32)


def _signature_distance(signatures: np.ndarray) -> np.ndarray:
    """Mean per-channel L1 distance between consecutive signatures: (T,), [0] = 0, in [0, 2]."""
    s = np.asarray(signatures, dtype=np.float64)  # (T, 3*bins)
    d = np.zeros(len(s))
    if len(s) > 1:
        d[1:] = np.abs(np.diff(s, axis=0)).sum(axis=1) / 3.0
    return d


def _identity_jumps(
    descriptors: np.ndarray, window: int, threshold: float, min_separation: int
) -> list[int]:
    """Frames where the median identity descriptor before and after differs by > threshold."""
    desc = np.asarray(descriptors, dtype=np.float64)  # (T, K)
    n = len(desc)
    ok = np.all(np.isfinite(desc), axis=1)
    score = np.zeros(n)
    for t in range(1, n):
        before = desc[max(0, t - window) : t][ok[max(0, t - window) : t]]
        after = desc[t : t + window][ok[t : t + window]]
        if len(before) < window // 2 or len(after) < window // 2:
            continue
        mb, ma = np.median(before, axis=0), np.median(after, axis=0)
        score[t] = float(np.mean(np.abs(mb - ma) / np.maximum(0.5 * (mb + ma), 1e-6)))
    jumps: list[int] = []
    for t in np.argsort(-score):
        if score[t] <= threshold:
            break
        if all(abs(int(t) - j) >= min_separation for j in jumps):
            jumps.append(int(t))
    return sorted(jumps)


def find_cuts(
    signatures: np.ndarray,
    descriptors: np.ndarray | None = None,
    hist_threshold: float = 0.35,
    identity_threshold: float = 0.06,
    window: int = 12,
) -> list[int]:
    """Frame indices where a new shot starts: colour-histogram jumps or a change of person.

    signatures: (T, D) from `frame_signature`; descriptors: (T, K) from `identity_descriptor`
    of the main track (NaN rows where no face), optional.
    """
    dist = _signature_distance(signatures)
    cuts = {int(t) for t in np.nonzero(dist > hist_threshold)[0]}
    if descriptors is not None and len(descriptors) > 2 * window:
        for t in _identity_jumps(descriptors, window, identity_threshold, window):
            if all(abs(t - c) > 2 for c in cuts):
                cuts.add(t)
    return sorted(cuts)


def consistent_segments(
    track: MainTrack | np.ndarray, cuts: list[int], min_len: int, max_gap: int = 12
) -> list[tuple[int, int]]:
    """Half-open [start, end) ranges inside one shot with the face found, gaps <= max_gap.

    `track` is the main track or just its (T,) found flags. Sorted longest first; ranges
    shorter than min_len are dropped.
    """
    found = track.found if isinstance(track, MainTrack) else np.asarray(track, dtype=bool)
    n = len(found)
    bounds = [0, *sorted(c for c in cuts if 0 < c < n), n]
    segments: list[tuple[int, int]] = []
    for s0, s1 in itertools.pairwise(bounds):
        idx = np.nonzero(found[s0:s1])[0] + s0
        if len(idx) == 0:
            continue
        start = prev = int(idx[0])
        for t in idx[1:]:
            if t - prev - 1 > max_gap:
                segments.append((start, prev + 1))
                start = int(t)
            prev = int(t)
        segments.append((start, prev + 1))
    segments = [s for s in segments if s[1] - s[0] >= min_len]
    segments.sort(key=lambda s: (s[0] - s[1], s[0]))
    return segments


@dataclass(frozen=True)
class GapPlan:
    """How each frame's points are made: found frames copy themselves, short gaps blend."""

    before: np.ndarray  # (T,) int64: frame to take (found) or blend from; -1 if invalid
    after: np.ndarray  # (T,) int64: frame to blend towards (= before for found frames)
    weight: np.ndarray  # (T,) float32: weight of `after` (0 for found frames)
    valid: np.ndarray  # (T,) bool


def gap_plan(found: np.ndarray, max_gap: int = 12) -> GapPlan:
    """Interior face losses of <= max_gap frames are linearly interpolated (see GapPlan)."""
    valid = np.asarray(found, dtype=bool).copy()
    n = len(valid)
    before = np.where(valid, np.arange(n), -1).astype(np.int64)
    after = before.copy()
    weight = np.zeros(n, dtype=np.float32)
    idx = np.nonzero(valid)[0]
    for a, b in itertools.pairwise(idx):
        gap = int(b - a - 1)
        if gap == 0 or gap > max_gap:
            continue
        before[a + 1 : b], after[a + 1 : b] = a, b
        weight[a + 1 : b] = np.arange(1, gap + 1, dtype=np.float32) / (gap + 1)
        valid[a + 1 : b] = True
    return GapPlan(before=before, after=after, weight=weight, valid=valid)


def gap_points(
    plan: GapPlan, frames: np.ndarray, load: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Points (K, ...) float32 of `frames` (K,) per `plan`; invalid frames are NaN.

    `load(frame indices)` returns the found frames' points, e.g. from an array or a spool.
    """
    frames = np.asarray(frames, dtype=np.int64)
    valid = plan.valid[frames]
    before, after = plan.before[frames], plan.after[frames]
    need = np.unique(np.concatenate([before[valid], after[valid]]))
    loaded = np.asarray(load(need), dtype=np.float32)  # (U, ...)
    lookup = {int(f): i for i, f in enumerate(need)}
    out = np.full((len(frames), *loaded.shape[1:]), np.nan, dtype=np.float32)
    for k in np.nonzero(valid)[0]:
        pa = loaded[lookup[int(before[k])]]
        if before[k] == after[k]:
            out[k] = pa
        else:
            w = plan.weight[frames[k]]  # float32 scalar: the blend stays in float32
            out[k] = (np.float32(1.0) - w) * pa + w * loaded[lookup[int(after[k])]]
    return out


def interpolate_gaps(
    points: np.ndarray, found: np.ndarray, max_gap: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate interior face losses of <= max_gap frames.

    points: (T, 478, 3), found: (T,) -> (points (T, 478, 3), valid (T,)); longer or
    leading/trailing gaps stay NaN and invalid.
    """
    pts = np.asarray(points, dtype=np.float32)
    plan = gap_plan(found, max_gap)
    out = gap_points(plan, np.arange(len(pts)), lambda idx: pts[idx])
    return out, plan.valid


def fixed_crop(
    points: np.ndarray,
    valid: np.ndarray,
    frame_w: int,
    frame_h: int,
    margin: float = 0.55,
    down_shift: float = 0.15,
) -> tuple[int, int, int]:
    """One square (x0, y0, side) for the whole clip: head over all its motion + hair + shoulders.

    points: (T, 478, 3), valid: (T,). The union of the face's landmark boxes is grown by
    `margin` x face size on every side (hair above, shoulders below; the centre moves down by
    `down_shift` x face size), made square and clamped inside the frame.
    """
    pts = np.asarray(points)[np.asarray(valid, dtype=bool)][..., :2]  # (V, 478, 2)
    if len(pts) == 0:
        raise ValueError("no valid face frames to place a crop")
    return fixed_crop_from_extents(
        pts.min(axis=1), pts.max(axis=1), frame_w, frame_h, margin, down_shift
    )


def fixed_crop_from_extents(
    lo: np.ndarray,
    hi: np.ndarray,
    frame_w: int,
    frame_h: int,
    margin: float = 0.55,
    down_shift: float = 0.15,
) -> tuple[int, int, int]:
    """`fixed_crop` from each valid frame's landmark extent: lo, hi (V, 2) = min, max of x, y."""
    if len(lo) == 0:
        raise ValueError("no valid face frames to place a crop")
    face_size = float(np.median(np.max(hi - lo, axis=1)))
    ux0, uy0 = lo.min(axis=0)
    ux1, uy1 = hi.max(axis=0)
    side = max(ux1 - ux0, uy1 - uy0) + 2.0 * margin * face_size
    side_i = round(min(side, frame_w, frame_h))
    cx = 0.5 * (ux0 + ux1)
    cy = 0.5 * (uy0 + uy1) + down_shift * face_size
    x0 = round(float(np.clip(cx - side_i / 2.0, 0, frame_w - side_i)))
    y0 = round(float(np.clip(cy - side_i / 2.0, 0, frame_h - side_i)))
    return x0, y0, side_i
