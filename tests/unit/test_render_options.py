"""Render options turned into per-frame conditions and background plates."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.renderer.backgrounds import background_plate, colour_plate, image_plate
from services.renderer.video import per_frame
from shared.jobs import JobError
from talkinghead.rendering.controls import AvatarAssets, frame_batches, rescaled


def test_pose_lists_of_4x4_or_3x4_matrices_hold_their_last_value() -> None:
    a = np.eye(4, dtype=np.float32)
    b = np.eye(4, dtype=np.float32)
    b[:3, 3] = [0.1, 0.2, -3.0]
    poses = per_frame([a.reshape(-1).tolist(), b.reshape(-1).tolist()], 4, (4, 4), "pose")
    assert poses.shape == (4, 4, 4)
    assert np.array_equal(poses[0], a) and all(np.array_equal(p, b) for p in poses[1:])
    rows = per_frame([b[:3].reshape(-1).tolist()], 2, (4, 4), "pose")
    assert np.array_equal(rows[1], b)  # 3x4 gets the homogeneous last row
    assert len(per_frame([a.reshape(-1).tolist()] * 9, 4, (4, 4), "pose")) == 4


@pytest.mark.parametrize(
    ("values", "shape", "what"),
    [
        ([[1.0, 2.0, 3.0]], (4, 4), "pose"),
        ([[1.0] * 16, [1.0] * 12], (4, 4), "pose"),
        ([], (), "eyes"),
        ([0.3, float("nan")], (), "eyes"),
        ([[0.3]], (), "eyes"),
    ],
)
def test_malformed_lists_fail_with_invalid_options(
    values: list[object], shape: tuple[int, ...], what: str
) -> None:
    with pytest.raises(JobError) as err:
        per_frame(values, 3, shape, what)
    assert err.value.code == "invalid_options" and what in err.value.message


def test_background_plates() -> None:
    source = np.full((8, 8, 3), 7, np.uint8)
    assert background_plate({"kind": "source"}, 8, source) is source
    green = background_plate({"kind": "colour", "colour": "#00ff80"}, 8, source)
    assert green.shape == (8, 8, 3) and tuple(green[3, 3]) == (0, 255, 128)
    assert np.array_equal(colour_plate("#102030", 2)[1, 1], [16, 32, 48])
    # A wide image covers the square: scaled to its height, centre kept.
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = (255, 0, 0)  # BGR blue in the middle third
    ok, png = cv2.imencode(".png", wide)
    assert ok
    plate = image_plate(png.tobytes(), 20)
    assert plate.shape == (20, 20, 3) and tuple(plate[10, 10]) == (0, 0, 255)  # RGB
    with pytest.raises(JobError) as err:
        image_plate(b"not an image", 20)
    assert err.value.code == "unreadable_background"


def test_frame_batches_cover_every_frame_once_and_rescale_keeps_the_view() -> None:
    assets = AvatarAssets(
        K=np.array([[100, 0, 32], [0, 100, 32], [0, 0, 1]], np.float32),
        size=64,
        background=np.zeros((64, 64, 3), np.uint8),
        poses=np.tile(np.eye(4, dtype=np.float32), (5, 1, 1)),
        eyes=np.linspace(0.1, 0.3, 5).astype(np.float32),
    )
    features = np.arange(11 * 3, dtype=np.float32).reshape(11, 3)
    batches = list(frame_batches(assets, features, k=2, batch=4, context=2))
    assert [b.start for b in batches] == [0, 4, 8]
    assert sum(len(b.poses) for b in batches) == 11
    assert batches[0].audio.shape == (4, 2, 4, 3)
    big = rescaled(assets, 128)
    assert big.size == 128 and big.background.shape == (128, 128, 3)
    assert np.allclose(big.K[:2], assets.K[:2] * 2) and big.K[2, 2] == 1
