"""Trace a trained RAD-NeRF avatar into a TorchScript frame renderer and package it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from talkinghead.components.compositing import quantise_rgba, to_rgba8
from talkinghead.export.artifact import ExportedAvatar, write_export
from talkinghead.families.contract import InputSpec
from talkinghead.families.radnerf.model import Conditions, RadNerf
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


def assets_arrays(assets: AvatarAssets) -> dict[str, np.ndarray]:
    """The render-time assets as the export's arrays."""
    return {
        "K": assets.K.astype(np.float32),
        "background": assets.background.astype(np.uint8),
        "poses": assets.poses.astype(np.float32),
        "eyes": assets.eyes.astype(np.float32),
    }


def assets_from_arrays(arrays: dict[str, np.ndarray]) -> AvatarAssets:
    """Inverse of `assets_arrays` (exports of format 2 and 3 hold the same arrays)."""
    background = arrays["background"]
    return AvatarAssets(
        K=arrays["K"], size=int(background.shape[0]), background=background,
        poses=arrays["poses"], eyes=arrays["eyes"],
    )  # fmt: skip


def input_specs(model: RadNerf) -> list[InputSpec]:
    """The traced renderer's inputs, in call order, with this model's audio shape."""
    cfg = model.config
    feature_dim = int(model.audio.feature_dim)
    return [
        InputSpec("pose", (4, 4)),
        InputSpec("audio", (cfg.attention_window, cfg.audio_window, feature_dim)),
        InputSpec("eye", ()),
    ]


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
    assets = rescaled(assets, size or assets.size)
    traced = trace(model, assets)
    facts = {"audio": {k: v for k, v in audio_spec.items() if k != "path"}, **(info or {})}
    return write_export(
        out_dir, traced, assets_arrays(assets), "radnerf", input_specs(model), facts
    )


def max_difference(
    model: RadNerf, exported: ExportedAvatar, poses: np.ndarray, audio: np.ndarray, eyes: np.ndarray
) -> int:
    """Largest uint8 difference between the eager model and the export on the same frames."""
    cond = Conditions(torch.from_numpy(poses), torch.from_numpy(audio), torch.from_numpy(eyes))
    K = torch.from_numpy(exported.assets["K"])
    eager = to_rgba8(model.render_frames(cond, K, exported.size))
    ours = exported.render({"pose": poses, "audio": audio, "eye": eyes})
    return int(np.abs(eager.astype(np.int16) - ours.astype(np.int16)).max())
