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
