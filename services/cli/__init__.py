"""The `talkinghead` command: platform verbs (serve, worker, up, admin) and REST client verbs."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from services.cli.admin import admin_app
from services.cli.client import avatar_app, key_app, render
from services.cli.corpus import corpus_app
from services.cli.library import preprocess, train
from services.cli.models import models_app
from services.cli.processes import (
    down,
    families,
    migrate,
    reconciler,
    serve,
    triton_repo,
    up,
    worker,
)
from services.client import ApiError
from shared.config import SettingsError


class _CliGroup(TyperGroup):
    """Turns settings and API errors from any subcommand into one message and an exit code."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer may vendor click)
        """Run the subcommand, mapping SettingsError to exit 2 and ApiError to exit 1."""
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            typer.echo(_settings_message(exc), err=True)
            raise typer.Exit(2) from None
        except ApiError as exc:
            typer.echo(f"error {exc.code}: {exc.detail or exc.code}", err=True)
            raise typer.Exit(1) from None


def _settings_message(exc: SettingsError) -> str:
    """The message for bad settings: what is wrong and where settings come from."""
    return (
        f"talkinghead: {exc}\n"
        "Settings come from TH_* environment variables (and a .env file in the working "
        "directory); correct or unset the variable(s) named above and run the command again."
    )


app = typer.Typer(
    name="talkinghead",
    cls=_CliGroup,
    help="Portrait video to avatar, speech to talking video: run the platform or use its API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Commands first, in this order (the order of `talkinghead --help`), then the sub-apps.
for _command in (preprocess, train, serve, worker, reconciler, migrate, up, down, families):
    app.command()(_command)
app.command("triton-repo")(triton_repo)
app.command("render")(render)
app.add_typer(admin_app, name="admin")
app.add_typer(avatar_app, name="avatar")
app.add_typer(key_app, name="key")
app.add_typer(corpus_app, name="corpus")
app.add_typer(models_app, name="models")

__all__ = ["app"]
