"""Exports written before families were plugins (format 2) still load and render the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.renderer.avatars import AvatarCache
from services.renderer.backends import InProcessBackend, TritonBackend
from services.tritonserver import TritonServer
from shared.exports import upload_export
from shared.storage import LocalObjectStore
from talkinghead.export.artifact import ArtifactError, ExportedAvatar, manifest_inputs
from talkinghead.families.contract import InputSpec

# A tiny untrained RAD-NeRF avatar exported by the format-2 code, and the frames that code
# rendered for two frames of conditions (tests/fixtures/legacy_export_v2/expected.npz).
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_export_v2"


def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as z:
        return {k: z[k] for k in z.files}


def assert_same_frames(got: np.ndarray, want: np.ndarray) -> None:
    """Equal within 1/255 (the export's own promise; CPUs may round a float differently)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max()) <= 1


def named(e: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"pose": e["poses"], "audio": e["audio"], "eye": e["eyes"]}


def test_a_format_2_export_lists_its_fixed_inputs_in_call_order() -> None:
    avatar = ExportedAvatar.load(FIXTURE / "export", torch.device("cpu"))
    assert avatar.manifest["format"] == 2
    assert avatar.inputs == [
        InputSpec("pose", (4, 4)), InputSpec("audio", (2, 16, 6)), InputSpec("eye", ())
    ]  # fmt: skip
    assert manifest_inputs(avatar.manifest) == avatar.inputs
    assert avatar.frame_shape == (12, 12) and avatar.family == "radnerf"


def test_a_format_2_export_renders_what_it_rendered_when_it_was_made() -> None:
    avatar = ExportedAvatar.load(FIXTURE / "export", torch.device("cpu"))
    e = expected()
    assert_same_frames(avatar.render(named(e)), e["rgba"])


def test_wrong_or_missing_inputs_are_named_in_the_error() -> None:
    avatar = ExportedAvatar.load(FIXTURE / "export", torch.device("cpu"))
    e = named(expected())
    with pytest.raises(ValueError, match="missing inputs \\['eye'\\]"):
        avatar.render({k: v for k, v in e.items() if k != "eye"})
    with pytest.raises(ValueError, match="audio: need"):
        avatar.render({**e, "audio": e["audio"][:, :1]})


def test_a_tampered_format_2_export_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "export"
    shutil.copytree(FIXTURE / "export", copy)
    with (copy / "assets.npz").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError):
        ExportedAvatar.load(copy, torch.device("cpu"))


def test_a_format_2_export_renders_in_process_and_through_triton(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    store = LocalObjectStore(objects)
    upload_export(store, "av_legacy", FIXTURE / "export")
    e = expected()
    local = InProcessBackend(AvatarCache(store)).render("av_legacy", "radnerf", named(e))
    assert_same_frames(local, e["rgba"])
    env = {"TH_STORAGE_DIR": str(objects), "TH_DATA_DIR": str(tmp_path), "TH_TORCH_THREADS": "1"}
    with TritonServer(models=("radnerf",), env=env) as triton:
        remote = TritonBackend(triton.http_url).render("av_legacy", "radnerf", named(e))
    np.testing.assert_array_equal(remote, local)  # the same export, the same frames
