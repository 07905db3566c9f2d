"""Multi-resolution dense grid encoders sampled with `grid_sample`.

Why dense planes and not a hash table: a hash encoder needs a custom CUDA kernel to be fast
(the public RAD-NeRF code fails to build for many users), while `F.grid_sample` is a fused
native op on CPU and GPU with a native backward. Dense 2D grids are small (a 512^2 x 4 plane is
1M floats), and a 3D field is factorised into three axis-aligned planes per level whose
features are multiplied (a rank-1, K-planes style factorisation), which can still represent
localised 3D structure while costing three 2D look-ups per point instead of a 3D volume.
All levels of one 3D encoder level run as one batched `grid_sample` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz


@dataclass(frozen=True)
class GridConfig:
    """A multi-resolution dense grid encoder: resolutions per level and channels per level."""

    resolutions: tuple[int, ...] = (16, 32, 64, 128)
    channels: int = 4


class PlaneEncoder(nn.Module):
    """2D multi-resolution grid: (N, 2) in [-1, 1] -> (N, levels * channels)."""

    def __init__(self, config: GridConfig, init_scale: float = 1e-4) -> None:
        super().__init__()
        self.config = config
        self.planes = nn.ParameterList(
            nn.Parameter(torch.empty(1, config.channels, r, r).uniform_(-init_scale, init_scale))
            for r in config.resolutions
        )

    @property
    def out_dim(self) -> int:
        """Feature width."""
        return len(self.config.resolutions) * self.config.channels

    def forward(self, coords: Tensor) -> Tensor:
        """Bilinear features of each point, levels concatenated."""
        grid = coords.reshape(1, -1, 1, 2).to(self.planes[0].dtype)
        feats = [
            F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=True)
            for p in self.planes
        ]
        return torch.cat(feats, dim=1)[0, :, :, 0].t()


class TriPlaneEncoder(nn.Module):
    """3D multi-resolution grid as products of three planes: (N, 3) -> (N, levels * channels)."""

    def __init__(self, config: GridConfig) -> None:
        super().__init__()
        self.config = config
        # Products of planes start near a constant so early gradients reach every plane.
        self.planes = nn.ParameterList(
            nn.Parameter(torch.empty(3, config.channels, r, r).uniform_(0.1, 0.5))
            for r in config.resolutions
        )

    @property
    def out_dim(self) -> int:
        """Feature width."""
        return len(self.config.resolutions) * self.config.channels

    def forward(self, coords: Tensor) -> Tensor:
        """Features of each point in [-1, 1]^3, levels concatenated."""
        grid = torch.stack([coords[:, list(a)] for a in _PLANE_AXES]).unsqueeze(2)  # (3, N, 1, 2)
        grid = grid.to(self.planes[0].dtype)
        feats = []
        for p in self.planes:
            s = F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=True)
            feats.append(s[0, :, :, 0] * s[1, :, :, 0] * s[2, :, :, 0])  # (C, N)
        return torch.cat(feats, dim=0).t()
