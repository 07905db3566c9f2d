"""Head pose (solvePnP against the mesh's own reference shape), One-Euro smoothing, features."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from talkinghead.preprocess.features import (
    eye_openness,
    face_bbox,
    lips_bbox,
    mouth_openness,
)
from talkinghead.preprocess.landmarks import FaceMeshDetector
from talkinghead.preprocess.pose import (
    EYE_WIDTH_M,
    OneEuroFilter,
    estimate_poses,
    euler_to_rotation,
    intrinsics,
    reference_shape,
    rotation_to_euler,
    smooth_poses,
)


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    """The astronaut's landmarks (478, 3) in pixel units."""
    with FaceMeshDetector(video_mode=False) as det:
        return det.detect(data.astronaut())[0].points


@pytest.fixture(scope="module")
def reference(points: np.ndarray) -> np.ndarray:
    """Reference shape built from the astronaut's own mesh."""
    return reference_shape(points[None])


def _project(reference: np.ndarray, euler: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Perspective projection of the reference under each pose: (T, 478, 3), z unused (0)."""
    cam = reference[None] @ np.swapaxes(euler_to_rotation(euler), 1, 2) + t[:, None, :]
    uv = cam @ K.T
    out = np.zeros((len(euler), 478, 3), dtype=np.float32)
    out[..., :2] = uv[..., :2] / uv[..., 2:]
    return out


def test_intrinsics() -> None:
    K = intrinsics(640, 480, fov_deg=60)
    assert K.shape == (3, 3)
    assert K[0, 0] == pytest.approx(320 / np.tan(np.radians(30)))
    assert K[0, 2] == 320 and K[1, 2] == 240 and K[2, 2] == 1


def test_euler_round_trip_and_sign_conventions() -> None:
    rng = np.random.default_rng(0)
    euler = rng.uniform([-60, -40, -30], [60, 40, 30], size=(100, 3))
    np.testing.assert_allclose(rotation_to_euler(euler_to_rotation(euler)), euler, atol=1e-9)
    nose = np.array([0.0, 0.0, -1.0])  # the nose points at the camera (-z) when frontal
    right = np.array([1.0, 0.0, 0.0])
    assert (euler_to_rotation(np.array([20.0, 0, 0])) @ nose)[0] > 0.3  # yaw: nose to the right
    assert (euler_to_rotation(np.array([0, 20.0, 0])) @ nose)[1] < -0.3  # pitch: nose up (-y)
    assert (euler_to_rotation(np.array([0, 0, 20.0])) @ right)[1] > 0.3  # roll: clockwise


def test_reference_shape_is_canonical(points: np.ndarray, reference: np.ndarray) -> None:
    assert reference.shape == (478, 3) and reference.dtype == np.float32
    assert np.linalg.norm(reference[263] - reference[33]) == pytest.approx(EYE_WIDTH_M, rel=1e-4)
    assert reference[263, 0] > reference[33, 0]  # the eye line runs along +x
    assert reference[152, 1] > reference[10, 1]  # chin below forehead (+y is down)
    assert reference[1, 2] < reference[234, 2]  # nose tip nearer the camera than the cheeks
    # a sequence with rotated copies and invalid frames gives the same shape (frontal ones win)
    rotated = points.copy()
    c = rotated.mean(axis=0)
    rotated = (rotated - c) @ euler_to_rotation(np.array([25.0, 0, 0])).T.astype(np.float32) + c
    seq = np.stack([points, rotated, rotated, np.full_like(points, np.nan)])
    np.testing.assert_allclose(reference_shape(seq, frontal_fraction=0.3), reference, atol=1e-6)


def test_estimate_poses_recovers_synthetic_poses(reference: np.ndarray) -> None:
    K = intrinsics(512, 512)
    t = np.arange(60)
    euler = np.stack([30 * np.sin(t / 9), 15 * np.sin(t / 7), 10 * np.sin(t / 11)], axis=1)
    trans = np.stack([0.03 * np.sin(t / 5), -0.02 + 0 * t, 0.6 + 0.02 * np.cos(t / 8)], axis=1)
    pts = _project(reference, euler, trans, K)
    valid = np.ones(60, dtype=bool)
    valid[20:23] = False
    poses = estimate_poses(pts, valid, K, reference)
    assert poses.rotation.shape == (60, 3, 3) and poses.euler.shape == (60, 3)
    assert poses.translation.shape == (60, 3)
    assert np.array_equal(poses.valid, valid) and np.isnan(poses.euler[20:23]).all()
    np.testing.assert_allclose(poses.euler[valid], euler[valid], atol=0.05)
    np.testing.assert_allclose(poses.translation[valid], trans[valid], atol=1e-3)


def test_estimate_poses_on_real_in_plane_rotation(points: np.ndarray) -> None:
    image = data.astronaut()
    K = intrinsics(512, 512)
    centre = points[:, :2].mean(axis=0)
    rolls = []
    with FaceMeshDetector(video_mode=False) as det:
        for angle in (0.0, -15.0, 15.0):  # cv2: positive = counter-clockwise in the image
            M = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
            rotated = cv2.warpAffine(image, M, (512, 512), borderMode=cv2.BORDER_REFLECT)
            pts = det.detect(rotated)[0].points
            ref = reference_shape(points[None])
            rolls.append(estimate_poses(pts[None], np.array([True]), K, ref).euler[0])
    base, cw, ccw = rolls
    assert cw[2] - base[2] == pytest.approx(15.0, abs=1.5)
    assert ccw[2] - base[2] == pytest.approx(-15.0, abs=1.5)
    assert abs(cw[0] - base[0]) < 2 and abs(ccw[1] - base[1]) < 2


def test_one_euro_removes_jitter_without_lag() -> None:
    fps = 25.0
    rng = np.random.default_rng(0)
    n = 200
    t = np.arange(n) / fps
    still = np.zeros((n, 3))
    motion = np.stack([20 * np.sin(2 * np.pi * 0.5 * t)] * 3, axis=1)  # 0.5 Hz, +-20 deg
    noise = rng.normal(0, 0.5, (n, 3))
    for clean, factor in ((still, 5.0), (motion, 2.0)):
        euler, trans = smooth_poses(clean + noise, clean / 100 + noise / 1000, fps)
        assert euler.shape == (n, 3) and trans.shape == (n, 3)
        jitter_in = np.abs(np.diff(clean + noise, axis=0) - np.diff(clean, axis=0)).mean()
        jitter_out = np.abs(np.diff(euler, axis=0) - np.diff(clean, axis=0)).mean()
        assert jitter_out < jitter_in / factor
        assert np.abs(euler - clean)[10:-10].max() < 1.5  # follows real motion: no lag
    # the streaming (causal) filter also tracks the motion closely
    f = OneEuroFilter(fps, min_cutoff=1.5, beta=0.05)
    causal = np.stack([f(row) for row in motion + noise])
    assert np.abs(causal - motion)[10:].mean() < 1.5
    assert np.isnan(f(np.full(3, np.nan))).all()  # NaN passes through and resets


def test_features_on_astronaut(points: np.ndarray) -> None:
    ear = eye_openness(points)
    assert ear.shape == () and 0.15 < float(ear) < 0.5
    seq = np.stack([points, points])
    assert eye_openness(seq).shape == (2,) and mouth_openness(seq).shape == (2,)
    fb, lb = face_bbox(seq), lips_bbox(seq)
    assert fb.shape == (2, 4) and lb.shape == (2, 4)
    assert (fb[:, 0] < lb[:, 0]).all() and (lb[:, 2] < fb[:, 2]).all()
    assert (fb[:, 1] < lb[:, 1]).all() and (lb[:, 3] < fb[:, 3]).all()
    assert lb[0, 1] > 0.5 * (fb[0, 1] + fb[0, 3])  # lips in the lower half of the face


def test_features_follow_lids_and_jaw(points: np.ndarray) -> None:
    closed = points.copy()
    for upper, lower in ((159, 145), (160, 144), (158, 153), (386, 374), (387, 373), (385, 380)):
        closed[upper] = closed[lower]  # lids meet
    assert float(eye_openness(closed)) < 0.1 * float(eye_openness(points))
    opened = points.copy()
    face_h = points[152, 1] - points[10, 1]
    for lower in (14, 87, 317, 17, 84, 314, 152):
        opened[lower, 1] += 0.1 * face_h  # the jaw drops
    assert float(mouth_openness(opened)) > float(mouth_openness(points)) + 0.15
    assert lips_bbox(opened)[3] > lips_bbox(points)[3]
    nan = np.full_like(points, np.nan)
    assert np.isnan(eye_openness(nan)) and np.isnan(mouth_openness(nan))
