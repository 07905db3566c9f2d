"""The preprocessing pipeline end to end on real face videos made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from services.cli import app
from talkinghead.media import synth_face_video
from talkinghead.preprocess.manifest import DatasetReader


def test_cli_writes_a_streamable_dataset(tmp_path: Path) -> None:
    video = synth_face_video(tmp_path / "me.mp4", seconds=4.4, size=320)
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["preprocess", str(video), "--out", str(out), "--size", "128"])
    assert result.exit_code == 0, result.output
    reader = DatasetReader(out)
    assert len(reader) == 110
    assert reader.frame(5).shape == (128, 128, 3)
    assert isinstance(reader.poses, np.memmap)
    quality = json.loads((out / "manifest.json").read_text())["quality"]
    assert quality["face_found_ratio"] >= 0.98
    assert quality["mask_coverage"]["head"] > 0.1
    assert quality["pose_jitter_deg"] < 1.0


def test_source_decode_agrees_with_the_normalised_file(tmp_path: Path) -> None:
    """preprocess_video decodes the source through normalise's filters; build_dataset reads the
    normalised (CRF-16) file. They differ by compression noise only."""
    from talkinghead.preprocess.ingest import normalise
    from talkinghead.preprocess.pipeline import PreprocessConfig, build_dataset, preprocess_video

    video = synth_face_video(tmp_path / "me.mp4", seconds=4.4, size=256)
    config = PreprocessConfig(size=128)
    streamed = preprocess_video(video, tmp_path / "a", config)
    normalise(video, tmp_path / "v.mp4", tmp_path / "a.wav")
    from_file = build_dataset(tmp_path / "v.mp4", tmp_path / "a.wav", tmp_path / "b", config)
    assert streamed.num_frames == from_file.num_frames == 110
    assert (
        np.abs(np.subtract(list(streamed.crop.values()), list(from_file.crop.values()))).max() <= 2
    )
    a, b = DatasetReader(tmp_path / "a"), DatasetReader(tmp_path / "b")
    assert np.array_equal(a.valid, b.valid)

    def source_xy(reader: DatasetReader) -> np.ndarray:
        crop = reader.manifest.crop
        scale = crop["side"] / reader.manifest.size
        return reader.landmarks[..., :2] * scale + [crop["x0"], crop["y0"]]

    assert np.median(np.abs(source_xy(a) - source_xy(b))) < 0.5  # source pixels
    euler_a, euler_b = a.array("euler"), b.array("euler")
    assert np.median(np.abs(euler_a - euler_b)) < 0.5
