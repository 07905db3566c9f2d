"""Metrics: PSNR and SSIM against references, LMD, Pearson, the shuffle, and the face meter."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from talkinghead.media import iter_frames
from talkinghead.metrics import (
    MOUTH_POINTS,
    FaceMeter,
    FrameScores,
    landmark_distance,
    lipsync_proxy,
    pearson,
    psnr,
    shuffled_order,
    ssim,
)
from talkinghead.preprocess.features import INNER_LIPS, OUTER_LIPS, mouth_openness
from talkinghead.preprocess.tracking import fixed_crop

RNG_SEED = 1234


def smooth_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A structured uint8 RGB image (blurred noise), so SSIM sees edges and flat parts."""
    noise = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 3 - 255, 0, 255).astype(np.uint8)


def noisy(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """The image plus Gaussian noise (uint8 levels), clipped back to uint8."""
    out = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- PSNR --------------------------------------------------------------------------------------


def test_psnr_matches_hand_computation() -> None:
    rng = np.random.default_rng(RNG_SEED)
    a = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    expected = 20 * math.log10(255.0) - 10 * math.log10(mse)
    assert psnr(a, b) == pytest.approx(expected, abs=1e-9)
    # The same images as floats in 0..1 give the same number, and so does a mixed pair.
    assert psnr(a / 255.0, b / 255.0) == pytest.approx(expected, abs=1e-9)
    assert psnr(a / 255.0, b) == pytest.approx(expected, abs=1e-9)


def test_psnr_mask_restricts_the_pixels() -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    a = rng.uniform(0, 1, (24, 24, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    mask = np.zeros((24, 24), bool)
    mask[4:12, 6:20] = True
    mse = np.mean((a[mask] - b[mask]) ** 2)
    assert psnr(a, b, mask) == pytest.approx(-10 * math.log10(mse), abs=1e-9)
    # Damage outside the mask is invisible to the masked PSNR, not to the full one.
    c = a.copy()
    c[~mask] = 0.0
    assert psnr(c, a, mask) == math.inf
    assert psnr(c, a) < 20.0


def test_psnr_identical_is_inf_and_errors() -> None:
    img = np.full((8, 8, 3), 77, np.uint8)
    assert psnr(img, img) == math.inf
    with pytest.raises(ValueError):
        psnr(img, img, np.zeros((8, 8), bool))
    with pytest.raises(ValueError):
        psnr(img, img[:4])


# --- SSIM --------------------------------------------------------------------------------------


def test_ssim_matches_skimage() -> None:
    rng = np.random.default_rng(RNG_SEED + 2)
    for size, sigma in ((64, 10.0), (48, 40.0), (96, 3.0)):
        a = smooth_image(rng, size)
        b = noisy(a, rng, sigma)
        reference = structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=-1,
            data_range=255,
        )
        assert ssim(a, b) == pytest.approx(reference, abs=1e-3)
        # Floats in 0..1 with data range 1.
        reference_f = structural_similarity(
            a / 255.0,
            b / 255.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=-1,
            data_range=1.0,
        )
        assert ssim(a / 255.0, b / 255.0) == pytest.approx(reference_f, abs=1e-3)
    # Single-channel images too.
    gray_a, gray_b = a[..., 0], b[..., 0]
    reference_g = structural_similarity(
        gray_a,
        gray_b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )
    assert ssim(gray_a, gray_b) == pytest.approx(reference_g, abs=1e-3)


def test_ssim_is_one_on_itself_and_falls_with_noise() -> None:
    rng = np.random.default_rng(RNG_SEED + 3)
    img = smooth_image(rng)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    scores = [ssim(noisy(img, rng, sigma), img) for sigma in (2.0, 8.0, 25.0, 60.0)]
    assert all(a > b for a, b in itertools.pairwise(scores))
    assert scores[0] < 1.0 and scores[-1] < 0.5
    with pytest.raises(ValueError):
        ssim(img[:8, :8], img[:8, :8])  # smaller than the 11 x 11 window


# --- landmarks, correlation, shuffle -----------------------------------------------------------


def test_mouth_points_cover_the_lips() -> None:
    assert len(set(MOUTH_POINTS.tolist())) == len(MOUTH_POINTS) == 40
    assert set(OUTER_LIPS.tolist()) <= set(MOUTH_POINTS.tolist())
    assert {i for pair in INNER_LIPS for i in pair} <= set(MOUTH_POINTS.tolist())


def test_landmark_distance() -> None:
    rng = np.random.default_rng(RNG_SEED + 4)
    frames = rng.uniform(0, 128, (5, 478, 3))
    assert landmark_distance(frames, frames) == 0.0
    assert landmark_distance(frames[0], frames[0]) == 0.0  # one frame
    shifted = frames + np.array([3.0, 4.0, 50.0])  # z is ignored: LMD is 2D
    assert landmark_distance(shifted, frames) == pytest.approx(5.0)
    bigger = frames + np.array([6.0, 8.0, 0.0])
    assert landmark_distance(bigger, frames) == pytest.approx(10.0)
    # Only the chosen indices count.
    moved = frames.copy()
    moved[:, 0, 0] += 100.0  # landmark 0 is a lip point, 1 (nose tip) is not
    assert landmark_distance(moved, frames, indices=np.array([1])) == 0.0
    assert landmark_distance(moved, frames) == pytest.approx(100.0 / len(MOUTH_POINTS))
    # Missing frames (None or NaN) are skipped, on either side.
    pred: list[np.ndarray | None] = [shifted[0], None, shifted[2], shifted[3], shifted[4]]
    truth = frames.copy()
    truth[3] = np.nan
    assert landmark_distance(pred, truth) == pytest.approx(5.0)
    assert math.isnan(landmark_distance([None, None], frames[:2]))


def test_pearson_edge_cases() -> None:
    rng = np.random.default_rng(RNG_SEED + 5)
    x = rng.normal(size=50)
    assert pearson(x, 3 * x + 2) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    y = x + rng.normal(size=50)
    y[[3, 10]] = np.nan
    x_nan = x.copy()
    x_nan[20] = np.nan
    keep = np.isfinite(x_nan) & np.isfinite(y)
    expected = np.corrcoef(x_nan[keep], y[keep])[0, 1]
    assert pearson(x_nan, y) == pytest.approx(expected)
    assert lipsync_proxy(x_nan, y) == pearson(x_nan, y)
    assert math.isnan(pearson([1.0, 2.0], [2.0, 1.0]))  # too few pairs
    assert math.isnan(pearson([1.0, 2.0, np.nan, 4.0], [1.0, 2.0, 3.0, np.nan]))
    assert math.isnan(pearson(np.ones(10), x[:10]))  # no variance
    with pytest.raises(ValueError):
        pearson(x, x[:-1])


def test_shuffled_order_moves_every_frame_far() -> None:
    for n in [*range(0, 41), 100, 250, 1001]:
        perm = shuffled_order(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n))
        if n > 1:
            assert np.abs(perm - np.arange(n)).min() >= min(8, n // 2)
    a, b = shuffled_order(200, seed=0), shuffled_order(200, seed=0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, shuffled_order(200, seed=1))
    # Not a mere cyclic shift: neighbours land far apart, so local time order is gone.
    assert np.median(np.abs(np.diff(a))) > 20
    assert np.abs(shuffled_order(300, seed=3, min_shift=30) - np.arange(300)).min() >= 30


def test_shuffle_destroys_correlation_of_a_smooth_signal() -> None:
    rng = np.random.default_rng(RNG_SEED + 6)
    signal = np.convolve(rng.normal(size=520), np.hanning(21), mode="valid")[:500]
    assert abs(pearson(signal, signal[shuffled_order(500, seed=7)])) < 0.15


def test_frame_scores_stream() -> None:
    rng = np.random.default_rng(RNG_SEED + 7)
    truths = [smooth_image(rng, 32) for _ in range(4)]
    preds = [noisy(t, rng, s) for t, s in zip(truths, (3.0, 6.0, 12.0, 24.0), strict=True)]
    true_pts = [rng.uniform(0, 32, (478, 3)) for _ in range(4)]
    pred_pts: list[np.ndarray | None] = [p + np.array([1.0, 0.0, 0.0]) for p in true_pts]
    pred_pts[2] = None  # face not found on that render
    pred_pts[3] = true_pts[3] + np.array([0.0, 3.0, 0.0])
    scores = FrameScores()
    for p, t, pp, tp in zip(preds, truths, pred_pts, true_pts, strict=True):
        scores.add(p, t, pp, tp)
    summary = scores.summary()
    frame_psnr = [psnr(p, t) for p, t in zip(preds, truths, strict=True)]
    pooled = psnr(np.concatenate(preds), np.concatenate(truths))
    assert summary["frames"] == 4
    assert summary["psnr_frame_mean"] == pytest.approx(np.mean(frame_psnr))
    assert summary["psnr_pooled"] == pytest.approx(pooled)
    assert summary["psnr_pooled"] != pytest.approx(summary["psnr_frame_mean"], abs=1e-3)
    expected_ssim = np.mean([ssim(p, t) for p, t in zip(preds, truths, strict=True)])
    assert summary["ssim"] == pytest.approx(expected_ssim)
    assert summary["lmd"] == pytest.approx((1.0 + 1.0 + 3.0) / 3)
    assert summary["lmd_frames"] == 3
    assert math.isnan(FrameScores().summary()["psnr_pooled"])


# --- face meter on the synthetic head ----------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """Landmarks and openness the meter measured on one crop size, with the truth."""

    size: int
    sample: np.ndarray  # one frame at this size
    points: list[np.ndarray | None]
    openness: np.ndarray  # (T,) NaN where no face
    true_points: np.ndarray  # (T, 478, 2) in the crop's pixels
    true_openness: np.ndarray  # (T,)

    @property
    def found(self) -> float:
        """Share of frames with a face."""
        return float(np.isfinite(self.openness).mean())


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Measured]:
    """A 4 s synthetic clip, cropped like the dataset and shrunk to 128 and 96 px, measured."""
    from talkinghead.synthetic import generate

    clip = generate(tmp_path_factory.mktemp("metrics"), seconds=4.0, size=256, audio=False)
    truth = np.load(clip.truth)
    landmarks = truth["landmarks"]  # (T, 478, 2)
    # The dataset's fixed square crop over the head's whole motion.
    x0, y0, side = fixed_crop(landmarks, np.ones(len(landmarks), bool), 256, 256)
    crops = [f[y0 : y0 + side, x0 : x0 + side] for f in iter_frames(Path(clip.video), 256)]
    out: dict[int, Measured] = {}
    for size in (128, 96):
        small = [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops]
        with FaceMeter() as meter:
            points = [meter.landmarks(f) for f in small]
        openness = np.array([np.nan if p is None else mouth_openness(p) for p in points])
        true_points = (landmarks - np.array([x0, y0])) * (size / side)
        out[size] = Measured(size, small[40], points, openness, true_points, truth["mouth_open"])
    return out


def test_face_meter_finds_the_face_and_follows_the_mouth(measured: dict[int, Measured]) -> None:
    m = measured[128]
    assert m.found >= 0.95
    assert lipsync_proxy(m.openness, m.true_openness) >= 0.8
    control = m.true_openness[shuffled_order(len(m.true_openness), seed=0)]
    assert abs(lipsync_proxy(m.openness, control)) <= 0.3
    # Smaller still, the face is found and the mouth still followed, if less tightly.
    m96 = measured[96]
    assert m96.found >= 0.9
    assert lipsync_proxy(m96.openness, m96.true_openness) >= 0.6


def test_face_meter_points_are_in_input_pixels(measured: dict[int, Measured]) -> None:
    for size in (128, 96):
        m = measured[size]
        # The generator's mesh is mediapipe's own topology: the measured mouth lies within
        # a couple of pixels of the true one (a wrong scale-back would be off by tens).
        assert landmark_distance(m.points, m.true_points) < 2.5
        found = [p for p in m.points if p is not None]
        assert all(p.shape == (478, 3) for p in found)


def test_face_meter_openness_and_no_face(measured: dict[int, Measured]) -> None:
    frame = measured[128].sample
    with FaceMeter(video_mode=False) as meter:  # static: the same frame gives the same points
        points = meter.landmarks(frame)
        assert points is not None
        assert meter.openness(frame) == pytest.approx(float(mouth_openness(points)))
        # Float frames in 0..1 are measured like their uint8 originals.
        float_points = meter.landmarks(frame / 255.0)
        assert float_points is not None
        assert np.abs(float_points - points).max() < 0.5
        assert math.isnan(meter.openness(np.full((128, 128, 3), 128, np.uint8)))
        assert meter.landmarks(np.zeros((96, 96, 3), np.float32)) is None
