"""Operator verbs with direct database access: tenants (create, delete, limits) and API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from services.cli.common import JsonOut, _fail, _print_json, _print_table, _settings
from shared.config import Settings

admin_app = typer.Typer(help="Operator tasks with direct database access.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
admin_key_app = typer.Typer(help="API keys of any tenant.", no_args_is_help=True)
admin_app.add_typer(tenant_app, name="tenant")
admin_app.add_typer(admin_key_app, name="key")


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


@tenant_app.command("delete")
def tenant_delete(
    tenant: Annotated[str, typer.Argument(help="Tenant id (tn_…) or name.")],
    yes: Annotated[bool, typer.Option("--yes", help="Delete without asking.")] = False,
    grace_s: Annotated[
        float | None,
        typer.Option(
            "--grace-s",
            min=0,
            help="Seconds cancelled tasks get to stop before objects go "
            "(default: two heartbeat intervals).",
        ),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Hard-delete a tenant: cancel its jobs, remove its objects, corpus clips, keys and rows.

    Safe to run again: a second run finishes what an interrupted one left.
    """
    settings = _settings()
    from services.api.monitoring import redis_client
    from services.tenant_purge import PurgeRefused, purge_tenant, resolve_tenant
    from shared.db.migrate import upgrade
    from shared.jobs import JobService
    from shared.queue import celery_app, configure_celery
    from shared.storage import build_store

    upgrade(settings.database_url)
    tenant_id, name = resolve_tenant(settings, tenant)
    if name is None and not tenant_id.startswith("tn_"):  # a name, and no tenant has it
        _fail("tenant_not_found", f"no tenant named {tenant!r}")
    if not yes:
        label = f"{tenant_id} ({name})" if name else tenant_id
        typer.confirm(f"Delete tenant {label} and everything it owns, for good?", abort=True)
    configure_celery(settings)
    redis = redis_client(settings.redis_url) if settings.redis_url else None
    try:
        report = purge_tenant(
            settings,
            tenant_id,
            store=build_store(settings),
            jobs=JobService(settings, celery_app),
            redis=redis,
            grace_s=2 * settings.heartbeat_interval_s if grace_s is None else grace_s,
        )
    except PurgeRefused as exc:
        _fail(exc.code, exc.message)
    finally:
        if redis is not None:
            redis.close()
    if not report.found_anything:
        _fail("tenant_not_found", f"no tenant {tenant!r}, and nothing of it in the store or Redis")
    result = {**vars(report), "redis_checked": redis is not None}
    if as_json:
        _print_json(result)
        return
    if report.name is None:
        typer.echo(f"tenant {tenant_id} had no rows left; swept what a late writer left behind")
    else:
        typer.echo(f"deleted tenant {tenant_id} ({report.name})")
    typer.echo(f"jobs cancelled     {report.jobs_cancelled}")
    typer.echo(f"objects removed    {report.objects_removed}")
    typer.echo(f"corpus identities  {report.corpus_identities_removed}")
    redis_line = report.redis_keys_removed if redis is not None else "skipped (no TH_REDIS_URL)"
    typer.echo(f"redis keys         {redis_line}")
    rows = ", ".join(f"{table} {n}" for table, n in sorted(report.rows_removed.items()))
    typer.echo(f"rows removed       {rows or 0}")


LIMIT_OPTIONS = ("max-running-jobs", "max-queued-jobs", "requests-per-second", "burst")


@tenant_app.command("limits")
def tenant_limits(
    tenant: Annotated[str, typer.Argument(help="Tenant id (tn_…) or name.")],
    max_running_jobs: Annotated[
        int | None,
        typer.Option(min=0, help="Avatar and render jobs running at once; 0: no limit."),
    ] = None,
    max_queued_jobs: Annotated[
        int | None,
        typer.Option(min=0, help="Jobs waiting to start (more are refused); 0: no limit."),
    ] = None,
    requests_per_second: Annotated[
        float | None,
        typer.Option(min=0, help="Sustained API requests a second; 0: no limit."),
    ] = None,
    burst: Annotated[
        int | None, typer.Option(min=1, help="API requests at once above the sustained rate.")
    ] = None,
    unset: Annotated[
        list[str] | None,
        typer.Option(
            "--unset",
            metavar="LIMIT",
            help=f"Drop one override, back to the default ({', '.join(LIMIT_OPTIONS)}).",
        ),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Drop every override: the defaults apply.")
    ] = False,
    as_json: JsonOut = False,
) -> None:
    """Show a tenant's limits; with options, override the defaults for it (or drop overrides)."""
    settings = _settings()
    from pydantic import ValidationError
    from sqlalchemy import or_, select

    from shared.db.migrate import upgrade
    from shared.db.models import Tenant
    from shared.db.session import session_scope
    from shared.limits import LimitOverrides, default_limits, parse_overrides, resolve_limits

    dropped = [name.replace("_", "-") for name in unset or []]
    for name in dropped:
        if name not in LIMIT_OPTIONS:
            raise typer.BadParameter(
                f"{name!r} is not a limit; one of {', '.join(LIMIT_OPTIONS)}", param_hint="--unset"
            )
    given = {
        "max_running_jobs": max_running_jobs,
        "max_queued_jobs": max_queued_jobs,
        "requests_per_second": requests_per_second,
        "burst": burst,
    }
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(Tenant).where(or_(Tenant.id == tenant, Tenant.name == tenant)))
        if row is None:
            _fail("tenant_not_found", f"no tenant with the id or name {tenant!r}")
        overrides = {} if clear else parse_overrides(row.limits).model_dump(exclude_none=True)
        for name in dropped:
            overrides.pop(name.replace("-", "_"), None)
        overrides.update({k: v for k, v in given.items() if v is not None})
        try:
            stored = LimitOverrides.model_validate(overrides).stored()
        except ValidationError as exc:  # the options' ranges catch all but inf and nan
            errors = exc.errors(include_url=False)
            _fail("invalid_limits", "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in errors), 2)
        changed = clear or bool(dropped) or any(v is not None for v in given.values())
        if changed:
            row.limits = stored
        defaults = default_limits(settings).model_dump()
        effective = resolve_limits(settings, row.limits).model_dump()
        result: dict[str, Any] = {
            "tenant_id": row.id,
            "name": row.name,
            "limits": effective,
            "overrides": row.limits or {},
            "defaults": defaults,
            "jobs_started": 0,
        }
    if changed and settings.redis_url:
        result["jobs_started"] = _start_waiting_jobs(settings, row.id)
    if as_json:
        _print_json(result)
        return
    typer.echo(f"tenant  {result['tenant_id']}  ({result['name']})")
    source = result["overrides"]
    _print_table(
        ["limit", "value", "from"],
        [
            [name, f"{value:g}", "tenant" if name in source else "default"]
            for name, value in effective.items()
        ],
    )
    typer.echo("0 means no limit. Defaults come from TH_TENANT_* settings of each process.")
    if result["jobs_started"]:
        typer.echo(f"{result['jobs_started']} waiting job(s) sent to start")


def _start_waiting_jobs(settings: Settings, tenant_id: str) -> int:
    """Send the tenant's jobs that wait for a running slot, now that its limit may be higher."""
    from shared.jobs import JobService
    from shared.queue import celery_app, configure_celery

    configure_celery(settings)
    try:
        return len(JobService(settings, celery_app).start_waiting(tenant_id))
    except Exception as exc:  # the limits are stored; the reconciler sends the jobs later
        typer.echo(f"warning: waiting jobs not sent now ({type(exc).__name__}: {exc})", err=True)
        return 0
