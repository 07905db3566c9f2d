"""Helpers shared by the CLI modules: settings, errors, JSON and table output, option types."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from shared.config import Settings, load_settings

err_console = Console(stderr=True)
out_console = Console()


def _settings() -> Settings:
    """Settings from the environment (SettingsError becomes exit 2 in `_CliGroup`)."""
    return load_settings()


def _fail(code: str, detail: str, exit_code: int = 1) -> NoReturn:
    """Print `error CODE: DETAIL` on stderr and exit with `exit_code`."""
    typer.echo(f"error {code}: {detail}", err=True)
    raise typer.Exit(exit_code)


def _print_json(value: Any) -> None:
    """Print `value` as indented JSON on stdout."""
    typer.echo(json.dumps(value, indent=2, default=str))


def _short_time(value: Any) -> str:
    """An ISO timestamp cut to the minute, for tables."""
    return str(value or "").replace("T", " ")[:16]


def _print_table(headers: list[str], rows: list[list[str]], shrink: tuple[str, ...] = ()) -> None:
    """A table on a terminal, tab-separated lines otherwise (for scripts and pipes).

    Only the `shrink` columns may be cut to fit; ids, which people copy, never are.
    """
    if not out_console.is_terminal:
        for line in [headers, *rows]:
            typer.echo("\t".join(line))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for i, header in enumerate(headers):
        width = max([len(header)] + [len(r[i]) for r in rows])
        if header in shrink:
            table.add_column(header, no_wrap=True, overflow="ellipsis")
        else:
            table.add_column(header, no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


def _parse_json_object(value: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object given to `option`, or None; a usage error if it is not one."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return parsed


JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
