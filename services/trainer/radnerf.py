"""Train and export stages of `radnerf` avatars: Trainer segments, checkpoints in the store."""

from __future__ import annotations

import math
import tarfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from services.preprocess.tasks import artifact_key
from services.runner import JobContext
from shared.db.models import Avatar
from shared.exports import manifest_key, upload_export_files
from shared.jobs import JobError, StepResult
from shared.storage import tenant_key
from shared.telemetry import TRAIN_STEPS
from talkinghead.configs import RadNerfConfig, preset
from talkinghead.export.artifact import FORMAT, MANIFEST, ExportedAvatar
from talkinghead.export.package import export_avatar, max_difference
from talkinghead.models.driving import assets_of
from talkinghead.training.evaluation import evaluate, frame_conditions
from talkinghead.training.trainer import CHECKPOINT, StepReport, Trainer

FAMILY = "radnerf"
EXPORT_CHECK_FRAMES = 3  # held-out frames rendered both ways to check the traced export
PROGRESS_EVERY_S = 0.5  # each report is a database write
LOSS_WINDOW = 25  # steps averaged into the losses shown on the avatar


def checkpoint_prefix(ctx: JobContext) -> str:
    """Where this avatar's training checkpoints live."""
    return tenant_key(ctx.job.tenant_id, "avatars", ctx.job.resource_id, "checkpoints") + "/"


def checkpoint_key(ctx: JobContext, step: int) -> str:
    # One key per step count, so a segment that dies after writing never corrupts the resume
    # point: the job state names the last checkpoint whose segment was committed.
    return checkpoint_prefix(ctx) + f"{FAMILY}-{step:08d}.pt"


def prune_checkpoints(ctx: JobContext, keep: str | None) -> None:
    """Delete every stored checkpoint but `keep`: superseded ones and orphans of dead segments.

    Only the holder of the job's current step runs this, and the job state can only ever
    point at `keep` while it holds it, so nothing deleted here can become a resume point.
    """
    for key in ctx.store.list(checkpoint_prefix(ctx)):
        if key != keep:
            ctx.store.delete(key)


def training_config(ctx: JobContext, avatar: Avatar) -> RadNerfConfig:
    """The avatar's preset, pinned in the job state by its first segment.

    Later segments and the export use the pinned copy, so a deployment that retunes a preset
    does not break the avatars already training with it.
    """
    pinned = ctx.job.state.get("config")
    if pinned is None:
        try:
            return preset(avatar.preset)
        except ValueError as exc:
            raise JobError("unknown_preset", str(exc)) from None
    try:
        return RadNerfConfig.from_dict(pinned)
    except (KeyError, TypeError, ValueError) as exc:
        raise JobError(
            "checkpoint_incompatible",
            f"this version cannot continue the avatar's training ({exc}); create it again",
        ) from None


def extract_dataset(ctx: JobContext) -> Path:
    """Download the dataset tar into the step's scratch dir and unpack it; returns its root."""
    archive = ctx.fetch(artifact_key(ctx, "dataset"), "dataset.tar")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise JobError("internal_error", f"unexpected entry {member.name!r} in dataset")
        # The checks above are what `filter="data"` does, for Pythons that lack it.
        safe: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(ctx.workdir, **safe)
    archive.unlink()
    root = ctx.workdir / "dataset"
    if not (root / "manifest.json").is_file():
        raise JobError("internal_error", "the stored dataset has no manifest")
    return root


def resume_trainer(ctx: JobContext, config: RadNerfConfig, dataset: Path) -> Trainer:
    """A Trainer in a fresh run dir, loaded from the checkpoint the job state names."""
    run_dir = ctx.workdir / "run"
    trainer = Trainer(dataset, run_dir, config, lpips_path=ctx.settings.lpips_path)
    previous = ctx.job.state.get("checkpoint")
    if previous:
        local = ctx.fetch(previous, "resume.pt")
        try:
            trainer.load(local)
        except ValueError as exc:
            raise JobError(
                "checkpoint_incompatible",
                f"this version cannot continue the avatar's training ({exc}); create it again",
            ) from None
        local.unlink()
    return trainer


class ProgressReporter:
    """Turns the trainer's per-step reports into job progress (throttled) and loss averages."""

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


def training_summary(trainer: Trainer, losses: dict[str, float] | None = None) -> dict[str, Any]:
    """What the avatar shows about training (`metrics.training`)."""
    stage, _ = trainer.stage(max(0, min(trainer.state.step, trainer.total_steps) - 1))
    summary: dict[str, Any] = {
        "steps": trainer.state.step,
        "total_steps": trainer.total_steps,
        "stage": stage,
        "seconds": round(trainer.state.seconds, 3),
    }
    if losses:
        summary["losses"] = losses
    return summary


def train_segment(ctx: JobContext, avatar: Avatar, start: float, end: float) -> StepResult:
    """Run one segment (`segment_steps` steps) from the last stored checkpoint."""
    config = training_config(ctx, avatar)
    previous = ctx.job.state.get("checkpoint")
    prune_checkpoints(ctx, keep=previous)
    trainer = resume_trainer(ctx, config, extract_dataset(ctx))
    reporter = ProgressReporter(ctx, start, end)
    ran = trainer.run(config.train.segment_steps, reporter)
    TRAIN_STEPS.inc(ran)
    ctx.pause()
    ctx.check()
    key = previous
    if ran:
        key = checkpoint_key(ctx, trainer.state.step)
        ctx.store.put_file(key, trainer.workdir / CHECKPOINT)
    losses = reporter.losses() or ctx.job.state.get("losses", {})
    return StepResult(
        state={
            "checkpoint": key,
            "step": trainer.state.step,
            "config": config.to_dict(),
            "losses": losses,
        },
        progress=reporter.fraction(trainer.state.step, trainer.total_steps),
        again=not trainer.done,
        metrics={"training": training_summary(trainer, losses)},
    )


def _finite(value: float) -> float | None:
    # JSON (and PostgreSQL's json type) has no NaN: an undefined score is null.
    return round(float(value), 4) if math.isfinite(value) else None


def export_renderer(ctx: JobContext, avatar: Avatar, trainer: Trainer) -> Path:
    """Trace the EMA weights into the TorchScript artifact and check it against eager mode.

    Call inside `trainer.ema.applied()`. Returns the local export directory.
    """
    data = trainer.data
    assets = assets_of(data)
    out = ctx.workdir / "export"
    info = {"avatar_id": avatar.id, "preset": avatar.preset, "step": trainer.state.step}
    export_avatar(trainer.model, assets, data.reader.manifest.audio, out, info=info)
    exported = ExportedAvatar.load(out, trainer.device)
    ids = [int(i) for i in data.val_ids[:EXPORT_CHECK_FRAMES]] or [0]
    cond = frame_conditions(data, ids, trainer.config.model.attention_window)
    worst = max_difference(
        trainer.model, exported, cond.poses.numpy(), cond.audio.numpy(), cond.eye.numpy()
    )
    if worst > 1:  # the promise is <= 1/255; a larger gap means tracing went wrong
        raise JobError("export_mismatch", f"the exported renderer differs by {worst}/255")
    return out


def export(ctx: JobContext, avatar: Avatar) -> StepResult:
    """Score the held-out frames with the EMA weights and store those weights as the renderer."""
    config = training_config(ctx, avatar)
    if not ctx.job.state.get("checkpoint"):
        raise JobError("internal_error", "training left no checkpoint")
    trainer = resume_trainer(ctx, config, extract_dataset(ctx))
    if not trainer.done:
        raise JobError("internal_error", f"training stopped at step {trainer.state.step}")
    with trainer.ema.applied():
        scores = evaluate(trainer.model, trainer.data, limit=config.train.eval_frames)
        ctx.check()
        out = export_renderer(ctx, avatar, trainer)
    # The files first, the manifest (the artifact's key) last: it commits the export.
    upload_export_files(ctx.store, avatar.id, out)
    ctx.save_artifact(
        "renderer",
        manifest_key(avatar.id),
        out / MANIFEST,
        info={
            "family": FAMILY,
            "preset": avatar.preset,
            "step": trainer.state.step,
            "format": FORMAT,
        },
        content_type="application/json",
    )
    prune_checkpoints(ctx, keep=ctx.job.state["checkpoint"])
    metrics: dict[str, Any] = {
        name: _finite(scores[name])
        for name in ("psnr", "psnr_frame_mean", "ssim", "lmd", "lipsync", "lipsync_shuffled")
        if name in scores
    }
    if "face_found" in scores:
        metrics["face_found"] = _finite(scores["face_found"])
    metrics["eval_frames"] = int(scores.get("frames", 0))
    metrics["training"] = training_summary(trainer, ctx.job.state.get("losses"))
    return StepResult(progress=1.0, metrics=metrics)
