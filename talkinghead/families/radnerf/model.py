"""RAD-NeRF: the audio-driven head field, the deformable torso and how they render a frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from talkinghead.components.audio_net import AudioCodeNet
from talkinghead.components.occupancy import MaxOccupancyGrid
from talkinghead.components.rays import head_rays, pixel_grid
from talkinghead.components.volume import composite, occupied_samples
from talkinghead.families.radnerf.config import ModelConfig
from talkinghead.families.radnerf.head import HeadField
from talkinghead.families.radnerf.torso import TorsoField, pose_vector


@dataclass
class Conditions:
    """Per-frame inputs of B frames (render-time controls)."""

    poses: Tensor  # (B, 4, 4) camera-from-head
    audio: Tensor  # (B, K, W, D) K consecutive audio windows centred on the frame
    eye: Tensor  # (B,) eye aspect ratio
    latent: Tensor | None = None  # (B,) training-frame index of the appearance code; None = mean


@dataclass
class HeadRender:
    """Head rendered on R rays (colour premultiplied by opacity) plus regulariser terms."""

    rgb: Tensor  # (R, 3)
    acc: Tensor  # (R,)
    audio_l1: Tensor  # (R,) mean |x_a| over the ray's samples (0 where the ray is empty)
    eye_gate: Tensor  # (R,) mean eye gate over the ray's samples


class RadNerf(nn.Module):
    """One avatar's renderer; every dataset-specific constant lives in its buffers."""

    def __init__(self, config: ModelConfig, num_frames: int, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.audio = AudioCodeNet(
            feature_dim, config.audio_window, config.attention_window, config.audio_dim
        )
        self.head = HeadField(config)
        self.torso = TorsoField(config)
        self.head_codes = nn.Embedding(num_frames, config.latent_dim)
        self.torso_codes = nn.Embedding(num_frames, config.latent_dim)
        nn.init.normal_(self.head_codes.weight, std=0.01)
        nn.init.normal_(self.torso_codes.weight, std=0.01)
        self.occupancy = MaxOccupancyGrid(config.occupancy_resolution)
        self.register_buffer("mean_translation", torch.zeros(3))
        self.register_buffer("eye_scale", torch.ones(()))
        self.register_buffer("occupancy_threshold", torch.tensor(0.01))
        self.mean_translation: Tensor
        self.eye_scale: Tensor
        self.occupancy_threshold: Tensor

    # -- parameter groups -------------------------------------------------------------
    def head_grid_parameters(self) -> list[nn.Parameter]:
        """Feature grids of the head."""
        return self.head.grid_parameters()

    def head_net_parameters(self) -> list[nn.Parameter]:
        """Networks and codes of the head."""
        grids = {id(p) for p in self.head.grid_parameters()}
        nets = [p for p in self.head.parameters() if id(p) not in grids]
        return [*nets, *self.audio.parameters(), *self.head_codes.parameters()]

    def torso_grid_parameters(self) -> list[nn.Parameter]:
        """Feature grid of the torso."""
        return self.torso.grid_parameters()

    def torso_net_parameters(self) -> list[nn.Parameter]:
        """Networks and codes of the torso."""
        grids = {id(p) for p in self.torso.grid_parameters()}
        nets = [p for p in self.torso.parameters() if id(p) not in grids]
        return [*nets, *self.torso_codes.parameters()]

    # -- conditions -------------------------------------------------------------------
    def _codes(self, table: nn.Embedding, index: Tensor | None, batch: int) -> Tensor:
        if index is None:  # unseen frames: the average appearance
            return table.weight.mean(dim=0, keepdim=True).expand(batch, -1)
        return table(index)

    def audio_code(self, audio: Tensor) -> Tensor:
        """(B, K, W, D) windows -> (B, audio_dim) smoothed audio code."""
        return self.audio(audio.to(self.eye_scale.dtype))

    # -- head -------------------------------------------------------------------------
    def eye_offset(self, eye: Tensor) -> Tensor:
        """Eye ratio relative to the open eye: about 0 open, about -1 closed."""
        return eye * self.eye_scale - 1.0

    def density(self, points: Tensor, audio_code: Tensor) -> Tensor:
        """Density at points (N, 3) under one audio code (A,); the eyes only change colour."""
        return self.head.density(points, audio_code.expand(len(points), -1))

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
        """Render R rays; ray_frame (R,) indexes the per-frame audio_code, eye and latent."""
        cfg = self.config
        threshold = float(self.occupancy_threshold)
        samples = occupied_samples(
            origins,
            dirs,
            self.occupancy,
            threshold,
            cfg.samples_per_ray,
            cfg.candidates_per_ray,
            generator,
        )
        r, s = samples.deltas.shape
        rgb = origins.new_zeros((r, 3))
        acc = origins.new_zeros(r)
        audio_l1 = origins.new_zeros(r)
        gate = origins.new_zeros(r)
        rays = samples.hit.nonzero()[:, 0]
        if len(rays) == 0:
            return HeadRender(rgb, acc, audio_l1, gate)
        frame = ray_frame[rays].repeat_interleave(s)
        out = self.head(
            samples.points[rays].reshape(-1, 3),
            audio_code[frame],
            self.eye_offset(eye[frame]),
            latent[frame],
        )
        hit = samples.hit[rays]
        c, a, _ = composite(
            out.sigma.reshape(-1, s), out.rgb.reshape(-1, s, 3), samples.deltas[rays], hit
        )
        rgb = rgb.index_put((rays,), c)
        acc = acc.index_put((rays,), a)
        audio_l1 = audio_l1.index_put((rays,), out.audio_coord.abs().sum(-1).reshape(-1, s).mean(1))
        gate = gate.index_put((rays,), out.eye_gate.reshape(-1, s).mean(1))
        return HeadRender(rgb, acc, audio_l1, gate)

    # -- torso ------------------------------------------------------------------------
    def render_torso(
        self, pixels: Tensor, size: int, pose: Tensor, latent: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Torso colour (N, 3) and alpha (N,) at integer pixels of a size x size frame."""
        uv = (pixels.to(pose.dtype) + 0.5) / size * 2.0 - 1.0
        return self.torso(uv, pose, latent)

    def pose_vector(self, poses: Tensor) -> Tensor:
        """(B, 4, 4) -> (B, 12) torso conditioning."""
        return pose_vector(poses, self.mean_translation, self.config.bound)

    # -- whole frames -----------------------------------------------------------------
    @torch.no_grad()
    def render_frames(
        self,
        cond: Conditions,
        K: Tensor,
        size: int,
        torso: bool = True,
        chunk: int = 1 << 14,
    ) -> Tensor:
        """RGBA (B, size, size, 4) in [0, 1], colour premultiplied by alpha.

        K is the camera of a size x size crop. Composite over a background with `over`.
        """
        dtype = self.eye_scale.dtype
        device = self.eye_scale.device
        b = len(cond.poses)
        poses = cond.poses.to(device, dtype)
        code = self.audio_code(cond.audio.to(device))
        eye = cond.eye.to(device, dtype)
        head_latent = self._codes(self.head_codes, cond.latent, b)
        torso_latent = self._codes(self.torso_codes, cond.latent, b)
        pose_vec = self.pose_vector(poses)
        pixels = pixel_grid(size, size, device)
        out = torch.empty((b, size * size, 4), dtype=dtype, device=device)
        for i in range(b):
            for lo in range(0, len(pixels), chunk):
                px = pixels[lo : lo + chunk]
                n = len(px)
                frame = torch.zeros(n, dtype=torch.long, device=device)
                o, d = head_rays(
                    px,
                    K.to(device, dtype).expand(n, 3, 3),
                    poses[i : i + 1].expand(n, 4, 4),
                    self.config.bound,
                )
                head = self.render_head(
                    o, d, frame, code[i : i + 1], eye[i : i + 1], head_latent[i : i + 1]
                )
                rgb, alpha = head.rgb, head.acc
                if torso:
                    t_rgb, t_a = self.render_torso(
                        px,
                        size,
                        pose_vec[i : i + 1].expand(n, -1),
                        torso_latent[i : i + 1].expand(n, -1),
                    )
                    rgb = rgb + (1.0 - alpha)[:, None] * t_rgb * t_a[:, None]
                    alpha = alpha + (1.0 - alpha) * t_a
                out[i, lo : lo + n, :3] = rgb
                out[i, lo : lo + n, 3] = alpha
        return out.reshape(b, size, size, 4)
