"""The meanframe family's exported renderer: one opaque picture whatever the frame index."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn


class ConstantFrame(nn.Module):
    """(1,) frame index -> (1, H, W, 4) uint8: the picture, fully opaque."""

    def __init__(self, image: np.ndarray) -> None:
        super().__init__()
        rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=-1)
        self.register_buffer("rgba", torch.from_numpy(np.ascontiguousarray(rgba))[None])
        self.rgba: Tensor

    def forward(self, frame: Tensor) -> Tensor:
        """The picture, once per requested frame (B = 1 in exports)."""
        return self.rgba.expand(frame.shape[0], -1, -1, -1).contiguous()


def constant_renderer(image: np.ndarray) -> torch.jit.ScriptModule:
    """The picture's renderer as TorchScript (scripted: it has no data-dependent paths)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        return torch.jit.script(ConstantFrame(image))
