"""Train and export stages of any family: bounded segments that resume from a checkpoint."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from services.runner import JobContext, stage_task
from services.sources import (
    avatar_of,
    avatar_source,
    family_errors,
    family_of,
    pinned_config,
)
from shared.exports import manifest_key, upload_export_files
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from shared.telemetry import TRAIN_STEPS
from talkinghead.export.artifact import FORMAT, MANIFEST
from talkinghead.families.contract import (
    AvatarSource,
    RendererFamily,
    StepReport,
    TrainingRun,
    TrainOptions,
)

TRAIN_START, TRAIN_END = 0.2, 0.9
PROGRESS_EVERY_S = 0.5  # each report is a database write
LOSS_WINDOW = 25  # steps averaged into the losses shown on the avatar


def checkpoint_prefix(ctx: JobContext) -> str:
    """Where this avatar's training checkpoints live."""
    return tenant_key(ctx.job.tenant_id, "avatars", ctx.job.resource_id, "checkpoints") + "/"


def checkpoint_key(ctx: JobContext, family: str, step: int) -> str:
    """One key per step count.

    A segment that dies after writing never corrupts the resume point: the job state names
    the last checkpoint whose segment was committed.
    """
    return checkpoint_prefix(ctx) + f"{family}-{step:08d}.ckpt"


def prune_checkpoints(ctx: JobContext, keep: str | None) -> None:
    """Delete every stored checkpoint but `keep`: superseded ones and orphans of dead segments.

    Only the holder of the job's current step runs this, and the job state can only ever
    point at `keep` while it holds it, so nothing deleted here can become a resume point.
    """
    for key in ctx.store.list(checkpoint_prefix(ctx)):
        if key != keep:
            ctx.store.delete(key)


def resume_run(
    ctx: JobContext, family: RendererFamily, config: dict[str, Any], source: AvatarSource
) -> TrainingRun:
    """A training run in a fresh scratch dir, loaded from the checkpoint the job state names."""
    options = TrainOptions(
        lpips_path=ctx.settings.lpips_path, segment_steps=ctx.settings.segment_frames
    )
    with family_errors():
        run = family.open_training(source, ctx.workdir / "run", config, options)
    previous = ctx.job.state.get("checkpoint")
    if previous:
        local = ctx.fetch(previous, "resume.ckpt")
        try:
            run.load(local)
        except ValueError as exc:
            raise JobError(
                "checkpoint_incompatible",
                f"this version cannot continue the avatar's training ({exc}); create it again",
            ) from None
        local.unlink()
    return run


class ProgressReporter:
    """Turns a run's per-step reports into job progress (throttled) and loss averages."""

    def __init__(self, ctx: JobContext, start: float, end: float) -> None:
        self.ctx = ctx
        self.start, self.end = start, end
        self.last: StepReport | None = None
        self.recent: deque[dict[str, float]] = deque(maxlen=LOSS_WINDOW)
        self._reported_at = 0.0

    def fraction(self, step: int, total: int) -> float:
        """Job progress at `step` of `total`."""
        return self.start + (self.end - self.start) * min(1.0, step / max(1, total))

    def __call__(self, report: StepReport) -> None:
        self.ctx.check()  # a cancelled job stops within a step, not at the segment's end
        self.last = report
        self.recent.append(report.losses)
        now = time.monotonic()
        if now - self._reported_at >= PROGRESS_EVERY_S:
            self._reported_at = now
            self.ctx.progress(self.fraction(report.step, report.total))

    def losses(self) -> dict[str, float]:
        """The latest step's losses, each averaged over the last steps that reported it."""
        if self.last is None:
            return {}
        keys = self.last.losses.keys()
        return {
            k: round(sum(v) / len(v), 6)
            for k in keys
            if (v := [r[k] for r in self.recent if k in r and math.isfinite(r[k])])
        }


def training_summary(run: TrainingRun, losses: dict[str, float] | None = None) -> dict[str, Any]:
    """What the avatar shows about training (`metrics.training`)."""
    summary = dict(run.summary())
    if losses:
        summary["losses"] = losses
    return summary


@stage_task("talkinghead.train_segment")
def train(ctx: JobContext) -> StepResult:
    """Run one segment of the family's training from the last checkpoint, then store one."""
    avatar = avatar_of(ctx)
    family = family_of(avatar)
    config = pinned_config(ctx, family, avatar)
    previous = ctx.job.state.get("checkpoint")
    prune_checkpoints(ctx, keep=previous)
    run = resume_run(ctx, family, config, avatar_source(ctx, family))
    reporter = ProgressReporter(ctx, TRAIN_START, TRAIN_END)
    with family_errors():
        ran = run.run(run.segment_steps, reporter)
    TRAIN_STEPS.inc(ran)
    ctx.pause()
    ctx.check()
    key = previous
    if ran:
        key = checkpoint_key(ctx, family.name, run.step)
        ctx.store.put_file(key, run.save(ctx.workdir / "segment.ckpt"))
    losses = reporter.losses() or ctx.job.state.get("losses", {})
    return StepResult(
        state={"checkpoint": key, "step": run.step, "config": config, "losses": losses},
        progress=reporter.fraction(run.step, run.total_steps),
        again=not run.done,
        metrics={"training": training_summary(run, losses)},
    )


@stage_task("talkinghead.export")
def export(ctx: JobContext) -> StepResult:
    """Let the family write (and measure) its export; store it, manifest last."""
    avatar = avatar_of(ctx)
    family = family_of(avatar)
    config = pinned_config(ctx, family, avatar)
    source = avatar_source(ctx, family)
    run: TrainingRun | None = None
    if "training" in family.stages:
        if not ctx.job.state.get("checkpoint"):
            raise JobError("internal_error", "training left no checkpoint")
        run = resume_run(ctx, family, config, source)
    out = ctx.workdir / "export"
    info: dict[str, Any] = {"avatar_id": avatar.id, "preset": avatar.preset}
    if run is not None:
        info["step"] = run.step
    with family_errors():
        metrics = dict(family.export(source, run, out, config, info))
    ctx.check()
    # The files first, the manifest (the artifact's key) last: it commits the export.
    upload_export_files(ctx.store, avatar.id, out)
    ctx.save_artifact(
        "renderer",
        manifest_key(avatar.id),
        out / MANIFEST,
        info={"family": family.name, "preset": avatar.preset, "format": FORMAT, **info},
        content_type="application/json",
    )
    if run is not None:
        prune_checkpoints(ctx, keep=ctx.job.state["checkpoint"])
        metrics["training"] = training_summary(run, ctx.job.state.get("losses"))
    return StepResult(progress=1.0, metrics=metrics)
