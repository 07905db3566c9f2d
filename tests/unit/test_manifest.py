"""Dataset format round trip: streaming writer, validating loader, lazy memory-mapped reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from talkinghead.preprocess.manifest import (
    FORMAT_VERSION,
    DatasetError,
    DatasetReader,
    DatasetWriter,
    load_manifest,
    make_split,
)

T, S, DIM = 10, 32, 80


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    poses = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    poses[:, 2, 3] = 5.0
    return {
        "landmarks": rng.uniform(0, S, (T, 478, 3)).astype(np.float32),
        "poses": poses,
        "euler": rng.normal(size=(T, 3)).astype(np.float32),
        "eye": rng.uniform(0, 1, T).astype(np.float32),
        "lips_bbox": np.tile(np.array([10, 20, 22, 26], np.float32), (T, 1)),
        "face_bbox": np.tile(np.array([4, 2, 28, 30], np.float32), (T, 1)),
        "audio_features": rng.normal(size=(T, DIM)).astype(np.float32),
        "valid": np.array([True] * 8 + [False, True]),
    }


def _write(root: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    writer = DatasetWriter(root, size=S, fps=25)
    frames = []
    for i in range(T):
        rgb = np.full((S, S, 3), (i * 20, 100, 200 - i * 10), np.uint8)
        labels = np.zeros((S, S), np.uint8)
        labels[4:14, 8:24], labels[14:18, 12:20], labels[18:, 4:28] = 1, 2, 3
        writer.add_frame(i, rgb, labels)
        frames.append(rgb)
    arrays = _arrays(rng)
    writer.write_arrays(**arrays)
    writer.write_background(np.zeros((S, S, 3), np.uint8))
    meta = {
        "source": {"name": "clip.mp4", "width": 640, "height": 480, "fps": 25.0},
        "intrinsics": [[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]],
        "crop": {"x0": 100, "y0": 20, "side": 400},
        "audio": {"encoder": "logmel", "dim": DIM, "context": 8},
        "tracker": "mediapipe-0.10.21",
    }
    quality = {"face_found_ratio": np.float32(0.9), "pose_jitter_deg": 0.1, "audio_level_dbfs": -20}
    manifest = writer.finalize(meta, quality, make_split(T, 0.2, gap=1))
    assert manifest.num_frames == T
    return frames, arrays


def test_round_trip_streams_lazily(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    frames, arrays = _write(root)
    reader = DatasetReader(root)
    assert len(reader) == T and reader.manifest.version == FORMAT_VERSION
    assert reader.manifest.extra == {"tracker": "mediapipe-0.10.21"}
    assert reader.manifest.quality["face_found_ratio"] == pytest.approx(0.9)
    assert reader.manifest.crop == {"x0": 100, "y0": 20, "side": 400}
    assert reader.intrinsics.shape == (3, 3)
    for i in (0, 7):
        assert np.abs(reader.frame(i).astype(int) - frames[i].astype(int)).max() <= 3  # JPEG
        assert reader.labels(i)[15, 15] == 2 and reader.labels(i).dtype == np.uint8
    for name, value in arrays.items():
        loaded = reader.array(name)
        assert isinstance(loaded, np.memmap) and not loaded.flags.writeable
        assert np.array_equal(np.asarray(loaded), value)
    assert reader.audio_window(0).shape == (16, DIM)
    assert np.array_equal(reader.audio_window(0)[0], arrays["audio_features"][0])
    # Split: val is the tail block, a gap of 1 frame, invalid frame 8 dropped by default.
    assert reader.split("val") == [9]
    assert reader.split("val", valid_only=False) == [8, 9]
    assert reader.split("train") == list(range(7))
    assert reader.background().shape == (S, S, 3)
    with pytest.raises(IndexError):
        reader.frame(T)


def test_half_written_and_unknown_versions_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = DatasetWriter(root, size=S, fps=25)
    writer.add_frame(0, np.zeros((S, S, 3), np.uint8), np.zeros((S, S), np.uint8))
    with pytest.raises(DatasetError, match=r"manifest\.json is missing"):
        DatasetReader(root)
    with pytest.raises(DatasetError, match="arrays not written"):
        writer.finalize({}, {}, make_split(T))
    _write(tmp_path / "ok")
    with pytest.raises(FileExistsError):
        DatasetWriter(tmp_path / "ok", size=S, fps=25)
    path = tmp_path / "ok" / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="version 2 is not supported"):
        load_manifest(tmp_path / "ok")


def test_crop_as_list_and_default_context(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = DatasetWriter(root, size=S, fps=25)
    for i in range(T):
        writer.add_frame(i, np.zeros((S, S, 3), np.uint8), np.zeros((S, S), np.uint8))
    writer.write_arrays(**_arrays(np.random.default_rng(1)), mouth=np.zeros(T, np.float32))
    writer.write_background(np.zeros((S, S, 3), np.uint8))
    meta = {"crop": [1, 2, 300], "intrinsics": np.eye(3).tolist(), "audio": {"encoder": "logmel"}}
    manifest = writer.finalize(meta, {}, make_split(T))
    loaded = load_manifest(root)
    assert loaded.crop == manifest.crop == {"x0": 1, "y0": 2, "side": 300}
    assert loaded.audio["context"] == 8 and loaded.audio["dim"] == DIM
    assert DatasetReader(root).array("mouth").shape == (T,)


def test_missing_frame_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    (tmp_path / "ds" / "frames" / "000004.jpg").unlink()
    with pytest.raises(DatasetError, match="frame or mask 4"):
        load_manifest(tmp_path / "ds")


def test_make_split() -> None:
    split = make_split(1000, 0.1, gap=12)
    assert split.val == [(900, 1000)] and split.train == [(0, 888)]
    tiny = make_split(3, 0.1, gap=12)
    assert tiny.indices("val") == [2] and tiny.indices("train") and tiny.train[0][1] <= 2
    with pytest.raises(ValueError):
        make_split(1)
