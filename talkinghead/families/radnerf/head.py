"""The dynamic head field: decomposed audio-spatial encoding (RAD-NeRF §3.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from talkinghead.components.grids import PlaneEncoder, TriPlaneEncoder
from talkinghead.families.radnerf.config import ModelConfig


class _TruncExp(torch.autograd.Function):
    """exp() whose gradient is clamped, so a large density cannot blow up training."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * torch.exp(x.clamp(-15, 15))


def trunc_exp(x: Tensor) -> Tensor:
    """Truncated exponential activation for density (Instant-NGP, used by RAD-NeRF)."""
    if not torch.is_grad_enabled():
        # Same values; plain exp keeps inference graphs free of Python autograd functions,
        # which TorchScript cannot serialise.
        return torch.exp(x)
    out: Tensor = _TruncExp.apply(x)
    return out


def mlp(inp: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    """`layers` linear layers with ReLU between them."""
    dims = [inp] + [hidden] * (layers - 1) + [out]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


@dataclass
class HeadSamples:
    """Field outputs at N points."""

    sigma: Tensor  # (N,) density
    rgb: Tensor  # (N, 3) in [0, 1]
    audio_coord: Tensor  # (N, D) the audio coordinate x_a (regularised outside the face)
    eye_gate: Tensor  # (N,) size of the eye feature's effect here (regularised outside the eyes)


class HeadField(nn.Module):
    """c, sigma = MLP(f = E3(x), g = E2(x_a), e, i) with x_a = MLP(a, f)."""

    GEO_DIM = 15

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.spatial = TriPlaneEncoder(config.spatial)
        # A rough start: with a near-zero audio grid the audio coordinate gets no gradient and
        # every sound collapses onto one point, so lips never learn to move.
        self.audio_grid = PlaneEncoder(config.audio_grid, init_scale=0.1)
        f_dim = self.spatial.out_dim
        self.audio_mlp = mlp(f_dim + config.audio_dim, config.hidden, config.audio_coord_dim, 3)
        self.sigma_mlp = mlp(f_dim + self.audio_grid.out_dim, config.hidden, 1 + self.GEO_DIM, 3)
        self.color_mlp = mlp(self.GEO_DIM + config.latent_dim, config.hidden, 3, 2)
        # The eye feature e enters as a colour change e x v(f), with e the offset from the open
        # eye. A blink is mostly a colour change (the lid over the eye white). Being linear in
        # e, it is exactly zero for open eyes, and it cannot saturate: a sigmoid gate on e died
        # early in training, when blink frames first pushed it down everywhere.
        self.eye_mlp = mlp(f_dim, 16, 3, 2)

    def grid_parameters(self) -> list[nn.Parameter]:
        """Feature grids (their own, higher learning rate)."""
        return [*self.spatial.parameters(), *self.audio_grid.parameters()]

    def density(self, x: Tensor, audio: Tensor) -> Tensor:
        """Density only (for the occupancy grid)."""
        return self._trunk(x, audio)[0]

    def _trunk(self, x: Tensor, audio: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        f = self.spatial(x)
        # tanh keeps the audio coordinate inside the audio grid: beyond its border the grid is
        # constant, the coordinate gets no gradient and the audio path dies.
        xa = torch.tanh(self.audio_mlp(torch.cat([f, audio], dim=-1)))
        h = self.sigma_mlp(torch.cat([f, self.audio_grid(xa)], dim=-1))
        return trunc_exp(h[:, 0] - 1.0), h[:, 1:], xa, f

    def forward(self, x: Tensor, audio: Tensor, eye: Tensor, latent: Tensor) -> HeadSamples:
        """Query points x (N, 3) in [-1, 1]^3 with per-point audio code, eye offset and latent."""
        sigma, geo, xa, f = self._trunk(x, audio)
        eye_delta = eye.unsqueeze(-1) * self.eye_mlp(f)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([geo, latent], dim=-1)) + eye_delta)
        return HeadSamples(sigma, rgb, xa, eye_delta.abs().sum(-1))
