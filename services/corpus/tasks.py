"""Corpus build stages: scan the source, fan clips out over `preprocess`, merge into shards.

The corpus job runs `scanning → building → indexing`. The building step sends one
`talkinghead.corpus_clip` task per source file and waits; each clip task leases its row,
processes the file and records the outcome, and the last one wakes the building step. A clip
already finished is never processed again (its row says so), so a rebuild or a redelivered
message skips it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery import Task
from sqlalchemy import select

from services.corpus import service
from services.corpus.sources import SourceDefaults, SourceError, fetch, list_source
from services.runner import JobContext, stage_task, worker_owner
from shared.config import Settings, get_settings
from shared.db.models import Corpus, CorpusClip
from shared.db.session import session_scope
from shared.jobs import JobError, JobWaiting, StepResult
from shared.queue import celery_app
from shared.telemetry import job_id_var
from talkinghead.corpus.clips import CorpusBuildConfig, SourceTags, build_source
from talkinghead.corpus.index import build_index
from talkinghead.corpus.shards import ShardWriter, write_clip_tar
from talkinghead.media import MediaError

log = logging.getLogger(__name__)

SCAN_END, BUILD_END = 0.05, 0.9
INDEX_FILE, REPORT_FILE = "corpus.json", "report.json"


def corpus_of(ctx: JobContext) -> Corpus:
    """The corpus this job builds."""
    with session_scope(ctx.settings.database_url) as s:
        corpus = s.get(Corpus, ctx.job.resource_id)
        if corpus is None:
            raise JobError("internal_error", "the corpus row is missing")
        s.expunge(corpus)
        return corpus


def build_config(corpus: Corpus) -> CorpusBuildConfig:
    """The builder's knobs from the corpus' stored config (defaults for what is not set)."""
    known = CorpusBuildConfig.__dataclass_fields__
    options = {k: v for k, v in corpus.config.get("build", {}).items() if k in known}
    if options.get("audio_encoder_path"):
        options["audio_encoder_path"] = Path(options["audio_encoder_path"])
    return CorpusBuildConfig(**options)


@stage_task("talkinghead.corpus_scan")
def scan(ctx: JobContext) -> StepResult:
    """List the source and record every new file as a pending clip."""
    corpus = corpus_of(ctx)
    defaults = SourceDefaults(**corpus.config.get("defaults", {}))
    try:
        entries = list_source(corpus.source, ctx.settings, defaults)
    except SourceError as exc:
        raise JobError("bad_source", str(exc)) from None
    if corpus.config.get("include_avatars"):
        entries += service.opted_in_avatars(ctx.settings)
    added = service.add_clips(ctx.settings, corpus.id, entries)
    return StepResult(state={"listed": len(entries), "added": added}, progress=SCAN_END)


@stage_task("talkinghead.corpus_build")
def build(ctx: JobContext) -> StepResult:
    """Send the clip tasks still needed; done once every clip is finished."""
    corpus = corpus_of(ctx)
    sent, open_clips = service.dispatch_clips(ctx.settings, corpus.id)
    if open_clips:
        log.info("corpus clips in flight", extra={"fields": {"sent": sent, "open": open_clips}})
        raise JobWaiting(ctx.job.id)
    return StepResult(progress=BUILD_END)


class _ClipHeartbeat:
    """Keeps a clip's lease alive while a worker processes it."""

    def __init__(self, settings: Settings, clip_id: str, owner: str) -> None:
        self.settings, self.clip_id, self.owner = settings, clip_id, owner
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                if not service.heartbeat_clip(self.settings, self.clip_id, self.owner):
                    self.lost.set()
                    return
            except Exception:  # a DB hiccup must not kill the clip; the next beat retries
                log.warning("clip heartbeat failed", exc_info=True)

    def __enter__(self) -> _ClipHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _pause(settings: Settings, beat: _ClipHeartbeat) -> None:
    """Test hook: hold the clip for `TH_TASK_DELAY_S` (heartbeating) before recording it."""
    deadline = time.monotonic() + settings.task_delay_s
    while time.monotonic() < deadline and not beat.lost.is_set():
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def process_clip(
    settings: Settings, clip: CorpusClip, owner: str, workdir: Path, beat: _ClipHeartbeat
) -> dict[str, Any]:
    """Fetch, hash and build one source file; returns the values that finish its row."""
    local = workdir / ("source" + Path(clip.source).suffix.lower())
    try:
        sha = fetch(clip.source, local, settings)
    except (FileNotFoundError, SourceError) as exc:
        return {"status": "refused", "code": "source_missing", "message": str(exc)}
    service.set_sha(settings, clip.id, owner, sha)
    first = service.duplicate_of(settings, clip, sha)
    if first is not None:
        return {"status": "duplicate", "code": "duplicate", "message": f"same content as {first}"}
    with session_scope(settings.database_url) as s:
        corpus = s.get(Corpus, clip.corpus_id)
        assert corpus is not None
        s.expunge(corpus)
    tags = SourceTags(
        identity=clip.identity,
        speaker=clip.speaker,
        language=clip.language,
        licence=clip.licence,
        source=clip.source,
        source_sha256=sha,
    )
    started = time.perf_counter()
    try:
        outcome = build_source(local, tags, workdir / "work", build_config(corpus))
    except MediaError as exc:
        return {"status": "refused", "code": exc.code, "message": exc.message}
    refused = [r.to_json() for r in outcome.refusals]
    timing = {
        "elapsed_s": round(time.perf_counter() - started, 3),
        "source_s": outcome.counts.get("duration_s"),
    }
    if not outcome.records:
        first_refusal = outcome.refusals[0] if outcome.refusals else None
        return {
            "status": "refused",
            "code": first_refusal.code if first_refusal else "no_utterances",
            "message": first_refusal.message if first_refusal else "no usable utterance",
            "info": {"refused": refused, **timing},
        }
    tar = workdir / "clip.tar"
    write_clip_tar(outcome.records, tar)
    _pause(settings, beat)
    if beat.lost.is_set():
        raise RuntimeError("lost the clip's lease")
    key = f"{corpus.prefix}/clips/{sha}.tar"
    from shared.storage import build_store

    build_store(settings).put_file(key, tar, content_type="application/x-tar")
    seconds = float(sum(r.meta.duration_s for r in outcome.records))
    return {
        "status": "accepted",
        "code": None,
        "message": None,
        "key": key,
        "utterances": len(outcome.records),
        "seconds": seconds,
        "info": {"refused": refused, **timing},
    }


@celery_app.task(name=service.CLIP_TASK, bind=True, max_retries=None)
def corpus_clip(self: Task, clip_id: str) -> str:
    """Process one source file of a corpus, once: a finished clip is skipped."""
    settings = get_settings()
    owner = worker_owner(self)
    claimed = service.claim_clip(settings, clip_id, owner)
    if claimed == "busy":  # a live worker has it; look again once its lease could be stale
        raise self.retry(countdown=settings.heartbeat_stale_s)
    if claimed is None:
        return "skipped"
    clip = claimed
    token = job_id_var.set(clip.corpus_id)
    workdir = Path(tempfile.mkdtemp(prefix=f"th-{clip.id}-"))
    try:
        with _ClipHeartbeat(settings, clip.id, owner) as beat:
            try:
                values = process_clip(settings, clip, owner, workdir, beat)
            except Exception as exc:
                log.exception("clip crashed")
                if clip.attempts < settings.max_attempts:
                    service.release_clip(settings, clip.id, owner)
                    service.dispatch_clips(settings, clip.corpus_id)
                    return "retry"
                values = {
                    "status": "refused",
                    "code": "internal_error",
                    "message": f"{type(exc).__name__}: {exc}"[:2000],
                }
        finished = service.finish_clip(settings, clip.id, owner, **values)
        service.wake_when_done(settings, clip.corpus_id)
        return str(values["status"]) if finished else "lost"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        job_id_var.reset(token)


@stage_task("talkinghead.corpus_index")
def index(ctx: JobContext) -> StepResult:
    """Merge the accepted clips into shards, write the index and the report; shards first."""
    corpus = corpus_of(ctx)
    store = ctx.store
    with session_scope(ctx.settings.database_url) as s:
        keys = list(
            s.scalars(
                select(CorpusClip.key)
                .where(CorpusClip.corpus_id == corpus.id, CorpusClip.status == "accepted")
                .order_by(CorpusClip.sha256)
            )
        )
    report = service.clip_report(ctx.settings, corpus.id)
    out = ctx.workdir / "corpus"
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True)
    # Old shards of an earlier build go: the index written last names the current ones.
    for old in store.list(f"{corpus.prefix}/shards/"):
        store.delete(old)

    def upload(path: Path) -> None:
        store.put_file(f"{corpus.prefix}/shards/{path.name}", path, "application/x-tar")
        path.unlink()

    writer = ShardWriter(shards_dir, on_shard=upload)
    for i, key in enumerate(keys):
        assert key is not None
        local = ctx.fetch(key, "clip.tar")
        writer.add_tar(local)
        local.unlink()
        if i % 10 == 0:
            ctx.progress(BUILD_END + (0.98 - BUILD_END) * i / max(1, len(keys)))
    shards = writer.close()
    refusals = [
        {"source": r["source"], "code": r["code"], "identity": r["identity"]}
        for r in report
        if r["status"] == "refused"
    ] + [
        {"source": r["source"], "code": part.get("code"), "identity": r["identity"]}
        for r in report
        for part in r["refused_parts"]
        if r["status"] == "accepted"
    ]
    config = corpus.config
    idx = build_index(
        shards,
        out,
        corpus_id=corpus.name,
        seed=int(config.get("seed", 0)),
        val_fraction=float(config.get("val_fraction", 0.15)),
        val_identities=config.get("val_identities"),
        refusals=refusals,
    )
    (out / REPORT_FILE).write_text(json.dumps({"clips": report}, indent=1))
    store.put_file(f"{corpus.prefix}/{REPORT_FILE}", out / REPORT_FILE, "application/json")
    store.put_file(f"{corpus.prefix}/{INDEX_FILE}", out / INDEX_FILE, "application/json")
    stats = {**idx.stats, **service.status_counts(report)}
    with session_scope(ctx.settings.database_url) as s:
        row = s.get(Corpus, corpus.id)
        assert row is not None
        row.stats = stats
    return StepResult(progress=1.0)
