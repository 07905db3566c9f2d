"""The generic trainer shell: per-step seeding, stages, learning rates, EMA, exact resume.

It knows no family. A family hands it a `Recipe` (the model plus how to train it), the way
nerfstudio's trainer asks a model for `get_param_groups` and `get_loss_dict`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from talkinghead.components.ema import EMA
from talkinghead.devices import default_device
from talkinghead.families.contract import Progress, StepReport

__all__ = ["CHECKPOINT", "ParamGroup", "Progress", "Recipe", "StepReport", "TrainState", "Trainer"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
LOG_EVERY = 25  # steps between entries of the stored loss log


@dataclass
class ParamGroup:
    """Parameters that share a learning rate and train in the same stages."""

    name: str
    params: list[nn.Parameter]
    lr: float


class Recipe(Protocol):
    """How one family trains its model; every method is called by the trainer shell."""

    @property
    def name(self) -> str:
        """Recorded in checkpoints."""
        ...

    @property
    def model(self) -> nn.Module:
        """The module being trained."""
        ...

    @property
    def seed(self) -> int:
        """Seed of the initial weights and of every step."""
        ...

    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule."""
        ...

    @property
    def segment_steps(self) -> int:
        """A checkpoint every this many steps."""
        ...

    @property
    def ema_decay(self) -> float:
        """Decay of the weights' moving average."""
        ...

    def param_groups(self) -> list[ParamGroup]:
        """Optimiser groups with their base learning rates (order is part of checkpoints)."""
        ...

    def stage(self, step: int) -> tuple[str, float]:
        """The stage of `step` and how far into it (0..1)."""
        ...

    def lr_factor(self, stage: str, fraction: float) -> float:
        """Multiplier of every group's base rate at this point of the schedule."""
        ...

    def trained_groups(self, stage: str) -> set[str]:
        """Names of the groups a stage trains: their weights enter the EMA."""
        ...

    def before_step(
        self, step: int, stage: str, rng: np.random.Generator, gen: torch.Generator
    ) -> None:
        """Work that is not part of the loss (e.g. an occupancy grid update)."""
        ...

    def loss(
        self, step: int, stage: str, rng: np.random.Generator, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss of one batch drawn with `rng` / `gen`, and the values to log."""
        ...

    def evaluate(self, limit: int) -> dict[str, float]:
        """Scores of at most `limit` held-out frames (0: all) with the model's current weights."""
        ...

    def config_dict(self) -> dict[str, Any]:
        """The JSON config (stored in checkpoints)."""
        ...

    def same_config(self, stored: dict[str, Any]) -> bool:
        """True when a checkpoint's config is this run's (through the config's own parser)."""
        ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """Extra facts a checkpoint records (dataset size, feature width)."""
        ...


@dataclass
class TrainState:
    """Counters saved with the weights."""

    step: int = 0
    seconds: float = 0.0
    losses: list[dict[str, float]] = field(default_factory=list)  # one entry per logged step


def step_seed(seed: int, step: int) -> int:
    """The seed of one step.

    Each step's randomness depends only on (seed, step), so a resumed run draws exactly what
    the uninterrupted run would have drawn.
    """
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63)


class Trainer:
    """Runs a recipe's schedule in resumable segments; checkpoints live in `workdir`."""

    def __init__(
        self,
        build: Callable[[torch.device], Recipe],
        workdir: Path,
        seed: int,
        device: torch.device | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device = device or default_device()
        torch.manual_seed(seed)  # the model's initial weights
        self.recipe = build(self.device)
        self.model = self.recipe.model
        groups = self.recipe.param_groups()
        self._group_names = [g.name for g in groups]
        self.optimizer = torch.optim.Adam(
            [{"params": g.params, "lr": g.lr, "base": g.lr} for g in groups],
            betas=(0.9, 0.99),
            eps=1e-15,
        )
        self.ema = EMA(self.model, self.recipe.ema_decay)
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._names_of = {g.name: {names[id(p)] for p in g.params} for g in groups}
        self.state = TrainState()
        if (self.workdir / CHECKPOINT).exists():
            self.load(self.workdir / CHECKPOINT)

    # -- schedule ---------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Steps run so far."""
        return self.state.step

    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule."""
        return self.recipe.total_steps

    @property
    def segment_steps(self) -> int:
        """Steps between checkpoints, and per training task."""
        return self.recipe.segment_steps

    @property
    def done(self) -> bool:
        """True when every step has run."""
        return self.state.step >= self.total_steps

    def stage(self, step: int) -> tuple[str, float]:
        """The stage of `step` and how far into that stage it is (0..1)."""
        return self.recipe.stage(step)

    # -- one step -----------------------------------------------------------------------
    def train_step(self) -> StepReport:
        """Run the next step of the schedule."""
        step = self.state.step
        stage, frac = self.recipe.stage(step)
        rng = np.random.default_rng(step_seed(self.recipe.seed, step))
        gen = torch.Generator().manual_seed(step_seed(self.recipe.seed, step))
        self.model.train()
        self.recipe.before_step(step, stage, rng, gen)
        factor = self.recipe.lr_factor(stage, frac)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base"] * factor
        loss, logs = self.recipe.loss(step, stage, rng, gen)
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # False when nothing trainable was touched (e.g. no ray hit)
            loss.backward()
            self.optimizer.step()
        trained: set[str] = set()
        for name in self.recipe.trained_groups(stage):
            trained |= self._names_of[name]
        self.ema.update(trained)
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
        segment = self.recipe.segment_steps
        ran = 0
        started = time.perf_counter()
        while self.state.step < target:
            report = self.train_step()
            ran += 1
            if report.step % LOG_EVERY == 0 or report.step == target:
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

    def evaluate(self, limit: int = 0) -> dict[str, float]:
        """Held-out scores with the averaged (EMA) weights, the ones an avatar ships."""
        with self.ema.applied():
            return self.recipe.evaluate(limit)

    def summary(self) -> dict[str, Any]:
        """What the avatar shows about training (`metrics.training`)."""
        stage, _ = self.stage(max(0, min(self.state.step, self.total_steps) - 1))
        return {
            "steps": self.state.step,
            "total_steps": self.total_steps,
            "stage": stage,
            "seconds": round(self.state.seconds, 3),
        }

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit."""
        return {
            "format": CHECKPOINT_FORMAT,
            "family": self.recipe.name,
            "config": self.recipe.config_dict(),
            **self.recipe.checkpoint_meta(),
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
        """Resume from a checkpoint written by `save`; ValueError when it does not fit."""
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a checkpoint this trainer can resume")
        if ckpt.get("family", self.recipe.name) != self.recipe.name:
            raise ValueError(f"the checkpoint belongs to {ckpt.get('family')!r}")
        try:
            same = self.recipe.same_config(ckpt["config"])
        except (KeyError, TypeError, ValueError):
            same = False
        if not same:
            raise ValueError("the checkpoint was trained with a different configuration")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.ema.load_state_dict(ckpt["ema"])
        s = ckpt["state"]
        self.state = TrainState(int(s["step"]), float(s["seconds"]), list(s["losses"]))

    def loss_at_end(self, key: str = "mse") -> float:
        """Mean of `key` over the last few logged steps (NaN before any)."""
        tail = [e[key] for e in self.state.losses[-4:] if key in e]
        return float(np.mean(tail)) if tail else math.nan
