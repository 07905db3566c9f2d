"""REST-client verbs (avatars, renders, your tenant's keys) and their progress helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from services.cli.common import (
    JsonOut,
    _fail,
    _parse_json_object,
    _print_json,
    _print_table,
    _short_time,
    err_console,
)
from services.client import TalkingHeadClient

DEFAULT_API_URL = "http://127.0.0.1:8000"

avatar_app = typer.Typer(help="Avatars (REST client).", no_args_is_help=True)
key_app = typer.Typer(help="Your tenant's API keys (REST client).", no_args_is_help=True)


def _status(resource: dict[str, Any]) -> str:
    """`status`, or `status/stage` while a stage runs."""
    status, stage = str(resource.get("status", "")), str(resource.get("stage") or "")
    return f"{status}/{stage}" if stage and stage != status else status


ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="TH_API_URL", help="Base URL of the talkinghead API.")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="TH_API_KEY", help="API key (Bearer token).", show_default=False
    ),
]


def _client(api_url: str, api_key: str | None) -> TalkingHeadClient:
    """An API client; a usage error (exit 2) when no API key was given."""
    if not api_key:
        _fail("missing_api_key", "pass --api-key or set TH_API_KEY", exit_code=2)
    return TalkingHeadClient(api_url, api_key)


def _transfer_progress() -> Progress:
    """A byte-counting progress display on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


@contextmanager
def _transfer(description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for a file transfer; yields the (done, total) callback."""
    with _transfer_progress() as progress:
        task = progress.add_task(description, total=total or None)

        def update(done: int, size: int) -> None:
            progress.update(task, completed=done, total=size or None)

        yield update


def _follow(client: TalkingHeadClient, kind: str, resource_id: str) -> dict[str, Any]:
    """Show a progress bar driven by the resource's events until it is terminal."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task(f"{kind} {resource_id}: queued", total=1.0)

        def on_event(event: dict[str, Any]) -> None:
            stage = event.get("stage") or ""
            status = event.get("status", "?")
            label = f"{status}/{stage}" if stage and stage != status else status
            progress.update(
                task,
                completed=float(event.get("progress") or 0.0),
                description=f"{kind} {resource_id}: {label}",
            )

        return client.wait(kind, resource_id, on_event=on_event)


def _exit_unless(final: dict[str, Any], ok_status: str) -> None:
    """Exit 1 with the job's error when it did not end in `ok_status`."""
    status = final.get("status")
    if status == ok_status:
        return
    error = final.get("error") or {}
    code = error.get("code") or str(status)
    detail = error.get("message") or error.get("detail") or f"ended {status}"
    _fail(code, detail)


@avatar_app.command("create")
def avatar_create(
    source: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Portrait video, or a photo (JPEG, PNG, WebP) for families that take one.",
        ),
    ],
    consent: Annotated[
        bool,
        typer.Option(
            "--consent/--no-consent",
            help="Attest that the person in the video or photo agreed to have an avatar made.",
        ),
    ] = False,
    kind: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="video or image (default: told by the file's content).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the avatar.")] = None,
    renderer: Annotated[str | None, typer.Option(help="Renderer family.")] = None,
    preset: Annotated[str | None, typer.Option(help="Training preset.")] = None,
    callback_url: Annotated[str | None, typer.Option(help="Webhook URL.")] = None,
    metadata: Annotated[
        str | None, typer.Option(help="JSON object echoed in webhooks.", show_default=False)
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency-Key header.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow until done.")] = True,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Upload a portrait video or a photo and build an avatar from it."""
    meta = _parse_json_object(metadata, "--metadata")
    if not consent:
        raise typer.BadParameter(
            "pass --consent to attest that the person in the video agreed", param_hint="--consent"
        )
    if kind not in (None, "video", "image"):
        raise typer.BadParameter("video or image", param_hint="--source")
    with _client(api_url, api_key) as client:
        with _transfer(f"upload {source.name}", source.stat().st_size) as on_progress:
            avatar = client.create_avatar(
                source,
                consent=consent,
                source=kind,  # type: ignore[arg-type]  # checked above
                name=name,
                renderer=renderer,
                preset=preset,
                callback_url=callback_url,
                metadata=meta,
                idempotency_key=idempotency_key,
                on_upload_progress=on_progress,
            )
        if wait:
            avatar = _follow(client, "avatar", avatar["id"])
    _print_json(avatar)
    if wait:
        _exit_unless(avatar, "ready")


@avatar_app.command("get")
def avatar_get(
    avatar_id: Annotated[str, typer.Argument(help="Avatar id.")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Show one avatar."""
    with _client(api_url, api_key) as client:
        _print_json(client.get_avatar(avatar_id))


@avatar_app.command("list")
def avatar_list(
    limit: Annotated[int | None, typer.Option(min=1, help="Page size.")] = None,
    as_json: JsonOut = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """List your avatars."""
    with _client(api_url, api_key) as client:
        avatars = list(client.list_avatars(limit=limit))
    if as_json:
        _print_json(avatars)
        return
    rows = [
        [a["id"], _status(a), f"{float(a.get('progress') or 0):.0%}",
         _short_time(a.get("created_at")), a.get("name", "")]
        for a in avatars
    ]  # fmt: skip
    _print_table(["id", "status", "progress", "created", "name"], rows, shrink=("name",))


@avatar_app.command("delete")
def avatar_delete(
    avatar_id: Annotated[str, typer.Argument(help="Avatar id.")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Cancel an avatar's work and delete it."""
    with _client(api_url, api_key) as client:
        client.delete_avatar(avatar_id)
    typer.echo(f"deleted {avatar_id}")


# -- client verbs: renders --------------------------------------------------------------------


def _render_options(
    raw: str | None,
    resolution: int | None,
    background: str | None,
    pose: str | None,
    eyes: str | None,
) -> dict[str, Any]:
    """Render options from --options plus the single-option shortcuts."""
    options = _parse_json_object(raw, "--options") or {}
    if resolution is not None:
        options["resolution"] = resolution
    if background is not None:
        if background == "source":
            options["background"] = {"kind": "source"}
        elif background.startswith("#"):
            options["background"] = {"kind": "colour", "colour": background}
        else:
            raise typer.BadParameter("'source' or a #rrggbb colour", param_hint="--background")
    if pose is not None:
        options["pose"] = pose
    if eyes is not None:
        options["eyes"] = eyes
    return options


def render(
    avatar_id: Annotated[str, typer.Argument(help="A ready avatar's id.")],
    audio: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Speech audio.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to save the mp4 [<render id>.mp4].", show_default=False
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow until done, then download.")
    ] = True,
    resolution: Annotated[int | None, typer.Option(help="Output height in pixels.")] = None,
    background: Annotated[str | None, typer.Option(help="'source' or #rrggbb.")] = None,
    pose: Annotated[str | None, typer.Option(help="'static' or 'source'.")] = None,
    eyes: Annotated[str | None, typer.Option(help="'natural' or 'open'.")] = None,
    options: Annotated[
        str | None, typer.Option(help="Render options as a JSON object.", show_default=False)
    ] = None,
    callback_url: Annotated[str | None, typer.Option(help="Webhook URL.")] = None,
    metadata: Annotated[
        str | None, typer.Option(help="JSON object echoed in webhooks.", show_default=False)
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency-Key header.")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Render a talking video of an avatar speaking AUDIO, and download it."""
    opts = _render_options(options, resolution, background, pose, eyes)
    meta = _parse_json_object(metadata, "--metadata")
    with _client(api_url, api_key) as client:
        with _transfer(f"upload {audio.name}", audio.stat().st_size) as on_progress:
            result = client.create_render(
                avatar_id,
                audio,
                options=opts or None,
                callback_url=callback_url,
                metadata=meta,
                idempotency_key=idempotency_key,
                on_upload_progress=on_progress,
            )
        if not wait:
            _print_json(result)
            return
        result = _follow(client, "render", result["id"])
        if result.get("status") == "done":
            dest = out or Path(f"{result['id']}.mp4")
            with _transfer(f"download {dest.name}", 0) as on_progress:
                client.download_video(result["id"], dest, on_progress=on_progress)
            err_console.print(f"saved {dest}")
    _print_json(result)
    _exit_unless(result, "done")


# -- client verbs: keys -----------------------------------------------------------------------


@key_app.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    as_json: JsonOut = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Create an API key for your tenant (the key is shown only now)."""
    with _client(api_url, api_key) as client:
        created = client.create_key(name)
    if as_json:
        _print_json(created)
    else:
        typer.echo(f"api key  {created['key']}  (id {created['id']}; shown only now)")


@key_app.command("list")
def key_list(
    as_json: JsonOut = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """List your tenant's API keys."""
    with _client(api_url, api_key) as client:
        keys = client.list_keys()
    if as_json:
        _print_json(keys)
        return
    rows = [
        [k["id"], k.get("prefix", ""), _short_time(k.get("created_at")),
         _short_time(k.get("revoked_at")), k.get("name", "")]
        for k in keys
    ]  # fmt: skip
    _print_table(["id", "prefix", "created", "revoked", "name"], rows, shrink=("name",))


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (key_…).")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKeyOpt = None,
) -> None:
    """Revoke one of your tenant's API keys."""
    with _client(api_url, api_key) as client:
        client.revoke_key(key_id)
    typer.echo(f"revoked {key_id}")
