"""The pseudo-3D deformable torso (RAD-NeRF §3.3): one 2D coordinate per pixel."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from talkinghead.components.grids import PlaneEncoder
from talkinghead.families.radnerf.config import ModelConfig
from talkinghead.families.radnerf.head import mlp

POSE_DIM = 12  # (R - I) flattened and the translation offset, see `pose_vector`


def pose_vector(poses: Tensor, mean_translation: Tensor, bound: float) -> Tensor:
    """(B, 4, 4) head poses -> (B, 12) conditioning of the torso deformation."""
    rot = poses[:, :3, :3] - torch.eye(3, dtype=poses.dtype, device=poses.device)
    trans = (poses[:, :3, 3] - mean_translation) / bound
    return torch.cat([rot.flatten(1), trans], dim=1)


def _frequencies(x: Tensor, n: int) -> Tensor:
    """Low-frequency positional encoding so the deformation MLP can bend smoothly."""
    bands = 2.0 ** torch.arange(n, dtype=x.dtype, device=x.device) * torch.pi
    xb = x.unsqueeze(-1) * bands  # (N, 2, n)
    return torch.cat([x, torch.sin(xb).flatten(1), torch.cos(xb).flatten(1)], dim=-1)


class TorsoField(nn.Module):
    """c_t, alpha_t = MLP(E2_torso(x_t + dx), i_t), dx = MLP(x_t, p)."""

    FREQS = 4

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.grid = PlaneEncoder(config.torso_grid)
        pe_dim = 2 + 4 * self.FREQS
        self.deform = mlp(pe_dim + POSE_DIM, config.hidden, 2, 3)
        last = self.deform[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)  # start undeformed
        nn.init.zeros_(last.bias)
        self.color = mlp(self.grid.out_dim + config.latent_dim, config.hidden, 4, 2)

    def grid_parameters(self) -> list[nn.Parameter]:
        """Feature grid (its own, higher learning rate)."""
        return list(self.grid.parameters())

    def forward(self, uv: Tensor, pose: Tensor, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel coordinates (N, 2) in [-1, 1] -> colour (N, 3) and alpha (N,)."""
        dx = self.deform(torch.cat([_frequencies(uv, self.FREQS), pose], dim=-1))
        f = self.grid((uv + dx).clamp(-1, 1))
        out = torch.sigmoid(self.color(torch.cat([f, latent], dim=-1)))
        return out[:, :3], out[:, 3]
