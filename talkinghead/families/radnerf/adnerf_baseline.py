"""The benchmark baseline: an AD-NeRF style implicit NeRF (one big MLP, hierarchical sampling).

Fixed by issue 4 so the comparison with RAD-NeRF is fair: same data, same rays per step, same
loss, same trainer, same audio encoder; only the field and the sampling differ.

Design choices (where NeRF / AD-NeRF leave a choice):
- Position: the point itself plus sin/cos at 10 octaves (63 values), as in NeRF.
- Conditions: the 64-d audio code of the same `AudioCodeNet` RAD-NeRF uses, and the scaled eye
  ratio, are concatenated to the encoded position (AD-NeRF concatenates audio the same way;
  the eye input gives the baseline the same information RAD-NeRF gets).
- Trunk: 8 ReLU layers of 256 with the input re-concatenated before the 5th layer (NeRF's
  skip); density = softplus of one linear unit (mip-NeRF's choice: NeRF's ReLU can start
  dead, zero density everywhere and so no gradient, which happened here); colour from a 256
  feature plus the
  per-frame appearance code through one 128-wide layer, sigmoid. No view direction: the
  RAD-NeRF head has none either, and a face seen from a near-frontal camera gains nothing.
- Sampling: 64 stratified coarse samples inside the head box [-1, 1]^3, then 64 importance
  samples drawn from the coarse weights; the fine render uses all 128, sorted (NeRF).
  One network serves both levels (NeRF trains two): the coarse pass runs without gradients,
  and the fine render, which contains the 64 stratified points, supervises the network along
  the whole ray, so a separate coarse loss adds cost but no information. The loss is on the
  fine render only. No occupancy grid, no early ray termination.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkinghead.components.audio_net import AudioCodeNet
from talkinghead.components.rays import box_intersection, head_rays, pixel_grid
from talkinghead.components.volume import composite
from talkinghead.families.radnerf.config import ModelConfig
from talkinghead.families.radnerf.model import Conditions, HeadRender


def positional_encoding(x: Tensor, frequencies: int) -> Tensor:
    """NeRF's encoding: (N, C) -> (N, C * (1 + 2 * frequencies)), the input first."""
    bands = 2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)
    xb = x.unsqueeze(-1) * bands  # (N, C, F)
    return torch.cat([x, torch.sin(xb).flatten(1), torch.cos(xb).flatten(1)], dim=-1)


def stratified_depths(
    near: Tensor, far: Tensor, samples: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """`samples` depths per ray, one per equal stratum of [near, far]; and the stratum edges.

    Jittered inside each stratum with `generator` (training), stratum centres without it.
    """
    steps = torch.linspace(0.0, 1.0, samples + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * steps  # (R, S + 1)
    if generator is not None:
        u = torch.rand((len(near), samples), generator=generator).to(near.device, near.dtype)
    else:
        u = torch.full((len(near), samples), 0.5, device=near.device, dtype=near.dtype)
    return edges[:, :-1] + (edges[:, 1:] - edges[:, :-1]) * u, edges


def sample_pdf(
    edges: Tensor, weights: Tensor, samples: int, generator: torch.Generator | None
) -> Tensor:
    """Inverse-transform sampling of the piecewise-constant pdf `weights` (R, M) on `edges`.

    NeRF's hierarchical sampling; evenly spaced quantiles without `generator` (rendering).
    """
    w = weights.detach() + 1e-5  # empty rays fall back to uniform sampling
    cdf = torch.cumsum(w / w.sum(dim=1, keepdim=True), dim=1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], dim=1).clamp(max=1.0)  # (R, M + 1)
    r = len(edges)
    if generator is not None:
        u = torch.rand((r, samples), generator=generator).to(edges.device, edges.dtype)
    else:
        q = torch.linspace(0.0, 1.0, samples + 2, device=edges.device, dtype=edges.dtype)
        u = q[1:-1].expand(r, samples)
    u = u.contiguous()
    m = weights.shape[1]
    above = torch.searchsorted(cdf, u, right=True).clamp(1, m)
    below = above - 1
    c0, c1 = cdf.gather(1, below), cdf.gather(1, above)
    e0, e1 = edges.gather(1, below), edges.gather(1, above)
    denom = torch.where(c1 - c0 < 1e-5, torch.ones_like(c0), c1 - c0)
    return e0 + (u - c0) / denom * (e1 - e0)


def _deltas(t: Tensor, far: Tensor) -> Tensor:
    """Step lengths between sorted depths (R, S); the last one runs to the box's far side."""
    return torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:])], dim=1).clamp(min=0.0)


class ImplicitHeadField(nn.Module):
    """(PE(x), audio code, eye, latent) -> density, colour: NeRF's 8 x 256 MLP with one skip."""

    POS_FREQS = 10
    WIDTH = 256
    DEPTH = 8
    SKIP = 4  # the input joins again before layer 5 (index 4), as NeRF's `skips=[4]`

    def __init__(self, audio_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.in_dim = 3 * (1 + 2 * self.POS_FREQS) + audio_dim + 1
        layers = []
        for i in range(self.DEPTH):
            inp = self.in_dim if i == 0 else self.WIDTH
            if i == self.SKIP:
                inp += self.in_dim
            layers.append(nn.Linear(inp, self.WIDTH))
        self.layers = nn.ModuleList(layers)
        self.sigma = nn.Linear(self.WIDTH, 1)
        self.feature = nn.Linear(self.WIDTH, self.WIDTH)
        self.color = nn.Sequential(
            nn.Linear(self.WIDTH + latent_dim, self.WIDTH // 2),
            nn.ReLU(inplace=True),
            nn.Linear(self.WIDTH // 2, 3),
        )

    def forward(
        self, x: Tensor, audio: Tensor, eye: Tensor, latent: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Points x (N, 3) in [-1, 1]^3 with per-point conditions -> sigma (N,), rgb (N, 3)."""
        inp = torch.cat([positional_encoding(x, self.POS_FREQS), audio, eye[:, None]], dim=-1)
        h = inp
        for i, layer in enumerate(self.layers):
            if i == self.SKIP:
                h = torch.cat([inp, h], dim=-1)
            h = F.relu(layer(h))
        sigma = F.softplus(self.sigma(h)[:, 0])
        rgb = torch.sigmoid(self.color(torch.cat([self.feature(h), latent], dim=-1)))
        return sigma, rgb


class BaselineNerf(nn.Module):
    """The head renderer of the benchmarks, with the interface the trainer's head stage uses."""

    COARSE_SAMPLES = 64
    FINE_SAMPLES = 64

    def __init__(self, config: ModelConfig, num_frames: int, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.audio = AudioCodeNet(
            feature_dim, config.audio_window, config.attention_window, config.audio_dim
        )
        self.field = ImplicitHeadField(config.audio_dim, config.latent_dim)
        self.head_codes = nn.Embedding(num_frames, config.latent_dim)
        self.torso_codes = nn.Embedding(num_frames, config.latent_dim)  # unused: no torso
        nn.init.normal_(self.head_codes.weight, std=0.01)
        nn.init.normal_(self.torso_codes.weight, std=0.01)
        self.occupancy = None  # the baseline samples every ray in full
        self.register_buffer("mean_translation", torch.zeros(3))
        self.register_buffer("eye_scale", torch.ones(()))
        self.register_buffer("occupancy_threshold", torch.tensor(0.01))
        self.mean_translation: Tensor
        self.eye_scale: Tensor
        self.occupancy_threshold: Tensor

    # -- parameter groups (the trainer's four optimiser groups) --------------------------
    def head_grid_parameters(self) -> list[nn.Parameter]:
        """No feature grids."""
        return []

    def head_net_parameters(self) -> list[nn.Parameter]:
        """The MLP, the audio encoder and the appearance codes."""
        return [*self.field.parameters(), *self.audio.parameters(), *self.head_codes.parameters()]

    def torso_grid_parameters(self) -> list[nn.Parameter]:
        """No torso."""
        return []

    def torso_net_parameters(self) -> list[nn.Parameter]:
        """No torso."""
        return []

    # -- head -------------------------------------------------------------------------
    def audio_code(self, audio: Tensor) -> Tensor:
        """(B, K, W, D) windows -> (B, audio_dim) smoothed audio code."""
        return self.audio(audio.to(self.eye_scale.dtype))

    def _query(
        self, points: Tensor, frame: Tensor, audio: Tensor, eye: Tensor, latent: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Field at points (R, S, 3) of rays whose frame is `frame` (R,)."""
        r, s, _ = points.shape
        per_point = frame.repeat_interleave(s)
        sigma, rgb = self.field(
            points.reshape(-1, 3),
            audio[per_point],
            eye[per_point] * self.eye_scale,
            latent[per_point],
        )
        return sigma.reshape(r, s), rgb.reshape(r, s, 3)

    def render_head(
        self,
        origins: Tensor,
        dirs: Tensor,
        ray_frame: Tensor,
        audio_code: Tensor,
        eye: Tensor,
        latent: Tensor,
        generator: torch.Generator | None = None,
    ) -> HeadRender:
        """Render R rays (fine level); ray_frame (R,) indexes the per-frame conditions."""
        near, far, hit = box_intersection(origins, dirs)
        r = len(origins)
        rgb = origins.new_zeros((r, 3))
        acc = origins.new_zeros(r)
        zeros = origins.new_zeros(r)
        rays = hit.nonzero()[:, 0]
        if len(rays) == 0:
            return HeadRender(rgb, acc, zeros, zeros)
        o, d, near, far = origins[rays], dirs[rays], near[rays], far[rays]
        frame, hit = ray_frame[rays], hit[rays]
        t_coarse, edges = stratified_depths(near, far, self.COARSE_SAMPLES, generator)
        with torch.no_grad():  # the coarse level only places the fine samples
            pts = (o[:, None] + d[:, None] * t_coarse[..., None]).clamp(-1, 1)
            sigma, colour = self._query(pts, frame, audio_code, eye, latent)
            _, _, weights = composite(sigma, colour, _deltas(t_coarse, far), hit)
            t_fine = sample_pdf(edges, weights, self.FINE_SAMPLES, generator)
            t, _ = torch.sort(torch.cat([t_coarse, t_fine], dim=1), dim=1)
        pts = (o[:, None] + d[:, None] * t[..., None]).clamp(-1, 1)
        sigma, colour = self._query(pts, frame, audio_code, eye, latent)
        c, a, _ = composite(sigma, colour, _deltas(t, far), hit)
        rgb = rgb.index_put((rays,), c)
        acc = acc.index_put((rays,), a)
        return HeadRender(rgb, acc, zeros, zeros)

    # -- whole frames -----------------------------------------------------------------
    @torch.no_grad()
    def render_frames(
        self,
        cond: Conditions,
        K: Tensor,
        size: int,
        torso: bool = False,
        chunk: int = 2048,
    ) -> Tensor:
        """Head RGBA (B, size, size, 4) in [0, 1], colour premultiplied by alpha.

        The baseline has no torso; `torso=True` raises rather than return a wrong frame.
        """
        if torso:
            raise NotImplementedError("the baseline renders the head only (torso=False)")
        dtype = self.eye_scale.dtype
        device = self.eye_scale.device
        b = len(cond.poses)
        poses = cond.poses.to(device, dtype)
        code = self.audio_code(cond.audio.to(device))
        eye = cond.eye.to(device, dtype)
        if cond.latent is None:  # unseen frames: the average appearance
            latent = self.head_codes.weight.mean(dim=0, keepdim=True).expand(b, -1)
        else:
            latent = self.head_codes(cond.latent.to(device))
        cam = K.to(device, dtype)
        pixels = pixel_grid(size, size, device)
        out = torch.empty((b, size * size, 4), dtype=dtype, device=device)
        for i in range(b):
            for lo in range(0, len(pixels), chunk):
                px = pixels[lo : lo + chunk]
                n = len(px)
                o, d = head_rays(
                    px, cam.expand(n, 3, 3), poses[i : i + 1].expand(n, 4, 4), self.config.bound
                )
                frame = torch.zeros(n, dtype=torch.long, device=device)
                head = self.render_head(
                    o, d, frame, code[i : i + 1], eye[i : i + 1], latent[i : i + 1]
                )
                out[i, lo : lo + n, :3] = head.rgb
                out[i, lo : lo + n, 3] = head.acc
        return out.reshape(b, size, size, 4)
