"""Long-running processes and stack control: serve, worker, reconciler, migrate, up, down."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import _fail, _settings, err_console
from shared.config import Settings

ALL_QUEUES = "ingest,preprocess,train,render,finish,webhooks"


def _redact(url: str) -> str:
    """The database URL with its password hidden, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


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
    from shared.queue import QUEUES, WORKER_FLAGS

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
        *WORKER_FLAGS,
    ]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


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


def migrate() -> None:
    """Bring the database schema up to date."""
    settings = _settings()
    from shared.db.migrate import upgrade

    upgrade(settings.database_url)
    typer.echo(f"database {_redact(settings.database_url)} is up to date")


def triton_repo(
    out: Annotated[Path, typer.Argument(file_okay=False, help="Directory to write the models to.")],
    family: Annotated[
        list[str] | None, typer.Option("--family", help="Only this family (repeatable).")
    ] = None,
) -> None:
    """Write the Triton model repository: one python-backend model per renderer family."""
    from services.renderer.triton_repo import write_repository
    from talkinghead.families.registry import UnknownFamily

    try:
        names = write_repository(out, family or None)
    except UnknownFamily as exc:
        _fail("unknown_renderer", str(exc))
    typer.echo(f"models {', '.join(names)} in {out}")


def families() -> None:
    """The installed renderer families: sources, stages, presets and named inputs."""
    from talkinghead.families.registry import DEFAULT_FAMILY
    from talkinghead.families.registry import families as registered

    for name, fam in registered().items():
        default = " (default)" if name == DEFAULT_FAMILY else ""
        typer.echo(f"{name}{default}: {fam.description}")
        typer.echo(f"  sources: {', '.join(sorted(fam.sources))}")
        typer.echo(f"  stages:  {' -> '.join(fam.stages)}")
        presets = ", ".join(f"{p}{'*' if p == fam.default_preset else ''}" for p in fam.presets)
        typer.echo(f"  presets: {presets}")
        inputs = ", ".join(f"{i.name} {i.dtype}{list(i.shape)}" for i in fam.inputs)
        typer.echo(f"  inputs:  {inputs}")


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
            try:
                restarted = stack.supervise()
            except EmbeddedStackError as exc:
                _fail("stack_failed", str(exc))
            for name in restarted:
                err_console.print(f"{name} exited; restarted it (log in {stack.logs_dir})")
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
    """Where `up` records its process id, for `down`."""
    return Path(data_dir).resolve() / "up.pid"


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
