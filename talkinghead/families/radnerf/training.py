"""How RAD-NeRF trains: head, lips and torso stages, their losses and parameter groups."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from talkinghead.components.losses import alpha_entropy, ssim
from talkinghead.components.rays import head_rays
from talkinghead.data.frames import TrainingData
from talkinghead.data.ray_batches import RayBatch, sample_lips_patches, sample_rays
from talkinghead.families.radnerf.adnerf_baseline import BaselineNerf
from talkinghead.families.radnerf.config import ModelConfig, RadNerfConfig
from talkinghead.families.radnerf.model import HeadRender, RadNerf
from talkinghead.training.trainer import ParamGroup, Trainer

# The fields a recipe can train: RAD-NeRF itself, and the AD-NeRF style benchmark baseline
# that shares its data, rays, losses and audio network.
MODELS: dict[str, Callable[[ModelConfig, int, int], RadNerf]] = {
    "radnerf": RadNerf,
    "adnerf": BaselineNerf,  # type: ignore[dict-item]  # same interface, its own fields
}


def load_lpips(path: Path, device: torch.device) -> torch.nn.Module:
    """An LPIPS network from a local TorchScript file: (B,3,H,W) pairs in [-1, 1] -> distances.

    No LPIPS weights can be downloaded at run time, so the lips stage uses 1 - SSIM unless an
    operator exports LPIPS (e.g. `torch.jit.script(lpips.LPIPS(net="alex"))`) to a file.
    """
    if not Path(path).is_file():
        raise ValueError(f"LPIPS model {path} does not exist")
    module = torch.jit.load(str(path), map_location=device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class RadNerfRecipe:
    """The RAD-NeRF schedule over one avatar's dataset (satisfies the trainer's Recipe)."""

    def __init__(
        self,
        data: TrainingData,
        config: RadNerfConfig,
        device: torch.device,
        model: str = "radnerf",
        lpips_path: Path | None = None,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
        self.name = "radnerf" if model == "radnerf" else model
        self.data = data
        self.config = config
        t = config.train
        self.seed = t.seed
        self.total_steps = t.total_steps
        self.segment_steps = t.segment_steps
        self.ema_decay = t.ema_decay
        net = MODELS[model](config.model, len(data), data.feature_dim)
        with torch.no_grad():
            net.mean_translation.copy_(torch.from_numpy(data.mean_translation()))
            net.eye_scale.fill_(data.eye_scale())
            if net.occupancy is not None:
                thr = net.occupancy.sigma_threshold(t.occupancy_threshold)
                net.occupancy_threshold.fill_(thr)
        self.device = device
        self.model: RadNerf = net.to(device)
        self.K = torch.from_numpy(data.K).to(device)
        self._lpips = load_lpips(lpips_path, device) if lpips_path else None

    # -- the Recipe contract --------------------------------------------------------------
    def param_groups(self) -> list[ParamGroup]:
        """Grids at the grid rate, networks at the network rate; head apart from torso."""
        t, m = self.config.train, self.model
        return [
            ParamGroup("head_grid", m.head_grid_parameters(), t.lr_grid),
            ParamGroup("head_net", m.head_net_parameters(), t.lr_net),
            ParamGroup("torso_grid", m.torso_grid_parameters(), t.lr_grid),
            ParamGroup("torso_net", m.torso_net_parameters(), t.lr_net),
        ]

    def stage(self, step: int) -> tuple[str, float]:
        """head, then lips fine-tuning, then torso."""
        t = self.config.train
        if step < t.head_steps:
            return "head", step / max(1, t.head_steps)
        if step < t.head_steps + t.lips_steps:
            return "lips", (step - t.head_steps) / max(1, t.lips_steps)
        return "torso", (step - t.head_steps - t.lips_steps) / max(1, t.torso_steps)

    def lr_factor(self, stage: str, fraction: float) -> float:
        """Exponential decay to lr_final_ratio over each stage; lips keep the head's final rate."""
        t = self.config.train
        return t.lr_final_ratio if stage == "lips" else t.lr_final_ratio**fraction

    def trained_groups(self, stage: str) -> set[str]:
        """The head trains first (and in the lips stage), then only the torso."""
        return {"torso_grid", "torso_net"} if stage == "torso" else {"head_grid", "head_net"}

    def before_step(
        self, step: int, stage: str, rng: np.random.Generator, gen: torch.Generator
    ) -> None:
        """Refresh the maximum occupancy grid now and then while the head trains."""
        t = self.config.train
        prunes = self.model.occupancy is not None and stage != "torso"
        if prunes and step >= t.occupancy_warmup and step % t.occupancy_every == 0:
            self._update_occupancy(rng, gen)

    def loss(
        self, step: int, stage: str, rng: np.random.Generator, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """Rays (head, torso) or a lips patch, drawn with the step's generators."""
        t, m = self.config.train, self.config.model
        if stage == "head":
            batch = sample_rays(
                self.data, rng, t.frames_per_step, t.rays_per_step, t.face_ray_fraction,
                "headless", m.attention_window, t.lips_ray_fraction, t.eye_ray_fraction,
            )  # fmt: skip
            return self._head_loss(batch, step, gen)
        if stage == "lips":
            batch = sample_lips_patches(
                self.data, rng, t.frames_per_step, t.lips_patch, m.attention_window
            )
            return self._head_loss(batch, step, gen)
        batch = sample_rays(
            self.data, rng, t.frames_per_step, t.rays_per_step, 0.0, "plate", m.attention_window,
        )  # fmt: skip
        return self._torso_loss(batch)

    def evaluate(self, limit: int) -> dict[str, float]:
        """PSNR, SSIM, landmarks and the lip-sync proxy on the held-out frames."""
        from talkinghead.families.radnerf.evaluation import evaluate

        return evaluate(self.model, self.data, limit=limit)

    def config_dict(self) -> dict[str, Any]:
        """The preset as stored in checkpoints."""
        return self.config.to_dict()

    def same_config(self, stored: dict[str, Any]) -> bool:
        """Through from_dict, so a field added later with a default still matches."""
        return RadNerfConfig.from_dict(stored) == self.config

    def checkpoint_meta(self) -> dict[str, Any]:
        """The dataset facts the model's shapes depend on."""
        return {"num_frames": len(self.data), "feature_dim": self.data.feature_dim}

    # -- losses ---------------------------------------------------------------------------
    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _render_head(self, batch: RayBatch, gen: torch.Generator | None) -> HeadRender:
        frames = self._tensor(batch.frames)
        ray_frame = self._tensor(batch.ray_frame)
        poses = self._tensor(batch.poses)[ray_frame]
        px = self._tensor(batch.pixels)
        o, d = head_rays(px, self.K.expand(len(px), 3, 3), poses, self.config.model.bound)
        code = self.model.audio_code(self._tensor(batch.audio))
        latent = self.model.head_codes(frames)
        return self.model.render_head(o, d, ray_frame, code, self._tensor(batch.eye), latent, gen)

    def _head_loss(
        self, batch: RayBatch, step: int, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        t = self.config.train
        out = self._render_head(batch, gen)
        pred = out.rgb + (1.0 - out.acc)[:, None] * self._tensor(batch.behind)
        target = self._tensor(batch.target)
        mse = F.mse_loss(pred, target)
        outside_face = ~self._tensor(batch.in_face)
        outside_eyes = ~self._tensor(batch.in_eyes)
        dyn = (out.audio_l1 * outside_face).sum() / outside_face.sum().clamp(min=1)
        eye = (out.eye_gate * outside_eyes).sum() / outside_eyes.sum().clamp(min=1)
        ent = alpha_entropy(out.acc)
        # The eye regulariser waits until half-way through the head stage: from the start it
        # silences the eye feature everywhere before the rare blink frames have taught it.
        frac = min(1.0, step / max(1, t.head_steps))
        eye_w = t.eye_weight * min(1.0, max(0.0, (frac - 0.5) / 0.25))
        loss = mse + t.entropy_weight * ent + t.dynamic_weight * dyn + eye_w * eye
        logs = {
            k: float(v.detach())
            for k, v in (("mse", mse), ("entropy", ent), ("dynamic", dyn), ("eye", eye))
        }
        if batch.patch:
            p = batch.patch
            as_img = lambda x: x.reshape(-1, p, p, 3).permute(0, 3, 1, 2)  # noqa: E731
            if self._lpips is not None:  # the paper's LPIPS, when an operator provides one
                structural = self._lpips(as_img(pred) * 2 - 1, as_img(target) * 2 - 1).mean()
            else:
                structural = 1.0 - ssim(as_img(pred), as_img(target))
            loss = loss + t.patch_weight * structural
            logs["patch"] = float(structural.detach())
        return loss, logs

    def _torso_loss(self, batch: RayBatch) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():  # the head is frozen once the torso stage starts
            head = self._render_head(batch, None)
        frames = self._tensor(batch.frames)
        ray_frame = self._tensor(batch.ray_frame)
        pose = self.model.pose_vector(self._tensor(batch.poses))[ray_frame]
        latent = self.model.torso_codes(frames)[ray_frame]
        rgb, alpha = self.model.render_torso(
            self._tensor(batch.pixels), self.data.size, pose, latent
        )
        behind = self._tensor(batch.behind)
        torso = rgb * alpha[:, None] + (1.0 - alpha)[:, None] * behind
        pred = head.rgb + (1.0 - head.acc)[:, None] * torso
        mse = F.mse_loss(pred, self._tensor(batch.target))
        ent = alpha_entropy(alpha)
        loss = mse + self.config.train.entropy_weight * ent
        return loss, {"mse": float(mse.detach()), "entropy": float(ent.detach())}

    def _update_occupancy(self, rng: np.random.Generator, gen: torch.Generator) -> None:
        t, k = self.config.train, self.config.model.attention_window
        frame = int(rng.choice(self.data.train_ids))
        with torch.no_grad():
            code = self.model.audio_code(self._tensor(self.data.audio(frame, k)[None]))[0]
            fraction = 0.25

            def density(points: Tensor) -> Tensor:
                return self.model.density(points.to(self.device), code)

            self.model.occupancy.update(density, t.occupancy_decay, fraction, gen)


class RadNerfTrainer(Trainer):
    """The trainer shell over a RAD-NeRF recipe, built from a dataset directory."""

    def __init__(
        self,
        dataset: Path,
        workdir: Path,
        config: RadNerfConfig,
        device: torch.device | None = None,
        model: str = "radnerf",
        lpips_path: Path | None = None,
    ) -> None:
        data = TrainingData(Path(dataset), config.train.resolution)

        def build(dev: torch.device) -> RadNerfRecipe:
            return RadNerfRecipe(data, config, dev, model, lpips_path)

        super().__init__(build, workdir, config.train.seed, device)
        self.recipe: RadNerfRecipe = self.recipe
        self.model: RadNerf = self.recipe.model

    @property
    def data(self) -> TrainingData:
        """The avatar's dataset at the training resolution."""
        return self.recipe.data

    @property
    def config(self) -> RadNerfConfig:
        """The preset being trained."""
        return self.recipe.config

    @property
    def K(self) -> Tensor:
        """The camera of the training resolution, on the training device."""
        return self.recipe.K
