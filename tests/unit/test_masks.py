"""Person segmentation, semantic labels from face-mesh geometry, and the background plate."""

from __future__ import annotations

import numpy as np
import pytest

from talkinghead.preprocess.masks import (
    BACKGROUND,
    HEAD,
    NECK,
    TORSO,
    BackgroundPlate,
    PersonSegmenter,
    mask_coverage,
    semantic_labels,
)

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo, its person mask and its 478 face-mesh landmarks in pixels."""
    import mediapipe as mp

    rgb = skimage_data.astronaut()
    h, w = rgb.shape[:2]
    with PersonSegmenter() as seg:
        person = seg.person_mask(rgb)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1
    ) as mesh:
        found = mesh.process(rgb).multi_face_landmarks
    assert found, "face mesh found no face on the astronaut"
    points = np.array([[p.x * w, p.y * h, p.z * w] for p in found[0].landmark], np.float32)
    return rgb, person, points


def test_selfie_segmentation_finds_the_person(astronaut: tuple) -> None:
    rgb, person, points = astronaut
    assert person.shape == rgb.shape[:2] and person.dtype == np.float32
    assert person.min() >= 0.0 and person.max() <= 1.0
    assert 0.2 < (person > 0.5).mean() < 0.8
    nose = points[1, :2].round().astype(int)
    assert person[nose[1], nose[0]] > 0.5  # the face is part of the person
    assert person[5, 400] < 0.5  # the sky/backdrop at the top right is not


def test_semantic_labels_order_head_neck_torso(astronaut: tuple) -> None:
    rgb, person, points = astronaut
    labels = semantic_labels(rgb.shape, person, points)
    assert labels.dtype == np.uint8 and labels.shape == rgb.shape[:2]
    assert set(np.unique(labels).tolist()) == {BACKGROUND, HEAD, NECK, TORSO}
    rows = np.arange(labels.shape[0])[:, None] * np.ones_like(labels)
    centre = {v: rows[labels == v].mean() for v in (HEAD, NECK, TORSO)}
    assert centre[HEAD] < centre[NECK] < centre[TORSO]
    nose = points[1, :2].round().astype(int)
    assert labels[nose[1], nose[0]] == HEAD
    chin = points[152, :2]
    assert labels[int(chin[1]) + 15, int(chin[0])] == NECK
    cov = mask_coverage(labels)
    assert set(cov) == {"background", "head", "neck", "torso"}
    assert sum(cov.values()) == pytest.approx(1.0)
    assert cov["head"] > 0.03 and cov["neck"] > 0.005 and cov["torso"] > 0.2
    # No face: person pixels are all torso.
    no_face = semantic_labels(rgb.shape, person, None)
    assert set(np.unique(no_face).tolist()) == {BACKGROUND, TORSO}


def test_background_plate_recovers_and_inpaints() -> None:
    h, w = 64, 80
    yy, xx = np.mgrid[0:h, 0:w]
    gradient = np.stack([xx * 3, yy * 3, 255 - xx * 2], axis=-1).clip(0, 255).astype(np.uint8)
    plate = BackgroundPlate((h, w), margin=1)
    for t in range(12):
        frame, mask = gradient.copy(), np.zeros((h, w), np.float32)
        x0 = 4 + 5 * t  # a square sweeping left to right
        mask[20:36, x0 : x0 + 14] = 1.0
        mask[50:60, 30:44] = 1.0  # a block that never moves: always covered
        frame[mask > 0] = (255, 0, 255)
        plate.add(frame, mask)
    result, coverage = plate.result()
    assert result.shape == (h, w, 3) and result.dtype == np.uint8
    assert 0.9 < coverage < 1.0
    seen = plate._count > 0
    assert np.array_equal(result[seen], gradient[seen])  # the true background where visible
    hole = ~seen
    assert hole[55, 37]  # the always-covered block
    err = np.abs(result[hole].astype(int) - gradient[hole].astype(int)).mean()
    assert err < 12  # inpainted close to the smooth gradient, not the magenta occluder
    assert result[55, 37].tolist() != [255, 0, 255]
