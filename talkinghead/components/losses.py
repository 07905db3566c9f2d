"""Training losses: opacity entropy and a differentiable SSIM for lips patches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def alpha_entropy(alpha: Tensor) -> Tensor:
    """Mean binary entropy of pixel opacities: pushes them to 0 or 1 (RAD-NeRF eq. 5)."""
    a = alpha.clamp(1e-5, 1.0 - 1e-5)
    return -(a * torch.log(a) + (1.0 - a) * torch.log(1.0 - a)).mean()


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of (B, 3, H, W) images in [0, 1] (Gaussian window, valid region)."""
    c1, c2 = 0.01**2, 0.03**2
    g = _gaussian(window, sigma, pred.dtype, pred.device)
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window).contiguous()

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, groups=3)

    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()
