"""The RAD-NeRF trainer: head, lips and torso stages in resumable segments."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from talkinghead.configs import RadNerfConfig
from talkinghead.data.frames import TrainingData
from talkinghead.data.rays import RayBatch, sample_lips_patches, sample_rays
from talkinghead.devices import default_device
from talkinghead.models.factory import build_model
from talkinghead.models.radnerf import HeadRender
from talkinghead.rendering.rays import head_rays
from talkinghead.training.ema import EMA
from talkinghead.training.losses import alpha_entropy, ssim

CHECKPOINT = "checkpoint.pt"
Progress = Callable[["StepReport"], None]


@dataclass(frozen=True)
class StepReport:
    """What one training step reports to its caller."""

    step: int
    total: int
    stage: str
    losses: dict[str, float]


@dataclass
class TrainState:
    """Counters saved with the weights."""

    step: int = 0
    seconds: float = 0.0
    losses: list[dict[str, float]] = field(default_factory=list)  # one entry per logged step


def _step_seed(seed: int, step: int) -> int:
    # Each step's randomness depends only on (seed, step), so a resumed run draws exactly the
    # rays, jitter and occupancy cells the uninterrupted run would have drawn.
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63)


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


class Trainer:
    """Train one avatar from a dataset directory; checkpoints live in `workdir`."""

    def __init__(
        self,
        dataset: Path,
        workdir: Path,
        config: RadNerfConfig,
        device: torch.device | None = None,
        family: str = "radnerf",
        lpips_path: Path | None = None,
    ) -> None:
        self.config = config
        self.family = family
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device = device or default_device()
        self.data = TrainingData(Path(dataset), config.train.resolution)
        torch.manual_seed(config.train.seed)
        model = build_model(family, config.model, len(self.data), self.data.feature_dim)
        with torch.no_grad():
            model.mean_translation.copy_(torch.from_numpy(self.data.mean_translation()))
            model.eye_scale.fill_(self.data.eye_scale())
            if model.occupancy is not None:
                thr = model.occupancy.sigma_threshold(config.train.occupancy_threshold)
                model.occupancy_threshold.fill_(thr)
        self.model = model.to(self.device)
        t = config.train
        self.optimizer = torch.optim.Adam(
            [
                {"params": model.head_grid_parameters(), "lr": t.lr_grid, "base": t.lr_grid},
                {"params": model.head_net_parameters(), "lr": t.lr_net, "base": t.lr_net},
                {"params": model.torso_grid_parameters(), "lr": t.lr_grid, "base": t.lr_grid},
                {"params": model.torso_net_parameters(), "lr": t.lr_net, "base": t.lr_net},
            ],
            betas=(0.9, 0.99),
            eps=1e-15,
        )
        self.ema = EMA(self.model, t.ema_decay)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._head_names = {
            names[id(p)] for g in self.optimizer.param_groups[:2] for p in g["params"]
        }
        self._torso_names = {
            names[id(p)] for g in self.optimizer.param_groups[2:] for p in g["params"]
        }
        self.state = TrainState()
        self.K = torch.from_numpy(self.data.K).to(self.device)
        self._lpips = load_lpips(lpips_path, self.device) if lpips_path else None
        if (self.workdir / CHECKPOINT).exists():
            self.load(self.workdir / CHECKPOINT)

    # -- schedule ---------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule."""
        return self.config.train.total_steps

    @property
    def done(self) -> bool:
        """True when every step has run."""
        return self.state.step >= self.total_steps

    def stage(self, step: int) -> tuple[str, float]:
        """The stage of `step` and how far into that stage it is (0..1)."""
        t = self.config.train
        if step < t.head_steps:
            return "head", step / max(1, t.head_steps)
        if step < t.head_steps + t.lips_steps:
            return "lips", (step - t.head_steps) / max(1, t.lips_steps)
        return "torso", (step - t.head_steps - t.lips_steps) / max(1, t.torso_steps)

    def _set_lr(self, stage: str, frac: float) -> None:
        t = self.config.train
        # Exponential decay to lr_final_ratio of the initial rate over each stage; the lips
        # stage continues from the head's final rate.
        factor = t.lr_final_ratio if stage == "lips" else t.lr_final_ratio**frac
        for group in self.optimizer.param_groups:
            group["lr"] = group["base"] * factor

    # -- one step -----------------------------------------------------------------------
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

    def _head_loss(self, batch: RayBatch, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
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
        frac = min(1.0, self.state.step / max(1, t.head_steps))
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

    def _torso_loss(self, batch: RayBatch, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
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

    def train_step(self) -> StepReport:
        """Run the next step of the schedule."""
        t, m = self.config.train, self.config.model
        step = self.state.step
        stage, frac = self.stage(step)
        rng = np.random.default_rng(_step_seed(t.seed, step))
        gen = torch.Generator().manual_seed(_step_seed(t.seed, step))
        self.model.train()
        prunes = self.model.occupancy is not None and stage != "torso"
        if prunes and step >= t.occupancy_warmup and step % t.occupancy_every == 0:
            self._update_occupancy(rng, gen)
        self._set_lr(stage, frac)
        if stage == "head":
            batch = sample_rays(
                self.data, rng, t.frames_per_step, t.rays_per_step, t.face_ray_fraction,
                "headless", m.attention_window, t.lips_ray_fraction, t.eye_ray_fraction,
            )  # fmt: skip
            loss, logs = self._head_loss(batch, gen)
        elif stage == "lips":
            batch = sample_lips_patches(
                self.data, rng, t.frames_per_step, t.lips_patch, m.attention_window
            )
            loss, logs = self._head_loss(batch, gen)
        else:
            batch = sample_rays(
                self.data, rng, t.frames_per_step, t.rays_per_step, 0.0, "plate",
                m.attention_window,
            )  # fmt: skip
            loss, logs = self._torso_loss(batch, gen)
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # False only when no ray met an occupied cell this step
            loss.backward()
            self.optimizer.step()
        self.ema.update(self._torso_names if stage == "torso" else self._head_names)
        self.state.step += 1
        logs["loss"] = float(loss.detach())
        return StepReport(self.state.step, self.total_steps, stage, logs)

    def run(self, steps: int | None = None, progress: Progress | None = None) -> int:
        """Run up to `steps` more steps (all remaining when None); returns how many ran.

        A checkpoint is written every `segment_steps` steps and at the end, so a process
        killed at any moment loses at most one segment.
        """
        target = (
            self.total_steps if steps is None else min(self.total_steps, self.state.step + steps)
        )
        segment = self.config.train.segment_steps
        ran = 0
        started = time.perf_counter()
        while self.state.step < target:
            report = self.train_step()
            ran += 1
            if report.step % 25 == 0 or report.step == target:
                self.state.losses.append({"step": report.step, **report.losses})
            if progress is not None:
                progress(report)
            if report.step % segment == 0 and report.step < target:
                self._checkpoint(started)
                started = time.perf_counter()
        if ran:
            self._checkpoint(started)
        return ran

    def _checkpoint(self, started: float) -> None:
        self.state.seconds += time.perf_counter() - started
        self.save()

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit."""
        return {
            "format": 1,
            "family": self.family,
            "config": self.config.to_dict(),
            "num_frames": len(self.data),
            "feature_dim": self.data.feature_dim,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "state": {
                "step": self.state.step,
                "seconds": self.state.seconds,
                "losses": self.state.losses,
            },
        }

    def save(self, path: Path | None = None) -> Path:
        """Write the checkpoint atomically (a crash mid-write keeps the previous one)."""
        path = path or self.workdir / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(self.checkpoint_dict(), tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def load(self, path: Path) -> None:
        """Resume from a checkpoint written by `save`."""
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt.get("format") != 1:
            raise ValueError(f"{path} is not a checkpoint this trainer can resume")
        try:
            # Through from_dict, so a field added later with a default still matches.
            same = RadNerfConfig.from_dict(ckpt["config"]) == self.config
        except (KeyError, TypeError):
            same = False
        if not same:
            raise ValueError("the checkpoint was trained with a different configuration")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.ema.load_state_dict(ckpt["ema"])
        s = ckpt["state"]
        self.state = TrainState(int(s["step"]), float(s["seconds"]), list(s["losses"]))

    def loss_at_end(self) -> float:
        """Mean logged MSE of the last few logged steps (NaN before any)."""
        tail = [e["mse"] for e in self.state.losses[-4:]]
        return float(np.mean(tail)) if tail else math.nan
