"""The `talkinghead` command: platform verbs (serve, worker, up, admin) and REST client verbs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
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
from rich.table import Table
from typer.core import TyperGroup

from services.client import ApiError, TalkingHeadClient
from shared.config import Settings, SettingsError, load_settings

DEFAULT_API_URL = "http://127.0.0.1:8000"
ALL_QUEUES = "ingest,preprocess,train,render,webhooks"

err_console = Console(stderr=True)
out_console = Console()


class _CliGroup(TyperGroup):
    """Turns settings and API errors from any subcommand into one message and an exit code."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer may vendor click)
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            typer.echo(_settings_message(exc), err=True)
            raise typer.Exit(2) from None
        except ApiError as exc:
            typer.echo(f"error {exc.code}: {exc.detail or exc.code}", err=True)
            raise typer.Exit(1) from None


def _settings_message(exc: SettingsError) -> str:
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
admin_app = typer.Typer(help="Operator tasks with direct database access.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
admin_key_app = typer.Typer(help="API keys of any tenant.", no_args_is_help=True)
avatar_app = typer.Typer(help="Avatars (REST client).", no_args_is_help=True)
key_app = typer.Typer(help="Your tenant's API keys (REST client).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
admin_app.add_typer(tenant_app, name="tenant")
admin_app.add_typer(admin_key_app, name="key")
app.add_typer(avatar_app, name="avatar")
app.add_typer(key_app, name="key")


# -- shared helpers ---------------------------------------------------------------------------


def _settings() -> Settings:
    """Settings from the environment (SettingsError becomes exit 2 in `_CliGroup`)."""
    return load_settings()


def _fail(code: str, detail: str, exit_code: int = 1) -> NoReturn:
    typer.echo(f"error {code}: {detail}", err=True)
    raise typer.Exit(exit_code)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _short_time(value: Any) -> str:
    """An ISO timestamp cut to the minute, for tables."""
    return str(value or "").replace("T", " ")[:16]


def _status(resource: dict[str, Any]) -> str:
    """`status`, or `status/stage` while a stage runs."""
    status, stage = str(resource.get("status", "")), str(resource.get("stage") or "")
    return f"{status}/{stage}" if stage and stage != status else status


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
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return parsed


ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="TH_API_URL", help="Base URL of the talkinghead API.")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="TH_API_KEY", help="API key (Bearer token).", show_default=False
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _client(api_url: str, api_key: str | None) -> TalkingHeadClient:
    if not api_key:
        _fail("missing_api_key", "pass --api-key or set TH_API_KEY", exit_code=2)
    return TalkingHeadClient(api_url, api_key)


def _transfer_progress() -> Progress:
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


# -- library verbs ----------------------------------------------------------------------------


@app.command()
def preprocess(
    video: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Portrait video.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset directory to write.")],
    size: Annotated[int, typer.Option(min=64, max=2048, help="Square crop side in pixels.")] = 512,
    audio_encoder: Annotated[
        Path | None,
        typer.Option(help="Local HuBERT/wav2vec2 checkpoint dir (default: built-in log-mel)."),
    ] = None,
) -> None:
    """Turn a portrait video into a training dataset (no server needed)."""
    from talkinghead.media import MediaError
    from talkinghead.preprocess.pipeline import PreprocessConfig, preprocess_video

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("preprocess", total=1.0)

        def report(stage: str, fraction: float) -> None:
            progress.update(task, completed=fraction, description=f"preprocess: {stage}")

        try:
            config = PreprocessConfig(
                size=size,
                audio_encoder="pretrained" if audio_encoder else "logmel",
                audio_encoder_path=audio_encoder,
            )
            manifest = preprocess_video(video, out, config, report)
        except MediaError as exc:
            _fail(exc.code, exc.message)
    typer.echo(f"dataset with {manifest.num_frames} frames in {out}")
    _print_json(json.loads((out / "manifest.json").read_text()).get("quality", {}))


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Dataset dir.")],
    workdir: Annotated[Path, typer.Option("--workdir", help="Checkpoint directory.")],
    preset: Annotated[str, typer.Option(help="tiny, cpu-quick or gpu-standard.")] = "cpu-quick",
    steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps.")] = None,
    evaluate: Annotated[bool, typer.Option(help="Score the held-out frames at the end.")] = True,
    lpips: Annotated[
        Path | None, typer.Option(help="LPIPS TorchScript file for the lips stage.")
    ] = None,
) -> None:
    """Train a RAD-NeRF avatar on a dataset; resumes from the workdir's checkpoint."""
    from talkinghead.configs import preset as load_preset
    from talkinghead.training.evaluation import evaluate as score
    from talkinghead.training.trainer import Trainer

    try:
        config = load_preset(preset)
        trainer = Trainer(dataset, workdir, config, lpips_path=lpips)
    except ValueError as exc:
        _fail("bad_request", str(exc))
    start = trainer.state.step
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("train", total=trainer.total_steps, completed=start)

        def report(r: Any) -> None:
            desc = f"train: {r.stage} mse {r.losses.get('mse', 0.0):.4f}"
            progress.update(task, completed=r.step, description=desc)

        ran = trainer.run(steps, report)
    typer.echo(f"ran {ran} steps ({start} -> {trainer.state.step} of {trainer.total_steps})")
    if evaluate and trainer.done:
        with trainer.ema.applied():
            _print_json(score(trainer.model, trainer.data, limit=config.train.eval_frames))


# -- platform verbs ---------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [TH_API_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [TH_API_PORT].")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Uvicorn worker processes.")] = 1,
) -> None:
    """Run the REST API (uvicorn)."""
    settings = _settings()
    import uvicorn

    metrics_dir: Path | None = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes answer /metrics; they must share their metric files.
        metrics_dir = settings.data_dir.resolve() / "metrics" / f"api-{os.getpid()}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        uvicorn.run(
            "services.api.app:create_app",
            factory=True,
            host=host or settings.api_host,
            port=port or settings.api_port,
            workers=workers,
            log_level=settings.log_level.lower(),
            proxy_headers=True,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="Comma-separated queues to consume.")
    ] = ALL_QUEUES,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", min=1, help="Pool size [TH_WORKER_CONCURRENCY]."),
    ] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
) -> None:
    """Run a Celery worker (replaces this process with `celery worker`)."""
    settings = _settings()
    from shared.queue import QUEUES

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if not wanted or unknown:
        raise typer.BadParameter(
            f"unknown queue(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(QUEUES)}",
            param_hint="--queues",
        )
    argv = [
        sys.executable, "-m", "celery", "-A", "services.worker:app", "worker",
        "-Q", ",".join(wanted),
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--loglevel", settings.log_level,
        "--hostname", hostname or f"talkinghead-{os.getpid()}@%h",
    ]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@app.command()
def reconciler() -> None:
    """Run the reconciler: re-enqueue lost jobs and due webhooks, until SIGTERM or Ctrl-C."""
    settings = _settings()
    from services.reconciler import run_forever
    from shared.telemetry import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_forever(settings, stop)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    settings = _settings()
    from shared.db.migrate import upgrade

    upgrade(settings.database_url)
    typer.echo(f"database {_redact(settings.database_url)} is up to date")


@app.command()
def up(
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory [TH_DATA_DIR].", show_default=False)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="API port, 0 picks a free one [TH_API_PORT].")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Celery worker processes.")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="Pool size of each worker.")] = 2,
    tenant: Annotated[
        str | None, typer.Option(help="Create (or reuse) this tenant and print a key for it.")
    ] = None,
) -> None:
    """Run the whole platform on this machine (Redis, worker, reconciler, API) until Ctrl-C."""
    settings = _settings()
    from services.embedded import EmbeddedStack, EmbeddedStackError

    stack = EmbeddedStack(
        data_dir or settings.data_dir,
        api_port=settings.api_port if port is None else port,
        workers=workers,
        concurrency=concurrency,
        api_host=settings.api_host,
    )

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # Explicit for SIGINT too: a shell may start us with SIGINT ignored (e.g. `make demo &`).
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        err_console.print(f"starting the embedded stack in {stack.data_dir} …")
        try:
            stack.start()
        except EmbeddedStackError as exc:
            _fail("stack_failed", str(exc))
        typer.echo(f"API ready at {stack.base_url}  (logs in {stack.logs_dir})")
        _pidfile(stack.data_dir).write_text(str(os.getpid()))
        if tenant:
            tenant_id, key = _tenant_key(stack.settings, tenant)
            typer.echo(f"tenant {tenant} ({tenant_id}); API key: {key}")
            typer.echo(f"  export TH_API_URL={stack.base_url} TH_API_KEY={key}")
        else:
            typer.echo(
                f"create a tenant:  TH_DATA_DIR={stack.data_dir} "
                "talkinghead admin tenant create NAME"
            )
        typer.echo("press Ctrl-C to stop")
        while True:
            time.sleep(0.5)
            dead = stack.dead_children()
            if dead:
                _fail("stack_failed", f"{', '.join(dead)} exited; see {stack.logs_dir}")
    except KeyboardInterrupt:
        err_console.print("stopping …")
    finally:
        # A second Ctrl-C must not leave orphans behind: stop() is bounded, let it finish.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            _pidfile(stack.data_dir).unlink(missing_ok=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    err_console.print("stopped")


def _pidfile(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "up.pid"


@app.command()
def down(
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory [TH_DATA_DIR].", show_default=False)
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop.")] = 30.0,
) -> None:
    """Stop a stack started by `talkinghead up` with the same data directory."""
    pidfile = _pidfile(data_dir or _settings().data_dir)
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pidfile.unlink(missing_ok=True)
        typer.echo("no running stack")
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            typer.echo("stopped")
            return
        time.sleep(0.2)
    _fail("stop_timeout", f"process {pid} still running after {timeout:.0f} s")


def _tenant_key(settings: Settings, name: str) -> tuple[str, str]:
    """The id of tenant `name` (created if missing) and a fresh key for it."""
    from sqlalchemy import select

    from shared.db.models import Tenant
    from shared.db.session import session_scope
    from shared.tenants import create_tenant, issue_key

    with session_scope(settings.database_url) as session:
        existing = session.scalar(select(Tenant).where(Tenant.name == name))
        if existing is None:
            row, key = create_tenant(session, name)
            return row.id, key
        _, key = issue_key(session, existing.id, name="up")
        return existing.id, key


# -- admin ------------------------------------------------------------------------------------


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Unique tenant name.")],
    as_json: JsonOut = False,
) -> None:
    """Create a tenant; prints its id, first API key and webhook secret (shown once)."""
    settings = _settings()
    from sqlalchemy import select

    from shared.db.migrate import upgrade
    from shared.db.models import ApiKey, Tenant
    from shared.db.session import session_scope
    from shared.tenants import create_tenant

    if not name.strip() or len(name) > 200:
        raise typer.BadParameter("must be 1-200 characters", param_hint="NAME")
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
            _fail("tenant_exists", f"a tenant named {name!r} already exists")
        tenant, key = create_tenant(session, name)
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == tenant.id))
        result = {
            "tenant_id": tenant.id,
            "name": tenant.name,
            "api_key_id": key_id,
            "api_key": key,
            "webhook_secret": tenant.webhook_secret,
        }
    if as_json:
        _print_json(result)
        return
    typer.echo(f"tenant          {result['tenant_id']}  ({name})")
    typer.echo(f"api key         {key}")
    typer.echo(f"webhook secret  {result['webhook_secret']}")
    typer.echo("The key and secret are shown only now; store them safely.")


@admin_key_app.command("create")
def admin_key_create(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id (tn_…).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    as_json: JsonOut = False,
) -> None:
    """Issue a new API key for a tenant."""
    settings = _settings()
    from shared.db.migrate import upgrade
    from shared.db.models import Tenant
    from shared.db.session import session_scope
    from shared.tenants import issue_key

    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        if session.get(Tenant, tenant_id) is None:
            _fail("tenant_not_found", f"no tenant {tenant_id}")
        row, key = issue_key(session, tenant_id, name=name)
        result = {"tenant_id": tenant_id, "api_key_id": row.id, "name": name, "api_key": key}
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"api key  {key}  (id {row.id}; shown only now)")


# -- client verbs: avatars --------------------------------------------------------------------


@avatar_app.command("create")
def avatar_create(
    video: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Portrait video.")
    ],
    consent: Annotated[
        bool,
        typer.Option(
            "--consent/--no-consent",
            help="Attest that the person in the video agreed to have an avatar made.",
        ),
    ] = False,
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
    """Upload a portrait video and build an avatar from it."""
    meta = _parse_json_object(metadata, "--metadata")
    if not consent:
        raise typer.BadParameter(
            "pass --consent to attest that the person in the video agreed", param_hint="--consent"
        )
    with _client(api_url, api_key) as client:
        with _transfer(f"upload {video.name}", video.stat().st_size) as on_progress:
            avatar = client.create_avatar(
                video,
                consent=consent,
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


@app.command("render")
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


if __name__ == "__main__":
    app()
