"""Camera rays of crop pixels, expressed in the head's normalised frame."""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_grid(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """(H*W, 2) integer pixel coordinates (x, y), row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def head_rays(pixels: Tensor, K: Tensor, poses: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres (N, 2) of cameras K (N, 3, 3) seeing heads posed (N, 4, 4).

    Poses map head to camera (X_cam = R X_head + t), so in the head frame the camera sits at
    -R^T t and looks along R^T d. Coordinates are divided by `bound` so the head's box is
    [-1, 1]^3. Returns origins and unit directions, (N, 3) each.
    """
    x = (pixels[:, 0].to(K.dtype) + 0.5 - K[:, 0, 2]) / K[:, 0, 0]
    y = (pixels[:, 1].to(K.dtype) + 0.5 - K[:, 1, 2]) / K[:, 1, 1]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=1)
    rot_t = poses[:, :3, :3].transpose(1, 2)
    d = torch.einsum("nij,nj->ni", rot_t, d_cam)
    o = -torch.einsum("nij,nj->ni", rot_t, poses[:, :3, 3])
    return o / bound, d / d.norm(dim=1, keepdim=True)


def box_intersection(origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against [-1, 1]^3: near, far (N,) and whether the ray hits the box."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-1.0 - origins) * inv, (1.0 - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=1)
    return near, far, far > near
