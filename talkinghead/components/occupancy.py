"""The maximum occupancy grid (RAD-NeRF §3.4): one 3D grid for all audio conditions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

DensityFn = Callable[[Tensor], Tensor]  # points (N, 3) in [-1, 1]^3 -> density (N,)


class MaxOccupancyGrid(nn.Module):
    """Density maxima over audio conditions on a G^3 grid over [-1, 1]^3; prunes ray samples.

    Cells start "unknown" (infinite) so nothing is pruned before the first full update. Each
    update evaluates the field at a jittered point in some cells under a random audio
    condition and keeps max(decayed old value, new value): a cell the mouth fills for any
    sound stays occupied, while a cell that was empty for every sound decays to free.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.register_buffer("density", torch.full((resolution,) * 3, math.inf))
        self.density: Tensor

    def cell_indices(self, points: Tensor) -> Tensor:
        """Flat cell index of points (..., 3) in [-1, 1]^3 (clamped to the grid)."""
        g = self.resolution
        ijk = ((points + 1.0) * 0.5 * g).long().clamp(0, g - 1)
        return (ijk[..., 0] * g + ijk[..., 1]) * g + ijk[..., 2]

    def occupied(self, points: Tensor, threshold: float) -> Tensor:
        """Bool (...) mask of points in cells whose density exceeds `threshold`."""
        return self.density.reshape(-1)[self.cell_indices(points)] > threshold

    def sigma_threshold(self, alpha: float) -> float:
        """Density at which one cell-length step reaches opacity `alpha`."""
        cell = 2.0 / self.resolution
        return -math.log(1.0 - alpha) / cell

    @torch.no_grad()
    def update(
        self, density_fn: DensityFn, decay: float, fraction: float, generator: torch.Generator
    ) -> None:
        """Re-evaluate a random `fraction` of cells (all while unknown) and keep the maxima."""
        g, device = self.resolution, self.density.device
        flat = self.density.reshape(-1)
        unknown = torch.isinf(flat)
        if bool(unknown.any()) or fraction >= 1.0:
            cells = torch.arange(g**3, device=device)
        else:
            n = max(1, int(fraction * g**3))
            cells = torch.randint(0, g**3, (n,), generator=generator).to(device)
        ijk = torch.stack([cells // (g * g), (cells // g) % g, cells % g], dim=1).float()
        jitter = torch.rand(ijk.shape, generator=generator).to(device)
        points = (ijk + jitter) / g * 2.0 - 1.0
        new = torch.cat([density_fn(chunk) for chunk in points.split(1 << 16)])
        flat.copy_(torch.where(torch.isinf(flat), torch.zeros_like(flat), flat * decay))
        flat[cells] = torch.maximum(flat[cells], new)

    def occupied_fraction(self, threshold: float) -> float:
        """Share of cells currently counted as occupied."""
        return float((self.density > threshold).float().mean())
