"""A stored renderer artifact: manifest, TorchScript renderer, assets; no training code needed.

Layout of an exported avatar (a directory locally, a key prefix in the object store):

- `manifest.json`  format, family, frame size, input shapes, the audio encoder spec, and the
  sha256 and size of every other file (the manifest is written last: its presence commits
  the export)
- `renderer.ts`    TorchScript module: (pose (1, 4, 4) f32, audio (1, K, W, D) f32, eye (1,) f32)
                   -> (1, size, size, 4) uint8 RGBA, colour premultiplied by alpha
- `assets.npz`     camera K, background plate, the source's head poses and eye ratios
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkinghead.devices import default_device
from talkinghead.rendering.controls import AvatarAssets

FORMAT = 2  # format 1 was the training checkpoint with EMA weights (no TorchScript)
MANIFEST = "manifest.json"
RENDERER = "renderer.ts"
ASSETS = "assets.npz"
FILES = (RENDERER, ASSETS)


class ArtifactError(Exception):
    """An export that cannot be used: missing file, checksum mismatch, unknown format."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_assets(path: Path, assets: AvatarAssets) -> None:
    """Write the render-time assets as an uncompressed npz (loads without pickle)."""
    with path.open("wb") as fh:
        np.savez(
            fh,
            K=assets.K.astype(np.float32),
            background=assets.background.astype(np.uint8),
            poses=assets.poses.astype(np.float32),
            eyes=assets.eyes.astype(np.float32),
        )


def load_assets(path: Path) -> AvatarAssets:
    """Read assets written by `save_assets`."""
    with np.load(path, allow_pickle=False) as z:
        background = z["background"]
        return AvatarAssets(
            K=z["K"], size=int(background.shape[0]), background=background,
            poses=z["poses"], eyes=z["eyes"],
        )  # fmt: skip


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an export directory, checked for format and completeness."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} holds no {MANIFEST}")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"unreadable manifest: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"export format {manifest.get('format')!r} is not {FORMAT}; export the avatar again"
        )
    missing = [name for name in FILES if name not in manifest.get("files", {})]
    if missing:
        raise ArtifactError(f"manifest lists no {', '.join(missing)}")
    return manifest


def verify(directory: Path, manifest: dict[str, Any]) -> None:
    """Check every file's size and sha256 against the manifest."""
    for name, facts in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{name} is missing")
        if path.stat().st_size != int(facts["bytes"]):
            raise ArtifactError(f"{name} has {path.stat().st_size} bytes, not {facts['bytes']}")
        if sha256_file(path) != facts["sha256"]:
            raise ArtifactError(f"{name} fails its sha256 check")


def load_module(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """Load the TorchScript renderer onto `device`."""
    with warnings.catch_warnings():
        # torch >= 2.9 marks TorchScript deprecated in favour of torch.export, which cannot
        # export this renderer (its ray sampling has data-dependent shapes); it still loads.
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return module


@dataclass
class ExportedAvatar:
    """A verified, loaded export: renders frames from per-frame conditions."""

    manifest: dict[str, Any]
    assets: AvatarAssets
    module: torch.jit.ScriptModule
    device: torch.device

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> ExportedAvatar:
        """Verify checksums and load; raises ArtifactError when the export cannot be used."""
        manifest = read_manifest(directory)
        verify(directory, manifest)
        device = device or default_device()
        return cls(
            manifest, load_assets(directory / ASSETS), load_module(directory / RENDERER, device),
            device,
        )  # fmt: skip

    @property
    def size(self) -> int:
        """Frame side in pixels."""
        return int(self.manifest["size"])

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        """(K, W, D): attention windows, window length, feature width of one frame's audio."""
        k, w, d = self.manifest["inputs"]["audio"]
        return int(k), int(w), int(d)

    @torch.no_grad()
    def render(self, poses: np.ndarray, audio: np.ndarray, eyes: np.ndarray) -> np.ndarray:
        """(B, size, size, 4) uint8 premultiplied RGBA for B frames' conditions."""
        b = len(poses)
        if audio.shape[1:] != self.audio_shape or len(audio) != b or len(eyes) != b:
            raise ValueError(
                f"need B poses (4, 4), audio (B, {self.audio_shape}), eyes (B,); got "
                f"{poses.shape}, {audio.shape}, {eyes.shape}"
            )
        out = np.empty((b, self.size, self.size, 4), np.uint8)
        # The traced graph renders one frame; a batch is a loop (the cost is per pixel anyway).
        for i in range(b):
            frame = self.module(
                torch.as_tensor(poses[i : i + 1], dtype=torch.float32, device=self.device),
                torch.as_tensor(audio[i : i + 1], dtype=torch.float32, device=self.device),
                torch.as_tensor(eyes[i : i + 1], dtype=torch.float32, device=self.device),
            )
            out[i] = frame[0].cpu().numpy()
        return out
