"""Operator verbs for corpora: `corpus build|synth|show|list|delete` (direct database access)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.common import JsonOut, _fail, _print_json, _print_table, _settings, err_console
from shared.config import Settings

corpus_app = typer.Typer(help="Multi-speaker training corpora.", no_args_is_help=True)

POLL_S = 1.0


def _corpus_row(settings: Settings, name: str) -> tuple[Any, Any]:
    """The corpus named `name` and its job; exits with `corpus_not_found` when absent."""
    from sqlalchemy import select

    from shared.db.models import Corpus, Job
    from shared.db.session import session_scope

    with session_scope(settings.database_url) as s:
        corpus = s.scalar(select(Corpus).where(Corpus.name == name))
        if corpus is None or corpus.deleted_at is not None:
            _fail("corpus_not_found", f"no corpus named {name!r}")
        job = s.scalar(select(Job).where(Job.resource_id == corpus.id))
        s.expunge(corpus)
        if job is not None:
            s.expunge(job)
        return corpus, job


@contextlib.contextmanager
def _workers(settings: Settings) -> Iterator[Settings]:
    """The broker and workers to build with: the configured ones, or an embedded stack."""
    if settings.redis_url:
        yield settings
        return
    from services.embedded import EmbeddedStack, EmbeddedStackError

    err_console.print(f"no TH_REDIS_URL: starting embedded workers in {settings.data_dir} …")
    stack = EmbeddedStack(settings.data_dir, workers=1, concurrency=2)
    try:
        stack.start()
    except EmbeddedStackError as exc:
        _fail("stack_failed", str(exc))
    try:
        from shared.queue import configure_celery

        configure_celery(stack.settings)
        yield stack.settings
    finally:
        stack.stop()


def _upload_sources(settings: Settings, name: str, source: str, defaults: Any) -> str:
    """Copy local source files into the object store; returns the stored CSV's URI."""
    import csv
    import io

    from services.corpus.service import corpus_prefix
    from services.corpus.sources import list_source
    from shared.storage import ObjectNotFound, build_store

    store = build_store(settings)
    entries = list_source(source, settings, defaults)
    prefix = f"{corpus_prefix(name)}/sources"
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "identity", "speaker", "language", "licence"])
    for i, entry in enumerate(entries):
        local = Path(entry.uri.removeprefix("file://"))
        rel = f"{i:06d}-{local.name}"
        try:
            same = store.size(f"{prefix}/{rel}") == local.stat().st_size
        except ObjectNotFound:
            same = False
        if not same:
            store.put_file(f"{prefix}/{rel}", local)
        writer.writerow([rel, entry.identity, entry.speaker, entry.language, entry.licence])
    store.put_bytes(f"{prefix}/sources.csv", rows.getvalue().encode(), "text/csv")
    return f"store://{prefix}/sources.csv"


def _follow(settings: Settings, corpus_id: str, job_id: str, quiet: bool) -> str:
    """Show the build's progress until its job ends; returns the final status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from services.corpus.service import CLIP_DONE, clip_counts
    from shared.db.models import Job
    from shared.db.session import session_scope
    from shared.jobs import TERMINAL

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console, disable=quiet) as bar:
        clips = bar.add_task("clips", total=None)
        while True:
            with session_scope(settings.database_url) as s:
                job = s.get(Job, job_id)
                assert job is not None
                status, stage = job.status, job.stage
                counts = clip_counts(s, corpus_id)
            total = sum(counts.values())
            done = sum(counts.get(k, 0) for k in CLIP_DONE)
            refused = counts.get("refused", 0)
            bar.update(
                clips,
                total=total or None,
                completed=done,
                description=f"{stage:<9} accepted {counts.get('accepted', 0)} refused {refused}",
            )
            if status in TERMINAL:
                return str(status)
            time.sleep(POLL_S)


def _export(settings: Settings, prefix: str, dest: Path) -> None:
    """Copy a built corpus (index, report, shards) from the store to a local directory."""
    from shared.storage import build_store

    store = build_store(settings)
    dest.mkdir(parents=True, exist_ok=True)
    for key in store.list(prefix + "/"):
        rel = key[len(prefix) + 1 :]
        if rel.startswith(("clips/", "sources/")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(key, target)


@corpus_app.command("build")
def build(
    source: Annotated[str, typer.Argument(help="A directory, glob, CSV, or s3:// prefix.")],
    out: Annotated[str, typer.Option("--out", help="Corpus name, or a local directory.")],
    licence: Annotated[str, typer.Option(help="Licence of files the CSV does not tag.")] = (
        "unspecified"
    ),
    language: Annotated[str, typer.Option(help="Language of untagged files.")] = "und",
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.15,
    val_identities: Annotated[
        str | None, typer.Option(help="Comma-separated identities for validation.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the identity split.")] = 0,
    upload: Annotated[
        bool, typer.Option(help="Copy local files into the object store for remote workers.")
    ] = False,
    include_opted_in_avatars: Annotated[
        bool, typer.Option(help="Add the avatar videos whose tenants opted them in.")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Follow the build until it ends.")] = True,
    as_json: JsonOut = False,
) -> None:
    """Build (or resume) a corpus from SOURCE on the preprocess workers."""
    settings = _settings()
    from services.corpus.service import CorpusError, clip_report, start_build, status_counts
    from services.corpus.sources import SourceDefaults, SourceError
    from shared.db.migrate import upgrade

    dest = Path(out) if ("/" in out or Path(out).is_dir()) else None
    name = dest.name if dest is not None else out
    if not name or len(name) > 200 or not all(c.isalnum() or c in "-_." for c in name):
        raise typer.BadParameter("letters, digits, '-', '_' and '.' only", param_hint="--out")
    upgrade(settings.database_url)
    defaults = SourceDefaults(language=language, licence=licence)
    config: dict[str, Any] = {
        "defaults": {"language": language, "licence": licence},
        "seed": seed,
        "val_fraction": val_fraction,
        "val_identities": [v for v in (val_identities or "").split(",") if v] or None,
        "include_avatars": include_opted_in_avatars,
    }
    with _workers(settings) as live:
        try:
            if upload and not source.startswith(("s3://", "store://")):
                source = _upload_sources(live, name, source, defaults)
            corpus_id, job_id = start_build(live, name, source, config)
        except (CorpusError, SourceError) as exc:
            code = getattr(exc, "code", "bad_source")
            _fail(code, getattr(exc, "message", str(exc)))
        if not wait:
            typer.echo(corpus_id)
            return
        status = _follow(live, corpus_id, job_id, quiet=as_json)
        corpus, job = _corpus_row(live, name)
        report = clip_report(live, corpus_id)
        if dest is not None and status == "ready":
            _export(live, corpus.prefix, dest)
    result = {
        "corpus": corpus_id,
        "name": name,
        "status": status,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "stats": corpus.stats,
        "clips": status_counts(report),
        "exported_to": str(dest) if dest is not None and status == "ready" else None,
    }
    if as_json:
        _print_json(result)
    else:
        _print_summary(result)
    if status != "ready":
        raise typer.Exit(1)


def _print_summary(result: dict[str, Any]) -> None:
    stats = result["stats"] or {}
    typer.echo(f"corpus {result['name']} ({result['corpus']}): {result['status']}")
    if result.get("error"):
        typer.echo(f"error {result['error']['code']}: {result['error']['message']}")
    if stats:
        typer.echo(
            f"  {stats.get('hours', 0):.3f} h, {stats.get('clips', 0)} utterances, "
            f"{stats.get('identities', 0)} identities, languages {stats.get('languages', [])}"
        )
    typer.echo(f"  sources: {result['clips']['by_status']}")
    if result["clips"]["by_code"]:
        typer.echo(f"  refused: {result['clips']['by_code']}")
    if result.get("exported_to"):
        typer.echo(f"  written to {result['exported_to']}")


@corpus_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Directory for the clips and sources.csv.")],
    identities: Annotated[int, typer.Option(min=1, max=1000)] = 48,
    minutes: Annotated[float, typer.Option(min=0.05)] = 60.0,
    seed: Annotated[int, typer.Option()] = 0,
    size: Annotated[int, typer.Option(min=128, max=1024)] = 256,
    jobs: Annotated[int, typer.Option(min=0, help="Rendering processes (0: one per core).")] = 0,
) -> None:
    """Generate a synthetic multi-identity corpus source (deterministic by seed, resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from talkinghead.corpus.synth import synth_corpus

    with Progress(
        "synth", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
    ) as bar:
        task = bar.add_task("clips", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        csv_path = synth_corpus(
            out,
            identities,
            minutes,
            seed,
            size,
            progress=progress,
            jobs=jobs or os.cpu_count() or 1,
        )
    typer.echo(str(csv_path))


@corpus_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Corpus name.")],
    report: Annotated[bool, typer.Option(help="Include every source's outcome.")] = False,
) -> None:
    """A corpus: its build status, statistics and (optionally) the per-clip report (JSON)."""
    settings = _settings()
    from services.corpus.service import clip_report, status_counts
    from services.models.service import models_trained_on

    corpus, job = _corpus_row(settings, name)
    clips = clip_report(settings, corpus.id)
    view: dict[str, Any] = {
        "id": corpus.id,
        "name": corpus.name,
        "source": corpus.source,
        "status": job.status if job else "unknown",
        "stage": job.stage if job else None,
        "progress": round(job.progress, 3) if job else 0.0,
        "error": {"code": job.error_code, "message": job.error_message}
        if job and job.error_code
        else None,
        "stats": corpus.stats,
        "clips": status_counts(clips),
        "models": models_trained_on(settings, corpus.id),
    }
    if report:
        view["report"] = clips
    _print_json(view)


@corpus_app.command("list")
def list_corpora(as_json: JsonOut = False) -> None:
    """Every corpus with its status and size."""
    settings = _settings()
    from sqlalchemy import select

    from shared.db.models import Corpus, Job
    from shared.db.session import session_scope

    with session_scope(settings.database_url) as s:
        rows = s.execute(
            select(Corpus, Job)
            .join(Job, Job.resource_id == Corpus.id)
            .where(Corpus.deleted_at.is_(None))
            .order_by(Corpus.created_at)
        ).all()
        items = [
            {
                "id": c.id,
                "name": c.name,
                "status": j.status,
                "hours": c.stats.get("hours", 0.0),
                "identities": c.stats.get("identities", 0),
                "clips": c.stats.get("clips", 0),
            }
            for c, j in rows
        ]
    if as_json:
        _print_json(items)
        return
    _print_table(
        ["ID", "NAME", "STATUS", "HOURS", "IDENTITIES", "CLIPS"],
        [
            [
                i["id"],
                i["name"],
                i["status"],
                f"{i['hours']:.3f}",
                str(i["identities"]),
                str(i["clips"]),
            ]
            for i in items
        ],
    )


@corpus_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="Corpus name.")],
    identity: Annotated[
        str | None, typer.Option(help="Remove only this identity's clips (hard delete).")
    ] = None,
) -> None:
    """Hard-delete a corpus, or one identity's clips from it; lists the models trained on it."""
    settings = _settings()
    from services.corpus.service import delete_corpus, remove_identity
    from services.models.service import models_trained_on

    corpus, _ = _corpus_row(settings, name)
    affected = models_trained_on(settings, corpus.id)
    if identity is None:
        result = delete_corpus(settings, corpus.id)
    else:
        result = remove_identity(settings, corpus.id, identity)
    result["models_trained_on_it"] = affected
    _print_json(result)
