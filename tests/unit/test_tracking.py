"""Face landmarks and tracking: detection, main subject, cuts, segments, gaps, fixed crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from talkinghead.preprocess.landmarks import FaceMeshDetector, FaceObservation
from talkinghead.preprocess.landmarks import observation_from_points as obs_of
from talkinghead.preprocess.tracking import (
    MainTrack,
    consistent_segments,
    find_cuts,
    fixed_crop,
    frame_signature,
    identity_descriptor,
    interpolate_gaps,
    select_main_subject,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """The 512x512 RGB astronaut photo."""
    return data.astronaut()


@pytest.fixture(scope="module")
def face(astronaut: np.ndarray) -> FaceObservation:
    """The astronaut's face, detected once."""
    with FaceMeshDetector(video_mode=False) as det:
        faces = det.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


def _moved(face: FaceObservation, dx: float, dy: float, scale: float = 1.0) -> FaceObservation:
    c = face.points[:, :2].mean(axis=0)
    pts = face.points.copy()
    pts[:, :2] = (pts[:, :2] - c) * scale + c + np.array([dx, dy], dtype=np.float32)
    pts[:, 2] *= scale
    return obs_of(pts)


def test_detector_finds_astronaut(face: FaceObservation, astronaut: np.ndarray) -> None:
    assert face.points.shape == (478, 3)
    assert face.points.dtype == np.float32
    x0, y0, x1, y1 = face.bbox
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    # the face sits in the upper middle of the photo, about 90x100 px
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 200
    assert 60 < x1 - x0 < 160


def test_detector_video_mode_mirror_and_small_copy(astronaut: np.ndarray) -> None:
    canvas = astronaut.copy()
    small = cv2.resize(astronaut[20:260, 120:340], None, fx=0.7, fy=0.7)
    h, w = small.shape[:2]
    canvas[512 - h :, 512 - w :] = small  # a second, smaller face in the lower-right corner
    with FaceMeshDetector(max_faces=3, video_mode=True) as det:
        mirrored = det.detect(np.ascontiguousarray(astronaut[:, ::-1]))
        both = [det.detect(canvas) for _ in range(3)]
    assert len(mirrored) == 1 and mirrored[0].center[0] > 256  # mirrored: face on the right
    assert all(len(f) == 2 for f in both), "the small pasted face is detected too"
    assert both[0][0].area > both[0][1].area  # largest first
    track = select_main_subject(both)
    assert track.found.all()
    assert np.nanmean(track.points[:, :, 0]) < 400  # the astronaut, not the small copy


def test_main_subject_keeps_large_face_over_small(face: FaceObservation) -> None:
    rng = np.random.default_rng(0)
    per_frame: list[list[FaceObservation]] = []
    for t in range(60):
        big = _moved(face, 3 * np.sin(t / 5), 2 * np.cos(t / 7))
        small = _moved(face, 200 + t, 250, scale=0.4)
        frame = [big, small] if t % 10 != 3 else [small]  # the big face is lost now and then
        if t == 30:
            frame.append(_moved(face, -120, 200, scale=1.6))  # a one-frame false detection
        per_frame.append([frame[i] for i in rng.permutation(len(frame))])
    track = select_main_subject(per_frame)
    assert track.n_tracks == 3
    assert 0.0 < track.rival_ratio < 0.5
    assert track.found.sum() == 54 and not track.found[3]
    centre_x = np.nanmean(track.points[track.found, :, 0], axis=1)
    assert np.all(np.abs(centre_x - face.points[:, 0].mean()) < 5)


def test_main_subject_empty_and_no_faces() -> None:
    track = select_main_subject([[], [], []])
    assert track.points.shape == (3, 478, 3) and not track.found.any()
    assert track.n_tracks == 0 and track.found_ratio == 0.0


def test_frame_signature_is_normalised(astronaut: np.ndarray) -> None:
    sig = frame_signature(astronaut)
    assert sig.shape == (24,) and sig.dtype == np.float32
    np.testing.assert_allclose(sig.reshape(3, 8).sum(axis=1), 1.0, atol=1e-5)


def test_find_cuts_on_shot_change(astronaut: np.ndarray) -> None:
    cat = data.chelsea()
    frames = [np.roll(astronaut, (t, 2 * t), axis=(0, 1)) for t in range(20)]
    frames += [np.roll(cat, t, axis=1) for t in range(15)]
    frames += [np.roll(astronaut, -t, axis=0) for t in range(10)]
    sigs = np.stack([frame_signature(f) for f in frames])
    assert find_cuts(sigs) == [20, 35]
    assert find_cuts(sigs[:20]) == []


def test_find_cuts_on_change_of_person(face: FaceObservation) -> None:
    rng = np.random.default_rng(1)
    other = face.points.copy()
    c = other[:, 0].mean()
    other[:, 0] = (other[:, 0] - c) * 1.3 + c  # a wider face: different proportions
    seq = [face.points if t < 40 else other for t in range(80)]
    pts = np.stack(seq) + rng.normal(0, 0.4, (80, 478, 3)).astype(np.float32)
    desc = identity_descriptor(pts)
    assert desc.shape[0] == 80
    sigs = np.tile(np.full(24, 1 / 8, dtype=np.float32), (80, 1))  # same background throughout
    cuts = find_cuts(sigs, desc)
    assert len(cuts) == 1 and abs(cuts[0] - 40) <= 1
    same = identity_descriptor(np.stack([face.points] * 80) + rng.normal(0, 0.4, (80, 478, 3)))
    assert find_cuts(sigs, same) == []


def _track(found: np.ndarray) -> MainTrack:
    pts = np.zeros((len(found), 478, 3), dtype=np.float32)
    pts[~found] = np.nan
    return MainTrack(points=pts, found=found, n_tracks=1, rival_ratio=0.0)


def test_consistent_segments() -> None:
    found = np.ones(100, dtype=bool)
    found[:3] = False  # face appears late
    found[20:25] = False  # short loss: bridged
    found[50:70] = False  # long loss: splits
    segs = consistent_segments(_track(found), cuts=[80], min_len=15)
    assert segs == [(3, 50), (80, 100)]
    assert consistent_segments(_track(found), cuts=[80], min_len=30) == [(3, 50)]
    assert consistent_segments(_track(np.zeros(10, dtype=bool)), [], 1) == []


def test_interpolate_gaps() -> None:
    t = np.arange(30, dtype=np.float32)
    pts = np.repeat(t[:, None, None], 478, axis=1).repeat(3, axis=2)  # (30, 478, 3) = t
    found = np.ones(30, dtype=bool)
    found[[0, 1]] = False  # leading: stays invalid
    found[5:8] = False  # short: filled
    found[12:27] = False  # 15 frames: too long
    pts[~found] = np.nan
    out, valid = interpolate_gaps(pts, found, max_gap=12)
    assert out.shape == pts.shape
    assert valid[5:8].all() and not valid[:2].any() and not valid[12:27].any()
    np.testing.assert_allclose(out[5:8, 0, 0], [5, 6, 7], atol=1e-5)
    assert np.isnan(out[15]).all()


def test_fixed_crop_covers_head_motion(face: FaceObservation) -> None:
    seq = np.stack([_moved(face, 30 * np.sin(t / 6), 15 * np.cos(t / 4)).points for t in range(50)])
    valid = np.ones(50, dtype=bool)
    x0, y0, side = fixed_crop(seq, valid, 512, 512)
    assert x0 >= 0 and y0 >= 0 and x0 + side <= 512 and y0 + side <= 512
    lo, hi = seq[..., :2].min(axis=(0, 1)), seq[..., :2].max(axis=(0, 1))
    assert x0 < lo[0] and y0 < lo[1] and x0 + side > hi[0] and y0 + side > hi[1]
    face_h = face.bbox[3] - face.bbox[1]
    assert lo[1] - y0 > 0.3 * face_h  # room for hair
    assert y0 + side - hi[1] > 0.5 * face_h  # room for neck and shoulders
    # near the frame's edge the square is clamped inside the frame
    x0, y0, side = fixed_crop(seq - np.array([200, 0, 0], dtype=np.float32), valid, 512, 512)
    assert x0 == 0 and side <= 512
    with pytest.raises(ValueError):
        fixed_crop(seq, np.zeros(50, dtype=bool), 512, 512)
