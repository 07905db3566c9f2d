"""RAD-NeRF training end to end on the synthetic clip: learning, lip sync, controls, resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from talkinghead.families.radnerf.config import preset
from talkinghead.families.radnerf.driving import assets_of, drive, pose_track, speech_features
from talkinghead.families.radnerf.training import RadNerfTrainer
from talkinghead.metrics import FaceMeter, pearson, shuffled_order
from talkinghead.synthetic import envelope, speech
from talkinghead.training.trainer import CHECKPOINT
from tests.fixtures.avatars import TrainedAvatar

# The first test to ask for the shared avatar pays for its training (minutes on 2 cores).
pytestmark = pytest.mark.timeout(1800)


def test_heldout_error_falls_during_training(trained_avatar: TrainedAvatar) -> None:
    assert trained_avatar.final_psnr > trained_avatar.early_psnr + 1.0
    assert trained_avatar.metrics["psnr"] > 20.0


def test_lipsync_proxy_on_heldout_frames_beats_its_shuffled_control(
    trained_avatar: TrainedAvatar,
) -> None:
    m = trained_avatar.metrics
    assert m["face_found"] >= 0.95
    assert m["lipsync"] >= 0.5, m
    assert abs(m["lipsync_shuffled"]) <= 0.15, m


def _mouth_track(frames: list[np.ndarray]) -> np.ndarray:
    with FaceMeter() as meter:
        return np.array([meter.openness(f) for f in frames])


def test_mouth_follows_speech_of_another_voice(
    trained_avatar: TrainedAvatar, tmp_path: Path
) -> None:
    trainer = trained_avatar.trainer
    text = "Every morning she walks along the river and counts the boats that pass by."
    wave = speech(tmp_path / "other.wav", text, "en-us+f3", seconds=8.0)
    feats = speech_features(wave, trainer.data.reader.manifest.audio)
    truth = envelope(wave, len(feats), 25)
    assets = assets_of(trainer.data)
    order = shuffled_order(len(feats), seed=1)
    with torch.no_grad(), trainer.ema.applied():
        real = _mouth_track(list(drive(trainer.model, assets, feats, "static", "open")))
        shuffled = _mouth_track(list(drive(trainer.model, assets, feats[order], "static", "open")))
    r_real, r_shuffled = pearson(real, truth), pearson(shuffled, truth)
    assert r_real >= 0.4, (r_real, r_shuffled)
    assert r_real - abs(r_shuffled) >= 0.25, (r_real, r_shuffled)


def test_eye_ratio_changes_pixels_mostly_in_the_eye_region(trained_avatar: TrainedAvatar) -> None:
    trainer = trained_avatar.trainer
    data = trainer.data
    assets = assets_of(data)
    feats = np.asarray(data.reader.audio_features[:1])
    closed, opened = np.percentile(assets.eyes, 2), np.percentile(assets.eyes, 90)
    with torch.no_grad(), trainer.ema.applied():
        a = next(drive(trainer.model, assets, feats, "static", np.array([closed], np.float32)))
        b = next(drive(trainer.model, assets, feats, "static", np.array([opened], np.float32)))
    energy = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).sum(axis=-1)
    # The static pose is one training frame's pose: its landmarks locate the eyes.
    still = pose_track(assets, 1, "static")[0]
    frame = int(data.train_ids[int(np.argmin(np.abs(assets.poses - still).sum(axis=(1, 2))))])
    x0, y0, x1, y1 = np.round(data.eye_box(frame)).astype(int)
    inside = np.zeros_like(energy, dtype=bool)
    inside[max(0, y0) : y1, max(0, x0) : x1] = True
    assert np.sqrt(energy[inside].mean()) >= 2.0  # the eyes really change (not a no-op)
    assert energy[inside].sum() >= 0.9 * energy.sum()


def test_background_shows_only_where_the_avatar_is_not_opaque(
    trained_avatar: TrainedAvatar,
) -> None:
    trainer = trained_avatar.trainer
    assets = assets_of(trainer.data)
    feats = np.asarray(trainer.data.reader.audio_features[:2])
    green = np.zeros_like(assets.background)
    green[..., 1] = 255
    with torch.no_grad(), trainer.ema.applied():
        rgba = list(drive(trainer.model, assets, feats, rgba=True))
        plate = list(drive(trainer.model, assets, feats))
        other = list(drive(trainer.model, assets, feats, background=green))
    for layer, a, b in zip(rgba, plate, other, strict=True):
        opaque = layer[..., 3] == 255
        assert opaque.mean() > 0.2  # the head and torso cover a good part of the frame
        assert np.array_equal(a[opaque], b[opaque])
        assert not np.array_equal(a[~opaque], b[~opaque])


def _small_config() -> object:
    base = preset("tiny")
    return replace(
        base,
        train=replace(
            base.train, head_steps=40, lips_steps=10, torso_steps=20, rays_per_step=256,
            segment_steps=20, occupancy_warmup=16, occupancy_every=8,
        ),
    )  # fmt: skip


_CHILD = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from tests.unit.test_radnerf_training import _small_config
from talkinghead.families.radnerf.training import RadNerfTrainer
t = RadNerfTrainer(Path(sys.argv[1]), Path(sys.argv[2]), _small_config())
t.run(progress=lambda r: print(r.step, flush=True))
"""


def test_killed_run_resumes_with_only_the_remaining_steps_and_same_weights(
    synthetic_dataset: tuple[object, Path], tmp_path: Path
) -> None:
    _, dataset = synthetic_dataset
    config = _small_config()
    # One intra-op thread in both processes: multi-threaded CPU kernels sum in varying order,
    # so two uninterrupted runs differ too; with deterministic kernels a resume is bit-exact.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _kill_and_resume(dataset, config, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _kill_and_resume(dataset: Path, config: object, tmp_path: Path) -> None:
    reference = RadNerfTrainer(dataset, tmp_path / "reference", config)  # type: ignore[arg-type]
    assert reference.run() == reference.total_steps
    # The same run in another process, killed with SIGKILL once it is past a checkpoint.
    work = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(dataset), str(work)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if int(line) >= 30:  # checkpoints are written at 20, 40, 60 and at the end (70)
            os.killpg(child.pid, signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    resumed = RadNerfTrainer(dataset, work, config)  # type: ignore[arg-type]
    assert resumed.state.step == 20
    assert resumed.run() == resumed.total_steps - 20
    for name, value in reference.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-5, rtol=1e-4), name
    for name, value in reference.ema.state_dict().items():
        assert torch.allclose(value, resumed.ema.state_dict()[name], atol=1e-5, rtol=1e-4), name
    assert (work / CHECKPOINT).exists()


def test_checkpoint_from_another_configuration_is_refused(
    synthetic_dataset: tuple[object, Path], tmp_path: Path
) -> None:
    _, dataset = synthetic_dataset
    config = _small_config()
    RadNerfTrainer(dataset, tmp_path, config).run(5)  # type: ignore[arg-type]
    other = replace(config, train=replace(config.train, head_steps=41))  # type: ignore[type-var]
    with pytest.raises(ValueError, match="different configuration"):
        RadNerfTrainer(dataset, tmp_path, other)


def test_training_is_device_agnostic_on_cpu(
    synthetic_dataset: tuple[object, Path], tmp_path: Path
) -> None:
    _, dataset = synthetic_dataset
    trainer = RadNerfTrainer(dataset, tmp_path, _small_config(), device=torch.device("cpu"))  # type: ignore[arg-type]
    trainer.run(3)
    assert all(p.device.type == "cpu" for p in trainer.model.parameters())
    assert not math.isnan(trainer.state.losses[-1]["mse"])


class _FakeLpips(torch.nn.Module):
    """Stands in for an operator's exported LPIPS: same signature, a recognisable value."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean(dim=(1, 2, 3)) * 0.0 + 0.125


def test_lips_stage_uses_an_lpips_model_from_a_local_path(
    synthetic_dataset: tuple[object, Path], tmp_path: Path
) -> None:
    _, dataset = synthetic_dataset
    path = tmp_path / "lpips.pt"
    torch.jit.script(_FakeLpips()).save(str(path))
    base = _small_config()
    config = replace(base, train=replace(base.train, head_steps=0, lips_steps=3))  # type: ignore[type-var]
    trainer = RadNerfTrainer(dataset, tmp_path / "run", config, lpips_path=path)
    report = trainer.train_step()
    assert report.stage == "lips"
    assert report.losses["patch"] == pytest.approx(0.125)  # the module's value, not 1 - SSIM
    with pytest.raises(ValueError, match="does not exist"):
        RadNerfTrainer(dataset, tmp_path / "run2", config, lpips_path=tmp_path / "missing.pt")
