"""Sampling along rays inside occupied space and alpha compositing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from talkinghead.components.occupancy import MaxOccupancyGrid
from talkinghead.components.rays import box_intersection


@dataclass
class RaySamples:
    """S samples on each of R rays; rays that meet no occupied cell are masked out."""

    points: Tensor  # (R, S, 3) in [-1, 1]^3
    deltas: Tensor  # (R, S) step lengths (normalised units)
    hit: Tensor  # (R,) bool


def occupied_samples(
    origins: Tensor,
    dirs: Tensor,
    grid: MaxOccupancyGrid | None,
    threshold: float,
    samples: int,
    candidates: int,
    generator: torch.Generator | None = None,
) -> RaySamples:
    """At most `samples` points per ray, spread over the ray's occupied interval.

    Pure tensor code (no ragged per-ray lists): each ray probes the grid at `candidates`
    evenly spaced points inside the box, keeps the span from its first to its last occupied
    probe (one probe of margin either side) and places `samples` stratified points in it.
    Empty space in front of and behind the head costs nothing. With `generator` the
    positions are jittered (training); without it they sit at stratum centres (rendering).
    """
    near, far, hit = box_intersection(origins, dirs)
    far = torch.where(hit, far, near + 1e-3)
    if grid is not None:
        steps = torch.linspace(0.0, 1.0, candidates, device=origins.device, dtype=origins.dtype)
        t_cand = near[:, None] + (far - near)[:, None] * steps  # (R, M)
        pts = origins[:, None, :] + dirs[:, None, :] * t_cand[..., None]
        occ = grid.occupied(pts.clamp(-1, 1), threshold)  # (R, M)
        any_occ = occ.any(dim=1)
        idx = torch.arange(candidates, device=origins.device)
        first = torch.where(occ, idx, candidates).amin(dim=1).clamp(max=candidates - 1)
        last = torch.where(occ, idx, -1).amax(dim=1).clamp(min=0)
        step = (far - near) / max(candidates - 1, 1)
        lo = torch.gather(t_cand, 1, first[:, None])[:, 0] - step
        hi = torch.gather(t_cand, 1, last[:, None])[:, 0] + step
        near, far = torch.maximum(lo, near), torch.minimum(hi, far)
        hit = hit & any_occ
    bins = torch.arange(samples, device=origins.device, dtype=origins.dtype)
    if generator is not None:
        u = torch.rand((len(near), samples), generator=generator).to(origins.device, origins.dtype)
    else:
        u = torch.full((len(near), samples), 0.5, device=origins.device, dtype=origins.dtype)
    width = ((far - near) / samples)[:, None]
    t = near[:, None] + (bins + u) * width  # (R, S)
    deltas = torch.cat([t[:, 1:] - t[:, :-1], width], dim=1)
    points = (origins[:, None, :] + dirs[:, None, :] * t[..., None]).clamp(-1, 1)
    return RaySamples(points, deltas, hit)


def composite(
    sigma: Tensor, rgb: Tensor, deltas: Tensor, hit: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Volume rendering: sigma (R, S), rgb (R, S, 3) -> colour (R, 3), opacity (R,), weights."""
    sigma = sigma * hit[:, None]
    alpha = 1.0 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], 1), 1)
    weights = alpha * trans[:, :-1]
    return (weights[..., None] * rgb).sum(dim=1), weights.sum(dim=1), weights
