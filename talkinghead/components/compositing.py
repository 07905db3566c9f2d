"""Premultiplied RGBA frames: quantisation to the renderers' uint8 output and compositing."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def composite_over(rgba: Tensor, background: Tensor) -> Tensor:
    """Premultiplied RGBA (..., 4) over an opaque background (..., 3) -> RGB, floats in [0, 1]."""
    return rgba[..., :3] + (1.0 - rgba[..., 3:4]) * background


def quantise_rgba(rgba: Tensor) -> Tensor:
    """Float premultiplied RGBA -> uint8 tensor (the renderer's output format); colour <= alpha.

    Out-of-place, so it also serves inside traced graphs (the export).
    """
    q = (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return torch.cat([torch.minimum(q[..., :3], q[..., 3:4]), q[..., 3:4]], dim=-1)


def to_rgba8(rgba: Tensor) -> np.ndarray:
    """Float premultiplied RGBA -> uint8 numpy array on the CPU."""
    return quantise_rgba(rgba).cpu().numpy()


def over_background(rgba8: np.ndarray, background: np.ndarray) -> np.ndarray:
    """uint8 premultiplied RGBA over a uint8 background: where alpha is 255 the background
    cannot show, bit for bit."""
    alpha = rgba8[..., 3:4].astype(np.uint16)
    rgb = rgba8[..., :3].astype(np.uint16) * 255 + (255 - alpha) * background.astype(np.uint16)
    return ((rgb + 127) // 255).astype(np.uint8)
