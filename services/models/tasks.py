"""Shared-model stages: bounded training segments from a stored corpus, then a versioned export.

The model job runs `fitting → publishing` on the `train` queue, like an avatar's training:
each segment resumes from the checkpoint the job state names and stores a new one, so a
killed worker costs at most one segment and the weights come out the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from services.corpus.streams import store_opener
from services.models.service import MANIFEST, model_prefix
from services.runner import JobContext, stage_task
from services.trainer.tasks import ProgressReporter, training_summary
from shared.db.models import Corpus, SharedModel
from shared.db.session import session_scope
from shared.jobs import JobError, StepResult
from shared.telemetry import TRAIN_STEPS
from talkinghead.families.contract import TrainingRun, TrainOptions
from talkinghead.sharedmodels.contract import ReaderSource, SharedModelError, SharedModelKind
from talkinghead.sharedmodels.registry import get_kind

FIT_START, FIT_END = 0.02, 0.9
MANIFEST_FORMAT = 1


def model_of(ctx: JobContext) -> SharedModel:
    """The model this job trains."""
    with session_scope(ctx.settings.database_url) as s:
        model = s.get(SharedModel, ctx.job.resource_id)
        if model is None or model.deleted_at is not None:
            raise JobError("model_not_found", "the shared model was deleted")
        s.expunge(model)
        return model


def kind_of(model: SharedModel) -> SharedModelKind:
    """The model's kind; fails the job when this build does not have it."""
    try:
        return get_kind(model.kind)
    except SharedModelError as exc:
        raise JobError(exc.code, exc.message) from None


def corpus_prefix_of(ctx: JobContext, model: SharedModel) -> str:
    """The stored corpus the model learns from; fails the job if it is gone."""
    with session_scope(ctx.settings.database_url) as s:
        corpus = s.get(Corpus, model.corpus_id)
        if corpus is None or corpus.deleted_at is not None:
            raise JobError("corpus_not_found", f"corpus {model.corpus_name!r} was deleted")
        return corpus.prefix


def open_run(ctx: JobContext, model: SharedModel) -> TrainingRun:
    """The model's training run, loaded from the checkpoint the job state names."""
    kind = kind_of(model)
    opener = store_opener(ctx.store, corpus_prefix_of(ctx, model))
    options = TrainOptions(segment_steps=None)
    try:
        run = kind.open_training(ReaderSource(opener), ctx.workdir / "run", model.config, options)
    except SharedModelError as exc:
        raise JobError(exc.code, exc.message) from None
    previous = ctx.job.state.get("checkpoint")
    if previous:
        local = ctx.fetch(previous, "resume.ckpt")
        try:
            run.load(local)
        except ValueError as exc:
            raise JobError("checkpoint_incompatible", str(exc)) from None
        local.unlink()
    return run


@stage_task("talkinghead.model_segment")
def fit(ctx: JobContext) -> StepResult:
    """One training segment from the last checkpoint; stores the next checkpoint."""
    model = model_of(ctx)
    previous = ctx.job.state.get("checkpoint")
    prefix = model_prefix(model.kind, model.version) + "/checkpoints/"
    for stale in ctx.store.list(prefix):  # orphans of dead segments and superseded ones
        if stale != previous:
            ctx.store.delete(stale)
    run = open_run(ctx, model)
    reporter = ProgressReporter(ctx, FIT_START, FIT_END)
    ran = run.run(run.segment_steps, reporter)
    TRAIN_STEPS.inc(ran)
    ctx.pause()
    ctx.check()
    key: str | None = previous
    if ran:
        key = f"{prefix}step-{run.step:08d}.ckpt"
        ctx.store.put_file(key, run.save(ctx.workdir / "segment.ckpt"))
    losses = reporter.losses() or ctx.job.state.get("losses", {})
    return StepResult(
        state={"checkpoint": key, "step": run.step, "losses": losses},
        progress=reporter.fraction(run.step, run.total_steps),
        again=not run.done,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@stage_task("talkinghead.model_publish")
def publish(ctx: JobContext) -> StepResult:
    """Export the trained model with its metrics; the manifest, written last, commits it."""
    model = model_of(ctx)
    if not ctx.job.state.get("checkpoint"):
        raise JobError("internal_error", "training left no checkpoint")
    run = open_run(ctx, model)
    out = ctx.workdir / "export"
    out.mkdir()
    try:
        metrics: dict[str, Any] = dict(kind_of(model).export(run, out))
    except SharedModelError as exc:
        raise JobError(exc.code, exc.message) from None
    ctx.check()
    prefix = model_prefix(model.kind, model.version)
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        ctx.store.put_file(f"{prefix}/files/{rel}", path)
        files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    summary = training_summary(run, ctx.job.state.get("losses"))
    manifest = {
        "format": MANIFEST_FORMAT,
        "id": model.id,
        "kind": model.kind,
        "family": model.family,
        "version": model.version,
        "corpus": {"id": model.corpus_id, "name": model.corpus_name},
        "licences": model.licences,
        "config": model.config,
        "metrics": metrics,
        "training": summary,
        "files": files,
    }
    local = ctx.workdir / MANIFEST
    local.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    ctx.store.put_file(f"{prefix}/{MANIFEST}", local, content_type="application/json")
    for key in ctx.store.list(f"{prefix}/checkpoints/"):
        ctx.store.delete(key)
    with session_scope(ctx.settings.database_url) as s:
        row = s.get(SharedModel, model.id)
        if row is not None:
            row.metrics = {**metrics, "training": summary}
            row.manifest_key = f"{prefix}/{MANIFEST}"
    return StepResult(progress=1.0)
