"""Operator verbs for shared models: `models train|list|show|delete` (direct database access)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from services.cli.common import JsonOut, _fail, _print_json, _print_table, _settings, err_console

models_app = typer.Typer(help="Shared models trained from a corpus.", no_args_is_help=True)


def _parse_set(values: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` options → a config dict (values parsed as JSON when they are JSON)."""
    import json

    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@models_app.command("train")
def train(
    kind: Annotated[str, typer.Argument(help="Model kind (see `talkinghead models kinds`).")],
    corpus: Annotated[str, typer.Option(help="Name of a ready corpus.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override KEY=VALUE (repeatable).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the training until it ends.")] = True,
    as_json: JsonOut = False,
) -> None:
    """Train the next version of a shared model on the `train` workers."""
    settings = _settings()
    from services.cli.corpus import _workers
    from services.corpus.service import CorpusError
    from services.models.service import create_model, resolve_model
    from shared.db.migrate import upgrade
    from shared.jobs import TERMINAL
    from talkinghead.sharedmodels.contract import SharedModelError

    upgrade(settings.database_url)
    with _workers(settings) as live:
        try:
            model = create_model(live, kind, corpus, _parse_set(set_ or []))
        except (CorpusError, SharedModelError) as exc:
            _fail(exc.code, exc.message)
        if not wait:
            typer.echo(model.id)
            return
        while True:
            _, job = resolve_model(live, model.id)
            if job is None or job.status in TERMINAL:
                break
            if not as_json:
                err_console.print(f"{job.stage} {job.progress:.0%}", end="\r")
            time.sleep(1.0)
        from services.models.service import list_models

        view = next(m for m in list_models(live, kind) if m["id"] == model.id)
    _print_json(view)
    if view["status"] != "ready":
        raise typer.Exit(1)


@models_app.command("kinds")
def kinds() -> None:
    """The shared-model kinds this installation can train."""
    from talkinghead.sharedmodels.registry import kinds as all_kinds

    for kind in all_kinds().values():
        typer.echo(f"{kind.name:<16} {kind.family or '-':<10} {kind.description}")


@models_app.command("list")
def list_cmd(
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Every shared model, newest version first."""
    from services.models.service import list_models

    items = list_models(_settings(), kind)
    if as_json:
        _print_json(items)
        return
    _print_table(
        ["ID", "KIND", "VERSION", "STATUS", "CORPUS", "CREATED"],
        [
            [
                m["id"],
                m["kind"],
                str(m["version"]),
                m["status"],
                m["corpus"]["name"],
                m["created_at"][:16],
            ]
            for m in items
        ],
    )


@models_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="An id, KIND (latest ready) or KIND:VERSION.")],
) -> None:
    """One shared model: status, corpus and licences, config, metrics (JSON)."""
    from services.models.service import model_view, resolve_model
    from talkinghead.sharedmodels.contract import SharedModelError

    try:
        model, job = resolve_model(_settings(), ref)
    except SharedModelError as exc:
        _fail(exc.code, exc.message)
    _print_json(model_view(model, job))


@models_app.command("delete")
def delete(ref: Annotated[str, typer.Argument(help="An id or KIND:VERSION.")]) -> None:
    """Delete a shared model's objects; lists the avatars that were built with it."""
    from services.models.service import delete_model
    from talkinghead.sharedmodels.contract import SharedModelError

    try:
        _print_json(delete_model(_settings(), ref))
    except SharedModelError as exc:
        _fail(exc.code, exc.message)
