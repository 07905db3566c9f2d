"""Trace a trained RAD-NeRF avatar into a TorchScript frame renderer and package it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from talkinghead.export.artifact import (
    ASSETS,
    FORMAT,
    MANIFEST,
    RENDERER,
    ExportedAvatar,
    save_assets,
    sha256_file,
)
from talkinghead.models.radnerf import Conditions, RadNerf, quantise_rgba, to_rgba8
from talkinghead.rendering.controls import AvatarAssets, eye_track, pose_track, rescaled


class FrameRenderer(nn.Module):
    """One frame from its conditions to uint8 premultiplied RGBA: the graph that is traced."""

    def __init__(self, model: RadNerf, K: np.ndarray, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.register_buffer("K", torch.as_tensor(K, dtype=torch.float32))
        self.K: Tensor

    def forward(self, pose: Tensor, audio: Tensor, eye: Tensor) -> Tensor:
        """(1, 4, 4), (1, K, W, D), (1,) -> (1, size, size, 4) uint8."""
        rgba = self.model.render_frames(Conditions(pose, audio, eye), self.K, self.size)
        return quantise_rgba(rgba)  # inside the graph, so clients get bytes


def example_inputs(model: RadNerf, assets: AvatarAssets) -> tuple[Tensor, Tensor, Tensor]:
    """Conditions of a plausible frame (the rest pose, open eyes): the trace's sample input."""
    cfg = model.config
    feature_dim = model.audio.feature_dim
    pose = torch.from_numpy(pose_track(assets, 1, "static"))
    eye = torch.from_numpy(eye_track(assets, 1, "open"))
    audio = torch.zeros((1, cfg.attention_window, cfg.audio_window, feature_dim))
    return pose, audio, eye


def trace(model: RadNerf, assets: AvatarAssets) -> torch.jit.ScriptModule:
    """TorchScript of the frame renderer on the model's device, traced at the avatar's size.

    Tracing (not scripting) records the ops of one real frame; the ray sampling's
    data-dependent selections (nonzero, indexing) are recorded as ops, so other poses and
    sounds render exactly as in eager mode (checked after export). The Python loops over
    pixel chunks unroll for the avatar's frame size, which is fixed per export.
    """
    device = model.eye_scale.device
    renderer = FrameRenderer(model.eval(), assets.K, assets.size).to(device).eval()
    inputs = tuple(t.to(device) for t in example_inputs(model, assets))
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python ints taken from tensor sizes: they are the fixed
        # frame size and chunking, by design.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        traced = torch.jit.trace(renderer, inputs, check_trace=False)
    return traced


def export_avatar(
    model: RadNerf,
    assets: AvatarAssets,
    audio_spec: dict[str, Any],
    out_dir: Path,
    info: dict[str, Any] | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """Write the artifact into `out_dir` (created), manifest last; returns the manifest.

    `size` renders frames at another resolution than the training one (camera scaled).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    assets = rescaled(assets, size or assets.size)
    traced = trace(model, assets)
    traced.save(str(out_dir / RENDERER))
    save_assets(out_dir / ASSETS, assets)
    cfg = model.config
    feature_dim = int(model.audio.feature_dim)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "family": "radnerf",
        "size": int(assets.size),
        "fps": 25,
        "inputs": {
            "pose": [4, 4],
            "audio": [cfg.attention_window, cfg.audio_window, feature_dim],
            "eye": [],
        },
        "output": "uint8 RGBA (size, size, 4), colour premultiplied by alpha",
        "audio": {k: v for k, v in audio_spec.items() if k != "path"},
        "torch": torch.__version__,
        "files": {
            name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
            for name in (RENDERER, ASSETS)
        },
        **(info or {}),
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(out_dir / MANIFEST)
    return manifest


def max_difference(
    model: RadNerf, exported: ExportedAvatar, poses: np.ndarray, audio: np.ndarray, eyes: np.ndarray
) -> int:
    """Largest uint8 difference between the eager model and the export on the same frames."""
    cond = Conditions(torch.from_numpy(poses), torch.from_numpy(audio), torch.from_numpy(eyes))
    eager = to_rgba8(model.render_frames(cond, torch.from_numpy(exported.assets.K), exported.size))
    ours = exported.render(poses, audio, eyes)
    return int(np.abs(eager.astype(np.int16) - ours.astype(np.int16)).max())
