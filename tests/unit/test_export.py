"""Export of a trained avatar: TorchScript renderer + assets + manifest, and the avatar cache."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from services.renderer.avatars import AvatarCache
from shared.exports import ExportNotFound, export_prefix, upload_export
from shared.storage import LocalObjectStore
from talkinghead.export.artifact import (
    MANIFEST,
    RENDERER,
    ArtifactError,
    ExportedAvatar,
)
from talkinghead.families.radnerf.driving import assets_of, speech_features
from talkinghead.families.radnerf.evaluation import frame_conditions
from talkinghead.families.radnerf.export import assets_from_arrays, export_avatar, max_difference
from talkinghead.rendering.controls import frame_batches
from talkinghead.synthetic import speech
from tests.fixtures.avatars import TrainedAvatar

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(trained_avatar: TrainedAvatar, tmp_path_factory: pytest.TempPathFactory) -> Path:
    trainer = trained_avatar.trainer
    out = tmp_path_factory.mktemp("export") / "avatar"
    with trainer.ema.applied():
        export_avatar(
            trainer.model, assets_of(trainer.data), trainer.data.reader.manifest.audio, out,
            info={"avatar_id": "av_unit"},
        )  # fmt: skip
    return out


def test_export_matches_the_training_renderer_on_held_out_frames(
    trained_avatar: TrainedAvatar, exported: Path
) -> None:
    trainer = trained_avatar.trainer
    avatar = ExportedAvatar.load(exported, torch.device("cpu"))
    ids = [int(i) for i in trainer.data.val_ids[:8]]
    cond = frame_conditions(trainer.data, ids, trainer.config.model.attention_window)
    with trainer.ema.applied():
        worst = max_difference(
            trainer.model, avatar, cond.poses.numpy(), cond.audio.numpy(), cond.eye.numpy()
        )
    assert worst <= 1  # <= 1/255


def test_export_matches_under_new_speech_poses_and_closed_eyes(
    trained_avatar: TrainedAvatar, exported: Path, tmp_path: Path
) -> None:
    """Conditions unlike the trace's sample: another voice, the source motion, shut eyes."""
    trainer = trained_avatar.trainer
    avatar = ExportedAvatar.load(exported, torch.device("cpu"))
    wave = speech(tmp_path / "s.wav", "Completely different words.", "en-us+f3", 1.0)
    features = speech_features(wave, avatar.manifest["audio"])
    k, w, _ = avatar.input_shape("audio")
    closed = np.full(len(features), float(avatar.assets["eyes"].min()), np.float32)
    batch = next(
        frame_batches(assets_from_arrays(avatar.assets), features, k, "source", closed, 6, w // 2)
    )
    with trainer.ema.applied():
        worst = max_difference(trainer.model, avatar, batch.poses, batch.audio, batch.eyes)
    assert worst <= 1


def test_manifest_names_shapes_and_checksums(exported: Path) -> None:
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["format"] == 3 and manifest["family"] == "radnerf"
    assert manifest["size"] == 128 and manifest["avatar_id"] == "av_unit"
    assert (manifest["height"], manifest["width"]) == (128, 128)
    inputs = manifest["inputs"]  # named, in call order, each with dtype and per-frame shape
    assert [(i["name"], i["dtype"]) for i in inputs] == [
        ("pose", "float32"), ("audio", "float32"), ("eye", "float32")
    ]  # fmt: skip
    assert (
        inputs[0]["shape"] == [4, 4] and len(inputs[1]["shape"]) == 3 and inputs[2]["shape"] == []
    )
    assert set(manifest["files"]) == {"renderer.ts", "assets.npz"}
    assert "path" not in manifest["audio"]  # no machine-local paths travel with an export


def test_a_corrupted_or_foreign_export_is_refused(exported: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in exported.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = bytearray((bad / RENDERER).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / RENDERER).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        ExportedAvatar.load(bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["format"] = 1
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format"):
        ExportedAvatar.load(bad)
    (bad / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        ExportedAvatar.load(bad)


_LOAD_ALONE = """
import sys
import numpy as np
from pathlib import Path
from talkinghead.export.artifact import ExportedAvatar
avatar = ExportedAvatar.load(Path(sys.argv[1]))
k, w, d = avatar.input_shape("audio")
a = avatar.assets
silence = np.zeros((1, k, w, d), np.float32)
rgba = avatar.render({"pose": a["poses"][:1], "audio": silence, "eye": a["eyes"][:1]})
loaded = sorted(m for m in sys.modules if m.startswith("talkinghead."))
print(rgba.shape, rgba.dtype, int(rgba[..., 3].max()), ",".join(loaded))
"""


def test_an_export_renders_without_the_training_code(exported: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_ALONE, str(exported)],
        capture_output=True, text=True, cwd=ROOT, check=True, timeout=300,
    )  # fmt: skip
    shape, dtype, alpha, modules = out.stdout.split("\n")[-2].rsplit(" ", 3)
    assert (shape, dtype, alpha) == ("(1, 128, 128, 4)", "uint8", "255")
    for package in ("models", "fields", "training", "data", "rendering.volume"):
        assert f"talkinghead.{package}" not in modules.split(","), modules


def export_again(trained: TrainedAvatar, out: Path, size: int) -> None:
    """The same trained avatar exported at another frame size."""
    trainer = trained.trainer
    with trainer.ema.applied():
        export_avatar(
            trainer.model, assets_of(trainer.data), trainer.data.reader.manifest.audio, out,
            size=size,
        )  # fmt: skip


def test_avatar_cache_is_an_lru_that_verifies_and_loads_once(
    trained_avatar: TrainedAvatar, exported: Path, tmp_path: Path
) -> None:
    store = LocalObjectStore(tmp_path / "store")
    for name in ("a", "b"):
        upload_export(store, f"av_{name}", exported)
    events: list[tuple[str, str]] = []
    cache = AvatarCache(store, capacity=1, listener=lambda e, a: events.append((e, a)))
    threads = [threading.Thread(target=cache.get, args=("av_a",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events.count(("load", "av_a")) == 1  # concurrent first requests share one load
    cache.get("av_b")
    assert ("evict", "av_a") in events and cache.ids() == ["av_b"]
    cache.get("av_a")
    assert events.count(("load", "av_a")) == 2 and ("evict", "av_b") in events
    with pytest.raises(ExportNotFound):
        cache.get("av_missing")
    # Exported again under the same id (here: another frame size): reloaded once re-checked.
    resized = tmp_path / "resized"
    export_again(trained_avatar, resized, 64)
    upload_export(store, "av_a", resized)
    assert cache.get("av_a").size == 128  # trusted for revalidate_s
    cache.revalidate_s = 0.0
    assert cache.get("av_a").size == 64
    assert events.count(("load", "av_a")) == 3
    store.delete_prefix(export_prefix("av_a"))
    with pytest.raises(ExportNotFound):
        cache.get("av_a")
    assert "av_a" not in cache
    # A tampered object in the store is caught by the checksum on load.
    store.put_bytes(export_prefix("av_b") + RENDERER, b"not a model")
    with pytest.raises(ArtifactError):
        cache.get("av_b")
